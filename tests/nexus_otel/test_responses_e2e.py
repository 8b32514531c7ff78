"""The official `openai` SDK's Responses API against the provider simulator, through OTLP/HTTP into
a real `nexus-otel serve`: one row per response created, with exact token columns and cost, and
none for counting tokens, retrieving, cancelling or deleting a response."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpcore2
import httpx2
import openai
import pytest

import nexus_otel
from exporter.simulator import ProviderSimulator
from tests.nexus_otel.clients import OPENAI_KEY
from tests.nexus_otel.test_providers_e2e import (
    COLUMNS,
    SERVICE,
    Stack,
    cl100k_tokens,
    expected_cost,
    instrumented_stack,
    usage_header,
)
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
MODEL = "o4-mini"
USAGE = {"input": 1200, "output": 300, "cache_read": 1000, "cache_write": 0, "reasoning": 120}
INSTRUCTIONS = "You write carousel slides."
QUESTION = "Five facts about octopuses, one line each."
INPUT = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def stack(exporter: ExporterProcess, database_url: str) -> Iterator[Stack]:
    with instrumented_stack(exporter, database_url, seed=11) as stack:
        yield stack


def client(sim: ProviderSimulator, is_async: bool = False, **options: Any) -> Any:
    kind: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    return kind(api_key=OPENAI_KEY, base_url=sim.openai_base_url, max_retries=0, timeout=20.0,
                **options)  # fmt: skip


def respond(sim: ProviderSimulator, is_async: bool, stream: bool, **kwargs: Any) -> Any:
    """`responses.create(...)`: the Response, or for a stream the list of its events."""
    kwargs = {"model": MODEL, "instructions": INSTRUCTIONS, "input": INPUT, **kwargs}
    if is_async:

        async def go() -> Any:
            answer = await client(sim, True).responses.create(stream=stream, **kwargs)
            return [event async for event in answer] if stream else answer

        return asyncio.run(go())
    answer = client(sim).responses.create(stream=stream, **kwargs)
    return list(answer) if stream else answer


def expected_row(correlation_id: str, usage: dict[str, int], model: str = MODEL,
                 provider: str = "openai") -> dict[str, Any]:  # fmt: skip
    return {
        "provider": provider, "model": model, "operation": "fact_generation",
        "correlation_id": correlation_id, "input_tokens": usage["input"],
        "output_tokens": usage["output"], "cache_read_tokens": usage["cache_read"],
        "cache_write_tokens": usage["cache_write"], "reasoning_tokens": usage["reasoning"],
        "total_tokens": usage["input"] + usage["output"],
        "cost_usd": expected_cost(provider, model, usage), "success": True, "error_type": None,
        "usage_source": "response", "service_name": SERVICE,
    }  # fmt: skip


CASES = [(is_async, stream) for is_async in (False, True) for stream in (False, True)]


@pytest.mark.parametrize(("is_async", "stream"), CASES,
                         ids=[f"{'async' if a else 'sync'}-{'stream' if s else 'json'}"
                              for a, s in CASES])  # fmt: skip
def test_each_response_is_one_exact_row(stack: Stack, is_async: bool, stream: bool) -> None:
    """Cached input and reasoning output, sync and async, JSON and stream."""
    correlation_id = f"resp-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id) as op:
        answer = respond(stack.sim, is_async, stream, extra_headers=usage_header(USAGE))
    final = answer[-1].response if stream else answer
    assert final.status == "completed" and final.usage.input_tokens_details.cached_tokens == 1000
    if stream:
        assert answer[-1].type == "response.completed"
    [row] = stack.rows(correlation_id, 1)
    assert row == expected_row(correlation_id, USAGE)
    [[stored_operation]] = query(stack.database_url, "SELECT gen_ai_operation FROM api_calls "
                                 "WHERE correlation_id = %s", (correlation_id,))  # fmt: skip
    assert stored_operation == "chat"
    [record] = op.calls
    assert (record.input_tokens, record.output_tokens, record.cache_read_tokens,
            record.reasoning_tokens) == (1200, 300, 1000, 120)  # fmt: skip
    assert record.cost_usd == expected_cost("openai", MODEL, USAGE)
    [span] = [s for s in stack.spans.get_finished_spans() if s.attributes
              and s.attributes.get("nexus.correlation_id") == correlation_id]  # fmt: skip
    attrs = dict(span.attributes or {})
    assert span.name == f"chat {MODEL}"
    assert (attrs["gen_ai.operation.name"], attrs["gen_ai.provider.name"]) == ("chat", "openai")
    assert (attrs["gen_ai.response.id"], attrs["gen_ai.response.model"]) == (final.id, MODEL)
    assert attrs["gen_ai.response.finish_reasons"] == ("completed",)
    assert ("nexus.response.time_to_first_chunk" in attrs) is stream


def test_the_sdks_stream_helper_without_reasoning(stack: Stack) -> None:
    """`responses.stream()` (the SDK's accumulating helper), a model that does not reason."""
    usage = {"input": 2048, "output": 180, "cache_read": 1024, "cache_write": 0, "reasoning": 0}
    correlation_id = f"helper-{uuid.uuid4().hex[:8]}"
    helper = client(stack.sim).responses.stream(
        model="gpt-4.1", input=QUESTION, extra_headers=usage_header(usage)
    )
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id), helper as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text and text
    [row] = stack.rows(correlation_id, 1)
    assert row == expected_row(correlation_id, usage, model="gpt-4.1")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_incomplete_response_is_one_row_with_its_usage(stack: Stack, stream: bool) -> None:
    """Stopped at `max_output_tokens`: status `incomplete`, the stream's last event
    `response.incomplete`, and the tokens billed all the same."""
    correlation_id = f"incomplete-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id):
        answer = respond(stack.sim, False, stream, max_output_tokens=300,
                         extra_headers=usage_header(USAGE))  # fmt: skip
    final = answer[-1].response if stream else answer
    assert (final.status, final.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    if stream:
        assert answer[-1].type == "response.incomplete"
    [row] = stack.rows(correlation_id, 1)
    assert row == expected_row(correlation_id, USAGE)
    [span] = [s for s in stack.spans.get_finished_spans() if s.attributes
              and s.attributes.get("nexus.correlation_id") == correlation_id]  # fmt: skip
    assert span.attributes and span.attributes["gen_ai.response.finish_reasons"] == (
        "max_output_tokens",
    )


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_error_is_one_failed_row(stack: Stack, is_async: bool) -> None:
    correlation_id = f"resp-err-{uuid.uuid4().hex[:8]}"
    operation = nexus_otel.operation("fact_generation", correlation_id=correlation_id)
    with operation, pytest.raises(openai.RateLimitError):  # the SDK's own exception, unchanged
        respond(stack.sim, is_async, False, extra_headers={"x-sim-error": "429"})
    [row] = stack.rows(correlation_id, 1)
    zero = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0, "reasoning": 0}
    assert row == {**expected_row(correlation_id, zero), "success": False, "error_type": "429"}
    assert row["cost_usd"] == Decimal(0)


