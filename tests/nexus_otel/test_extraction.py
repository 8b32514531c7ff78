"""Usage extraction per wire format, in OpenTelemetry semantics, fed as the SDK reads bytes."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_otel import _anthropic, _body, _gemini, _openai
from nexus_otel._secrets import scrub_text, scrub_url
from nexus_otel._sse import SSEParser
from nexus_otel._usage import ResponseInfo, TokenUsage
from nexus_otel._wire import WireFormat

ANTHROPIC_STREAM = b"".join(
    f"event: {e}\r\ndata: {json.dumps(d)}\r\n\r\n".encode()
    for e, d in [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "model": "claude-sonnet-4-5", "usage": {
                "input_tokens": 25, "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 300, "output_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hel"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None},
                           "usage": {"output_tokens": 40}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "lo"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 95,
                                     "output_tokens_details": {"thinking_tokens": 30}}}),
        ("message_stop", {"type": "message_stop"}),
    ]
)  # fmt: skip
GEMINI_STREAM = b"".join(
    b"data: " + json.dumps(d).encode() + b"\n\n"
    for d in [
        {"candidates": [{"content": {"parts": [{"text": "think", "thought": True}]}}],
         "usageMetadata": {"promptTokenCount": 500, "cachedContentTokenCount": 200,
                           "candidatesTokenCount": 0, "thoughtsTokenCount": 64}},
        {"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
         "modelVersion": "gemini-2.5-flash",
         "usageMetadata": {"promptTokenCount": 500, "cachedContentTokenCount": 200,
                           "candidatesTokenCount": 80, "thoughtsTokenCount": 64}},
    ]
)  # fmt: skip


def feed(stream: bytes, wire: WireFormat, step: int) -> ResponseInfo:
    info = ResponseInfo()
    state = wire.new_stream_state()

    def on_event(event: str | None, data: object) -> None:
        wire.read_event(event, data, info, state)

    parser = SSEParser(on_event)
    for start in range(0, len(stream), step):
        parser.feed(stream[start : start + step])
    parser.close()
    return info


@pytest.mark.parametrize("step", [1, 2, 7, 10_000])
def test_anthropic_stream_usage_is_cumulative_and_inclusive(step: int) -> None:
    info = feed(ANTHROPIC_STREAM, _anthropic, step)  # every chunk boundary, even inside \r\n
    assert info.usage == TokenUsage(input_tokens=1325, output_tokens=95, cache_read_tokens=1000,
                                    cache_write_tokens=300, reasoning_tokens=30)  # fmt: skip
    assert info.complete and info.output_text == "Hello" and info.finish_reasons == ["end_turn"]


@pytest.mark.parametrize("step", [1, 13, 10_000])
def test_gemini_stream_last_running_total_wins_and_thoughts_are_output(step: int) -> None:
    info = feed(GEMINI_STREAM, _gemini, step)
    assert info.usage == TokenUsage(input_tokens=500, output_tokens=144, cache_read_tokens=200,
                                    reasoning_tokens=64)  # fmt: skip
    assert info.complete and info.output_text == "Hi" and info.model == "gemini-2.5-flash"


def test_openai_json_and_groq_stream_usage() -> None:
    info = ResponseInfo()
    _openai.read_json({"model": "o4-mini", "choices": [{"message": {"content": "x"},
                       "finish_reason": "stop"}], "usage": {
        "prompt_tokens": 1200, "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 120}}}, info)  # fmt: skip
    assert info.usage == TokenUsage(1200, 300, 1000, 50, 120)
    groq = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{},' \
        b'"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":9,"completion_tokens":4}}}' \
        b"\n\ndata: [DONE]\n\n"  # fmt: skip
    streamed = feed(groq, _openai, 5)
    assert streamed.usage == TokenUsage(9, 4) and streamed.complete


def test_openai_stream_without_usage_reports_none() -> None:
    info = feed(b'data: {"choices":[{"delta":{"content":"abc"}}]}\n\ndata: [DONE]\n\n', _openai, 3)
    assert info.usage is None and info.complete and info.output_text == "abc"


def test_request_fields() -> None:
    gemini = _gemini.request_info(
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9}},
    )
    assert (gemini.model, gemini.stream, gemini.max_tokens, gemini.prompt_text) == (
        "gemini-2.5-pro", True, 9, "hi")  # fmt: skip
    claude = _anthropic.request_info("/v1/messages", {"model": "claude-haiku-4-5", "stream": True,
                                     "system": "be brief", "messages": [{"role": "user",
                                     "content": [{"type": "text", "text": "yo"}]}]})  # fmt: skip
    assert claude.model == "claude-haiku-4-5" and claude.stream and claude.message_count == 2
    assert "be brief" in claude.prompt_text and "yo" in claude.prompt_text


def test_secrets_are_scrubbed_from_urls_and_messages() -> None:
    url = "https://u:p@generativelanguage.googleapis.com/v1beta/models/x:generateContent?alt=sse&key=AIzaS3cret"
    assert (
        scrub_url(url) == "https://[REDACTED]@generativelanguage.googleapis.com/v1beta/models/"
        "x:generateContent?alt=sse&key=[REDACTED]"
    )
    assert scrub_text(f"Client error for url '{url}'").count("AIzaS3cret") == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://[generativelanguage.googleapis.com/v1beta/models/x?key=AIzaS3cret",
        "http://u:AIzaS3cret@[::1/v1/chat/completions",
        "https://[::1]:99999999/v1?api_key=AIzaS3cret&alt=sse",
        "https://x.example/v1#state?key=AIzaS3cret",
        "https://x.example/v1?alt=sse#frag&token=AIzaS3cret",
        "https://x.example/v1?alt=sse&%6Bey=AIzaS3cret",
    ],
)
def test_malformed_urls_are_scrubbed_too(url: str) -> None:
    # urlsplit refuses some (an unclosed IPv6 bracket) and puts others' keys in the fragment.
    scrubbed = scrub_url(url)
    assert "AIzaS3cret" not in scrubbed and scrubbed.split(":")[0] in ("http", "https")


@given(
    before=st.text(alphabet="htps:/[]@#?&=.x1%;", max_size=30),
    key=st.sampled_from(["key", "api_key", "token", "access_token"]),
    separator=st.sampled_from(["?", "&"]),
    after=st.text(alphabet="&#=/ab", max_size=8),
)
def test_any_url_loses_its_key(before: str, key: str, separator: str, after: str) -> None:
    url = f"{before}{separator}{key}=AIzaS3cret{after}"
    assert "AIzaS3cret" not in scrub_url(url)


def big_anthropic_stream(deltas: int, *, finished: bool = True) -> bytes:
    events = ANTHROPIC_STREAM.split(b"\r\n\r\n")
    delta = events[1] + b"\r\n\r\n"
    body = events[0] + b"\r\n\r\n" + delta * deltas
    return body + (b"\r\n\r\n".join(events[2:]) if finished else b"")


@pytest.mark.parametrize("limit", [_body.MAX_BODY, 100_000])
def test_large_streams_are_read_from_head_and_tail(
    limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_body, "MAX_BODY", limit)  # 100 kB: only head and tail are kept
    stream = big_anthropic_stream(5_000)  # about 500 kB
    seen: list[str | None] = []
    copy = _body.BodyCopy()
    for start in range(0, len(stream), 4096):
        copy.add(stream[start : start + 4096])
    info, state = ResponseInfo(), _anthropic.new_stream_state()

    def on_event(event: str | None, data: object) -> None:
        seen.append(event)
        _anthropic.read_event(event, data, info, state)

    copy.read_stream(on_event, full=False)
    assert info.usage == TokenUsage(1325, 95, 1000, 300, 30) and info.complete
    assert len(seen) < 400  # the middle's deltas were not parsed
    assert copy.truncated == (limit < len(stream))


def test_a_cut_stream_is_read_in_full_for_its_text() -> None:
    stream = big_anthropic_stream(2_000, finished=False)
    copy = _body.BodyCopy()
    copy.add(stream)
    info, state = ResponseInfo(), _anthropic.new_stream_state()
    copy.read_stream(lambda e, d: _anthropic.read_event(e, d, info, state), full=True)
    assert not info.complete and info.output_text == "Hel" * 2_000


@pytest.mark.parametrize(
    ("raw", "usage"),
    [
        (b'{"usage": {"prompt_tokens": 7, "completion_tokens": 2}}', TokenUsage(7, 2)),
        # orjson refuses NaN and lone surrogates; json reads them, so the usage still counts
        (b'{"usage": {"prompt_tokens": 7, "completion_tokens": 2}, "p": NaN}', TokenUsage(7, 2)),
        (b'{"usage": {"prompt_tokens": 5}, "t": "\\ud800"}', TokenUsage(5)),
        (b'{"usage": {"prompt_tokens": 7, "completion_tok', None),  # cut short: nothing read
        (b"", None),
    ],
    ids=["plain", "nan", "lone-surrogate", "truncated", "empty"],
)
def test_json_bodies_orjson_refuses_are_still_read(raw: bytes, usage: TokenUsage | None) -> None:
    body = _body.BodyCopy()
    body.add(raw)
    info = ResponseInfo()
    parsed = body.json()
    if parsed is not None:
        _openai.read_json(parsed, info)
    assert info.usage == usage


def test_anthropic_message_usage_includes_the_cache_and_thinking() -> None:
    info = ResponseInfo()
    message = {"id": "msg_2", "model": "claude-sonnet-4-5", "stop_reason": "end_turn",
               "content": [{"type": "text", "text": "Hi"}],
               "usage": {"input_tokens": 25, "output_tokens": 95, "cache_read_input_tokens": 1000,
                         "cache_creation_input_tokens": 300,
                         "output_tokens_details": {"thinking_tokens": 30}}}  # fmt: skip
    _anthropic.read_json(message, info)
    assert info.usage == TokenUsage(1325, 95, 1000, 300, 30) and info.complete
    assert (info.model, info.response_id, info.finish_reasons) == (
        "claude-sonnet-4-5", "msg_2", ["end_turn"])  # fmt: skip
    assert info.output_text == "Hi"


def test_anthropic_one_hour_cache_writes_are_counted_within_the_writes() -> None:
    info = ResponseInfo()
    usage = {
        "input_tokens": 25,
        "output_tokens": 95,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    }
    _anthropic.read_json({"model": "claude-sonnet-4-5", "usage": usage}, info)
    assert info.usage == TokenUsage(1325, 95, 1000, 300, 0, 200)
    # A 1-hour count above the writes (which include it) raises the writes, and the input, to it.
    usage = {**usage, "cache_creation_input_tokens": 150}
    _anthropic.read_json({"model": "claude-sonnet-4-5", "usage": usage}, info)
    assert info.usage == TokenUsage(1225, 95, 1000, 200, 0, 200)
    # Without the split (older API versions): no 1-hour writes, as before.
    del usage["cache_creation"]
    _anthropic.read_json({"model": "claude-sonnet-4-5", "usage": usage}, info)
    assert info.usage == TokenUsage(1175, 95, 1000, 150, 0, 0)


def anthropic_stream(start_usage: dict[str, object], *deltas: dict[str, object]) -> bytes:
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_3", "model": "claude-sonnet-4-5", "usage": start_usage}})]  # fmt: skip
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": d}) for d in deltas]  # fmt: skip
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_anthropic_stream_one_hour_cache_writes_from_start_and_deltas(step: int) -> None:
    start = {
        "input_tokens": 25,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 300},
    }
    # message_delta without `cache_creation` (as the SDK's MessageDeltaUsage): the start's split
    # stays.
    info = feed(anthropic_stream(start, {"output_tokens": 95}), _anthropic, step)
    assert info.usage == TokenUsage(1325, 95, 1000, 300, 0, 300)
    # A delta that repeats the running totals with a split: the last value wins.
    delta = {
        "output_tokens": 95,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 180, "ephemeral_1h_input_tokens": 120},
    }
    info = feed(anthropic_stream(start, delta), _anthropic, step)
    assert info.usage == TokenUsage(1325, 95, 1000, 300, 0, 120)


@pytest.mark.parametrize("sizes", [[1], [3, 0, 5], [4096, 1, 4095], [10, 5000, 10], [0]])
@pytest.mark.parametrize("window", [1, 7, 4096, 9000])
def test_a_bodys_ends_are_cut_from_its_chunks_as_from_the_whole(
    sizes: list[int], window: int
) -> None:
    chunks = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    whole = b"".join(chunks)
    assert _body._leading(chunks, window) == whole[:window]
    assert _body._trailing(chunks, window) == whole[-window:]


@pytest.mark.parametrize("wrap", [gzip.compress, zlib.compress], ids=["gzip", "deflate"])
def test_a_compressed_body_is_read_only_up_to_the_copy_limit(
    wrap: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_body, "MAX_BODY", 1_000_000)
    usage = b'{"usage": {"prompt_tokens": 7, "completion_tokens": 2}, "pad": "'
    bomb = wrap(usage + b" " * 50_000_000 + b'"}')  # 50 MB of spaces: about 50 kB on the wire
    assert len(bomb) < 100_000
    copy = _body.BodyCopy()
    copy.add(bomb)
    assert copy.data is None and copy.json() is None  # not read: nothing grows to 50 MB
    small = _body.BodyCopy()
    small.add(wrap(usage + b'"}'))
    info = ResponseInfo()
    _openai.read_json(small.json(), info)
    assert info.usage == TokenUsage(7, 2)


def test_openai_service_tier_is_read_from_bodies_chunks_and_responses() -> None:
    from nexus_otel import _openai_responses

    info = ResponseInfo()
    body = {"model": "gpt-5", "service_tier": "flex", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2}}  # fmt: skip
    _openai.read_json(body, info)
    assert info.service_tier == "flex"
    stream = b"".join(
        b"data: " + json.dumps(d).encode() + b"\n\n"
        for d in [
            {"model": "gpt-5", "service_tier": "priority",
             "choices": [{"delta": {"content": "Hi"}}]},
            {"model": "gpt-5", "choices": [],
             "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
        ]
    ) + b"data: [DONE]\n\n"  # fmt: skip
    assert feed(stream, _openai, 7).service_tier == "priority"
    info = ResponseInfo()
    response = {"model": "gpt-5", "status": "completed", "service_tier": "flex",
                "usage": {"input_tokens": 10, "output_tokens": 2}}  # fmt: skip
    _openai_responses.read_json(response, info)
    assert info.service_tier == "flex"
    for not_a_tier in (None, 3, "", "x" * 33):
        info = ResponseInfo()
        _openai.read_json({**body, "service_tier": not_a_tier}, info)
        assert info.service_tier is None
