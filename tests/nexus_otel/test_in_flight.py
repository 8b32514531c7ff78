"""The call's request is read, and its span started, while the server works on the reply: the
app waits for the server then anyway, so that work adds nothing to the call's time. The request
the app sent is left as it was, and a call whose request never went out is recorded all the same."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import groq
import httpx
import httpx2
import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from tests.nexus_otel.clients import MESSAGES
from tests.support import QuietHandler, free_port

MODEL = "llama-3.3-70b-versatile"
REPLY = {"id": "chatcmpl-9", "object": "chat.completion", "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}}  # fmt: skip


class SpanStarted(SpanProcessor):
    """Sets `started` when a span starts."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.set()


class WaitingServer:
    """Answers a chat completion once it has the whole request, after waiting (up to 5 s) for a
    span to start; `started_before_reply` tells, per request, whether one had."""

    def __init__(self, signal: SpanStarted) -> None:
        self.started_before_reply: list[bool] = []
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                server.started_before_reply.append(signal.started.wait(5))
                signal.started.clear()
                self.answer(200, json.dumps(REPLY).encode(), "application/json")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = self.root + "/v1/chat/completions"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


Setup = tuple[InMemorySpanExporter, WaitingServer]


@pytest.fixture
def setup() -> Iterator[Setup]:
    memory, started = InMemorySpanExporter(), SpanStarted()
    provider = TracerProvider()
    provider.add_span_processor(started)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    nexus_otel.instrument(tracer_provider=provider)
    server = WaitingServer(started)
    yield memory, server
    server.close()
    nexus_otel.uninstrument()


def _the_call(memory: InMemorySpanExporter) -> ReadableSpan:
    [span] = memory.get_finished_spans()
    return span


BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": 64}


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_span_starts_while_the_server_works(setup: Setup, module: Any, is_async: bool) -> None:
    memory, server = setup

    async def send_async() -> Any:
        async with module.AsyncClient() as client:
            return await client.post(server.url, json=BODY)

    if is_async:
        response = asyncio.run(send_async())
    else:
        with module.Client() as client:
            response = client.post(server.url, json=BODY)
    assert response.json() == REPLY
    assert server.started_before_reply == [True]
    attributes = dict(_the_call(memory).attributes or {})
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        21,
        4,
    )
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_through_an_sdk_too(setup: Setup) -> None:
    memory, server = setup
    client = groq.Groq(api_key="gsk-test", base_url=server.root, max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.prompt_tokens == 21
    assert server.started_before_reply == [True]
    assert dict(_the_call(memory).attributes or {})["gen_ai.provider.name"] == "groq"


def test_the_apps_request_is_left_as_it_was(
    setup: Setup,
) -> None:
    memory, server = setup
    with httpx.Client() as client:
        request = client.build_request("POST", server.url, json=BODY)
        stream = request.stream
        first, again = client.send(request), client.send(request)  # the same request, twice
    assert request.stream is stream
    assert first.json() == again.json() == REPLY
    assert server.started_before_reply == [True, True]
    assert len(memory.get_finished_spans()) == 2


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_request_that_never_went_out_is_recorded_with_what_it_asked(
    setup: Setup, is_async: bool
) -> None:
    memory, _ = setup
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"  # nothing listens there

    async def send_async() -> None:
        async with httpx.AsyncClient() as client:
            await client.post(url, json=BODY)

    with pytest.raises(httpx.ConnectError):
        if is_async:
            asyncio.run(send_async())
        else:
            httpx.post(url, json=BODY)
    attributes = dict(_the_call(memory).attributes or {})
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["error.type"] == "ConnectError"
    assert "gen_ai.usage.output_tokens" in attributes
