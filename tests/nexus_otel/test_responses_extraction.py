"""The Responses API's usage and request fields, read from bodies and streams as they come."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_otel import _openai_responses
from nexus_otel._sse import SSEParser
from nexus_otel._usage import ResponseInfo, TokenUsage

USAGE = {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024,
         "cache_write_tokens": 64}, "output_tokens": 400,
         "output_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 1900}  # fmt: skip
DONE = {"id": "resp_9", "model": "gpt-5-2025-08-07", "status": "completed", "usage": USAGE}
STREAM = b"".join(
    f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n".encode()
    for e in [
        {"type": "response.created", "response": {**DONE, "status": "in_progress", "usage": None}},
        {"type": "response.output_text.delta", "delta": "Hel"},
        {"type": "response.output_text.delta", "delta": "lo"},
        {"type": "response.completed", "response": DONE},
    ]
)


def feed(stream: bytes, step: int) -> ResponseInfo:
    info = ResponseInfo()

    def on_event(event: str | None, data: object) -> None:
        _openai_responses.read_event(event, data, info, _openai_responses.new_stream_state())

    parser = SSEParser(on_event)
    for start in range(0, len(stream), step):
        parser.feed(stream[start : start + step])
    parser.close()
    return info


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_a_stream_is_read_from_its_final_event(step: int) -> None:
    info = feed(STREAM, step)  # every chunk boundary, even inside \r\n
    assert info.usage == TokenUsage(1500, 400, cache_read_tokens=1024, cache_write_tokens=64,
                                    reasoning_tokens=200)  # fmt: skip
    assert (info.complete, info.output_text, info.finish_reasons) == (True, "Hello", ["completed"])
    assert (info.model, info.response_id, info.error_type) == ("gpt-5-2025-08-07", "resp_9", None)


def test_a_background_answer_is_not_final() -> None:
    info = ResponseInfo()
    _openai_responses.read_json({**DONE, "status": "queued", "usage": None}, info)
    assert (info.usage, info.complete, info.finish_reasons) == (None, False, ["queued"])


def test_request_fields() -> None:
    request = _openai_responses.request_info("/v1/responses", {
        "model": "gpt-5", "instructions": "be brief", "stream": True, "max_output_tokens": 64,
        "temperature": 1, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "yo"}]}]})  # fmt: skip
    assert (request.model, request.stream, request.max_tokens, request.temperature) == (
        "gpt-5", True, 64, 1.0)  # fmt: skip
    assert (request.message_count, request.prompt_text) == (2, "be brief\nyo")
    plain = _openai_responses.request_info("/v1/responses", {"model": "gpt-5", "input": "hi"})
    assert (plain.message_count, plain.prompt_text, plain.stream) == (1, "hi", False)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["type", "response", "usage", "status", "error", "output", "content",
                         "input", "model", "delta", "code", "message", "incomplete_details",
                         "input_tokens_details", "reason", "text", "instructions"]),
        inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


@given(JSON, st.sampled_from(["response.completed", "response.created", "error", None]))
def test_any_json_is_read_without_raising(data: Any, event: str | None) -> None:
    """A body or event of any shape, as a provider or a proxy might send: read or ignored."""
    info = ResponseInfo()
    _openai_responses.read_json(data, info)
    _openai_responses.read_event(event, data, info, None)
    if isinstance(data, dict):
        _openai_responses.request_info("/v1/responses", data)
    assert info.usage is None or all(n >= 0 for n in info.usage)