def rows_since(stack: Stack, started: datetime, expected: int) -> list[dict[str, Any]]:
    """Every row stored for a call made since `started`, whatever its correlation id (a request
    that is no call would carry none), once `expected` of them have arrived."""
    assert nexus_otel.force_flush()
    sql = f"SELECT {COLUMNS} FROM api_calls WHERE timestamp >= %s ORDER BY timestamp"
    deadline = time.monotonic() + 15
    while len(query(stack.database_url, sql, (started,))) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # as `Stack.rows`: any extra row would show by now
    rows = query(stack.database_url, sql, (started,))
    return [dict(zip(COLUMNS.split(", "), row, strict=True)) for row in rows]


def test_stored_and_background_responses_are_counted_once(stack: Stack) -> None:
    """A stored response retrieved later, a background response polled until it is done: one
    row per response created, none for retrieving, counting tokens, listing input items,
    cancelling or deleting. A background response is recorded when created, with its input
    estimated (its POST answers `queued`, before the model has run, with no usage)."""
    correlation_id = f"stored-{uuid.uuid4().hex[:8]}"
    started = datetime.now(UTC)
    app = client(stack.sim)
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id):
        stored = app.responses.create(model=MODEL, input=QUESTION,
                                      extra_headers=usage_header(USAGE))  # fmt: skip
        queued = app.responses.create(model=MODEL, input=QUESTION, background=True,
                                      extra_headers=usage_header(USAGE))  # fmt: skip
        assert (queued.status, queued.usage) == ("queued", None)
        done = app.responses.retrieve(queued.id)
        again = app.responses.retrieve(stored.id)
        counted = app.responses.input_tokens.count(model=MODEL, input=QUESTION)
        items = list(app.responses.input_items.list(stored.id))
        cancelled = app.responses.cancel(queued.id)
        deleted = app.responses.delete(stored.id)
    # The retrievals did carry usage: counting them would have counted the calls twice.
    assert done.status == again.status == cancelled.status == "completed"
    assert done.usage.input_tokens == again.usage.input_tokens == 1200
    assert counted.input_tokens > 0 and items == [] and deleted is None
    rows = rows_since(stack, started, 2)
    estimated = cl100k_tokens(QUESTION) + 3 + 3  # one message: 3 framing, 3 priming the reply
    none = {"input": estimated, "output": 0, "cache_read": 0, "cache_write": 0, "reasoning": 0}
    assert rows == [
        expected_row(correlation_id, USAGE),
        {**expected_row(correlation_id, none), "usage_source": "tiktoken"},
    ]


