"""The simulator's Responses API, checked against the official `openai` SDK's own types: every
event and body it sends validates strictly as what OpenAI sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from exporter.simulator import ProviderSimulator, Usage

USAGE = {"x-sim-usage": "input=1500,output=400,cache_read=1024,reasoning=200"}
BODY = {"model": "o4-mini", "instructions": "Be brief.", "input": "Octopus facts"}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=5) as simulator:
        yield simulator


def post(sim: ProviderSimulator, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(sim.openai_base_url + "/responses", json=body, headers=headers, timeout=20)


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event."""
    found = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((lines["event"], json.loads(lines["data"])))
    return found


@pytest.mark.parametrize("max_output_tokens", [None, 400], ids=["completed", "incomplete"])
def test_the_stream_is_openais_event_sequence(
    sim: ProviderSimulator, max_output_tokens: Any
) -> None:
    body = {**BODY, "stream": True, "max_output_tokens": max_output_tokens}
    answer = post(sim, body, **USAGE)
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse(answer.text)
    for name, data in events:
        EVENTS.validate_python(data, strict=True)  # each one, as the SDK types it
        assert data["type"] == name
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = "response.incomplete" if max_output_tokens else "response.completed"
    names = [name for name, _ in events]
    deltas = names.count("response.output_text.delta")
    assert deltas > 0
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.output_item.done",  # the reasoning item
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        final,
    ]  # fmt: skip
    response = events[-1][1]["response"]
    text = "".join(data["delta"] for name, data in events if name.endswith(".delta"))
    assert response["output"][1]["content"][0]["text"] == text
    assert response["usage"] == {
        "input_tokens": 1500, "input_tokens_details": {"cached_tokens": 1024,
                                                        "cache_write_tokens": 0},
        "output_tokens": 400, "output_tokens_details": {"reasoning_tokens": 200},
        "total_tokens": 1900,
    }  # fmt: skip
    if max_output_tokens:
        assert response["status"] == "incomplete"
        assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    recorded = sim.responses[-1]
    assert (recorded.wire_format, recorded.path, recorded.stream) == (
        "openai_responses", "/openai/v1/responses", True)  # fmt: skip
    assert recorded.usage == Usage(1500, 400, cache_read_tokens=1024, reasoning_tokens=200)


def test_a_json_response_and_its_retrieval(sim: ProviderSimulator) -> None:
    answer = post(sim, BODY, **USAGE)
    assert answer.status_code == 200 and answer.headers["x-request-id"].startswith("req_")
    body = Response.model_validate(answer.json(), strict=True)
    assert (body.status, body.model, body.instructions) == ("completed", "o4-mini", "Be brief.")
    assert body.usage and body.usage.output_tokens_details.reasoning_tokens == 200
    again = httpx.get(f"{sim.openai_base_url}/responses/{body.id}", timeout=20)
    assert again.json() == answer.json()


def test_a_background_response_is_queued_then_done(sim: ProviderSimulator) -> None:
    client = openai.OpenAI(api_key="sk-test", base_url=sim.openai_base_url, max_retries=0)
    queued = client.responses.create(model="o4-mini", input="hi", background=True,
                                     extra_headers=USAGE)  # fmt: skip
    assert (queued.status, queued.usage, queued.output) == ("queued", None, [])
    done = client.responses.retrieve(queued.id)
    assert done.status == "completed" and done.usage and done.usage.input_tokens == 1500
    assert client.responses.cancel(queued.id).id == queued.id


def test_errors_are_openais_json_bodies(sim: ProviderSimulator) -> None:
    client = openai.OpenAI(api_key="sk-test", base_url=sim.openai_base_url, max_retries=0)
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model="o4-mini", input=[])
    message = "Missing required parameter: 'input'."
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    assert missing.value.body == error
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="o4-mini", input="hi", extra_headers={"x-sim-error": "429"})
    assert limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.NotFoundError, match=r"Response with id 'resp_nope' not found\."):
        client.responses.retrieve("resp_nope")
    stored = client.responses.create(model="o4-mini", input="hi")
    with pytest.raises(openai.BadRequestError, match="Only background responses can be cancel"):
        client.responses.cancel(stored.id)


def test_an_interrupted_stream_stops_after_its_first_text(sim: ProviderSimulator) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(sim, {**BODY, "stream": True}, **{"x-sim-error": "interrupt"})
    assert sim.responses[-1].interrupted and sim.responses[-1].usage is None