def test_a_streamed_background_response_has_its_exact_usage(stack: Stack) -> None:
    correlation_id = f"bg-stream-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id):
        events = respond(stack.sim, False, True, background=True,
                         extra_headers=usage_header(USAGE))  # fmt: skip
    assert [e.type for e in events[:3]] == [
        "response.created", "response.queued", "response.in_progress"]  # fmt: skip
    [row] = stack.rows(correlation_id, 1)
    assert row == expected_row(correlation_id, USAGE)


class _ToSimulator(httpcore2.SyncBackend):
    """Connects wherever a request is addressed to the simulator instead: the app's URL (and
    so the host the instrumentation sees) stays the provider's."""

    def __init__(self, port: int) -> None:
        self.port = port

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return super().connect_tcp("127.0.0.1", self.port, *args, **kwargs)


def test_groqs_responses_endpoint_is_named_groq(stack: Stack) -> None:
    """The openai SDK pointed at Groq's OpenAI-compatible Responses endpoint: the host names
    the provider (not the SDK's User-Agent), and Groq's price applies."""
    transport = httpx2.HTTPTransport()
    transport._pool._network_backend = _ToSimulator(int(stack.sim.base_url.rsplit(":", 1)[1]))
    groq_model = "openai/gpt-oss-120b"
    usage = {"input": 900, "output": 400, "cache_read": 512, "cache_write": 0, "reasoning": 150}
    correlation_id = f"groq-{uuid.uuid4().hex[:8]}"
    with (
        httpx2.Client(transport=transport) as http,
        nexus_otel.operation("fact_generation", correlation_id=correlation_id),
    ):
        app = openai.OpenAI(api_key=OPENAI_KEY, base_url="http://api.groq.com/openai/v1",
                            http_client=http, max_retries=0)  # fmt: skip
        answer = app.responses.create(model=groq_model, input=QUESTION,
                                      extra_headers=usage_header(usage))  # fmt: skip
    assert answer.usage.input_tokens == 900
    assert stack.sim.responses[-1].request_headers["host"] == "api.groq.com"
    [row] = stack.rows(correlation_id, 1)
    assert row == expected_row(correlation_id, usage, model=groq_model, provider="groq")


def test_a_cut_stream_is_one_failed_row_estimated(stack: Stack) -> None:
    """The connection cut after the first text: no final event, so the usage is estimated from
    the prompt and the text that arrived, and marked so."""
    correlation_id = f"cut-{uuid.uuid4().hex[:8]}"
    received: list[str] = []
    operation = nexus_otel.operation("fact_generation", correlation_id=correlation_id)
    with operation, pytest.raises(openai.APIConnectionError):
        answer = client(stack.sim).responses.create(
            model=MODEL, instructions=INSTRUCTIONS, input=INPUT, stream=True,
            extra_headers={"x-sim-error": "interrupt"})  # fmt: skip
        for event in answer:
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    [row] = stack.rows(correlation_id, 1)
    # Two messages (instructions, question): 3 framing tokens each and 3 priming the reply.
    estimated = {"input": cl100k_tokens(f"{INSTRUCTIONS}\n{QUESTION}") + 3 * 2 + 3,
                 "output": cl100k_tokens("".join(received)), "cache_read": 0, "cache_write": 0,
                 "reasoning": 0}  # fmt: skip
    assert len(received) == 1 and estimated["output"] > 0
    assert row == {**expected_row(correlation_id, estimated), "success": False,
                   "error_type": "RemoteProtocolError", "usage_source": "tiktoken"}  # fmt: skip
