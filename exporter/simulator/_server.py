"""The simulator's HTTP side: one Starlette app for all providers, uvicorn in a thread."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from exporter.simulator import _anthropic, _embeddings, _gemini, _openai, _openai_responses
from exporter.simulator._model import (
    BadRequest,
    Controls,
    Generator,
    Reply,
    ReplyMaker,
    Request,
    SimulatedResponse,
    Usage,
    realistic_or_given,
)

TIMEOUT_SLEEP_SECONDS = 30.0


class StreamInterrupted(Exception):
    """Raised after the last frame of an interrupted response so the connection is cut."""


class _QuietInterruptions(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # cut connections are the point; cancelled `timeout` sleeps are expected at shutdown
        expected = (StreamInterrupted, asyncio.CancelledError)
        return not (record.exc_info and isinstance(record.exc_info[1], expected))


logging.getLogger("uvicorn.error").addFilter(_QuietInterruptions())


@dataclass
class _Wire:
    """How one provider writes replies and errors."""

    name: str
    ids: Callable[[Generator, Reply], None]
    body: Callable[[Reply], dict[str, Any]]
    frames: Callable[[Reply, bool], list[bytes]]
    error: Callable[[int, str, str, str], dict[str, Any]]
    reported: Callable[[Usage], Usage | None]
    stream_type: str = "text/event-stream; charset=utf-8"
    request_id_header: str = ""  # the header each provider names its request id in

    def new_request_id(self, gen: Generator) -> str:
        if self.name == "anthropic":
            return "req_011C" + gen.token_id(20, _anthropic.BASE58)
        return "req_" + gen.token_id(26, "0123456789abcdefghjkmnpqrstvwxyz")


def _openai_wire(groq: bool, extras: dict[str, str] | None = None) -> _Wire:
    return _Wire(
        "openai",
        lambda gen, reply: _openai.new_reply_ids(gen, reply, groq, extras),
        lambda reply: _openai.json_body(reply, groq),
        lambda reply, cut: _openai.sse_frames(reply, groq, cut),
        lambda status, message, model, _: _openai.error_body(status, message, model, groq),
        lambda usage: _openai.reported_usage(usage, groq),
        request_id_header="x-request-id",
    )


_ANTHROPIC = _Wire(
    "anthropic",
    _anthropic.new_reply_ids,
    _anthropic.json_body,
    _anthropic.sse_frames,
    _anthropic.error_body,
    lambda usage: usage,
    request_id_header="request-id",
)


def _openai_embeddings_wire(groq: bool) -> _Wire:
    return _Wire(
        "openai",
        lambda gen, reply: None,  # an embeddings reply has no id
        _embeddings.openai_body,
        lambda reply, cut: [],  # never streamed
        lambda status, message, model, _: _openai.error_body(status, message, model, groq),
        lambda usage: usage,
        request_id_header="x-request-id",
    )


_GEMINI_EMBEDDINGS = _Wire(
    "gemini",
    lambda gen, reply: None,
    _embeddings.gemini_body,
    lambda reply, cut: [],
    lambda status, message, model, _: _gemini.error_body(status, message),
    lambda usage: None,  # the Developer API reports no usage for embeddings
)
_GEMINI = _Wire(
    "gemini",
    _gemini.new_reply_ids,
    _gemini.json_body,
    _gemini.sse_frames,
    lambda status, message, model, _: _gemini.error_body(status, message),
    _gemini.reported_usage,
    "text/event-stream",
)


def _responses_wire(store: _openai_responses.Store) -> _Wire:
    return _Wire(
        _openai_responses.WIRE_FORMAT,
        _openai_responses.new_reply_ids,
        lambda reply: _openai_responses.json_body(reply, store),
        lambda reply, cut: _openai_responses.sse_frames(reply, store, cut),
        lambda status, message, model, _: _openai_responses.error_body(status, message, model),
        lambda usage: usage,
        request_id_header="x-request-id",
    )


class _RawResponse:
    """Writes frames one by one (with a delay between them); cuts the connection if told to."""

    def __init__(
        self, frames: list[bytes], media_type: str, delay: float, cut: bool, headers: dict[str, str]
    ) -> None:
        self.frames, self.media_type, self.delay, self.cut = frames, media_type, delay, cut
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")]
        headers += self.headers
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, frame in enumerate(self.frames):
            if index and self.delay:
                await asyncio.sleep(self.delay)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if self.cut:
            raise StreamInterrupted("simulated interruption: connection cut mid-response")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ProviderSimulator:
    """Local servers speaking the Groq/OpenAI, Anthropic and Gemini wire formats."""

    def __init__(
        self, *, latency_seconds: float = 0.0, chunk_delay_seconds: float = 0.0, seed: int = 0
    ) -> None:
        self.latency_seconds = latency_seconds
        self.chunk_delay_seconds = chunk_delay_seconds
        self.responses: list[SimulatedResponse] = []
        self._generator = Generator(seed)
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""
        self._stored_responses = _openai_responses.Store()
        self._responses_wire = _responses_wire(self._stored_responses)
        self.app = Starlette(
            routes=[
                Route("/openai/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                # OpenAI-compatible providers' paths: `/chat/completions` (DeepSeek),
                # `/api/v1/...` (OpenRouter), `/openai/deployments/<name>/...` (Azure), ...
                Route("/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/{prefix:path}/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/openai/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                *_openai_responses.routes("/openai/v1", self._stored_responses),
                *_openai_responses.routes("/v1", self._stored_responses),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/openai/v1/embeddings", self._openai_embeddings, methods=["POST"]),
                Route("/v1/embeddings", self._openai_embeddings, methods=["POST"]),
                Route("/{version}/models/{target}", self._generate_content, methods=["POST"]),
            ]
        )

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/openai/v1"

    @property
    def groq_base_url(self) -> str:
        return self.base_url

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def gemini_base_url(self) -> str:
        return self.base_url

    def clear(self) -> None:
        with self._lock:
            self.responses.clear()

    def start(self) -> ProviderSimulator:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            loop="asyncio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="provider-simulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the provider simulator did not start")
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> ProviderSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _chat_completions(self, http: HttpRequest) -> Any:
        headers = _headers(http)
        wire = _openai_wire(_openai.is_groq(headers), _openai.reply_extras(headers))
        return await self._answer(http, wire, lambda body: _openai.parse(body, headers))

    async def _responses(self, http: HttpRequest) -> Any:
        headers = _headers(http)
        return await self._answer(
            http, self._responses_wire, lambda body: _openai_responses.parse(body, headers)
        )

    async def _messages(self, http: HttpRequest) -> Any:
        headers = _headers(http)
        return await self._answer(http, _ANTHROPIC, lambda body: _anthropic.parse(body, headers))

    async def _generate_content(self, http: HttpRequest) -> Any:
        version, target = http.path_params["version"], http.path_params["target"]
        model, _, method = target.partition(":")
        if version in ("v1", "v1beta") and method == "countTokens":
            return await self._count_tokens(http)
        if version in ("v1", "v1beta") and method in _embeddings.GEMINI_METHODS:
            return await self._answer(
                http,
                _GEMINI_EMBEDDINGS,
                lambda body: _embeddings.parse_gemini(body, model, method),
                _embeddings.reply,
            )
        if version not in ("v1", "v1beta") or method not in _gemini.METHODS:
            body = _gemini.error_body(404, f"{http.url.path} is not found")
            body["error"]["status"] = "NOT_FOUND"
            return JSONResponse(body, status_code=404)
        return await self._answer(http, _GEMINI, lambda body: _gemini.parse(body, model, method))

    async def _count_tokens(self, http: HttpRequest) -> Any:
        """Token counting (Anthropic `count_tokens`, Gemini `:countTokens`): a count, billed
        nothing, so no usage. About four bytes of request a token."""
        body = await http.body()
        try:
            model = json.loads(body).get("model") or ""
        except (ValueError, AttributeError):
            model = ""
        _Recorder(self, "count_tokens", http, _headers(http))(200, str(model), False, None)
        tokens = max(1, len(body) // 4)
        if http.url.path.endswith(":countTokens"):
            return JSONResponse({"totalTokens": tokens})
        return JSONResponse({"input_tokens": tokens})

    async def _openai_embeddings(self, http: HttpRequest) -> Any:
        wire = _openai_embeddings_wire(_openai.is_groq(_headers(http)))
        return await self._answer(http, wire, _embeddings.parse_openai, _embeddings.reply)

    async def _answer(
        self,
        http: HttpRequest,
        wire: _Wire,
        parse: Callable[[dict[str, Any]], Request],
        make_reply: ReplyMaker = realistic_or_given,
    ) -> Any:
        headers = _headers(http)
        record = _Recorder(self, wire.name, http, headers)
        with self._lock:
            request_id = wire.new_request_id(self._generator)
        sent = {wire.request_id_header: request_id} if wire.request_id_header else {}
        try:
            body = json.loads(await http.body())
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            request = parse(body)
            controls = Controls.from_headers(headers)
        except (BadRequest, ValueError) as exc:
            record(400, "", False, None)
            body = wire.error(400, str(exc), "", request_id)
            return JSONResponse(body, status_code=400, headers=sent)
        latency = self.latency_seconds if controls.latency is None else controls.latency
        await asyncio.sleep(latency)
        if controls.error == "timeout":
            await asyncio.sleep(TIMEOUT_SLEEP_SECONDS)
        if await http.is_disconnected():  # the client gave up waiting: nothing is answered
            return Response(status_code=499)
        if controls.error in ("429", "500", "503"):
            status = int(controls.error)
            record(status, request.model, request.stream, None)
            if status in (429, 503):
                sent["retry-after"] = "1"
            body = wire.error(status, "", request.model, request_id)
            return JSONResponse(body, status, headers=sent)
        with self._lock:
            reply = make_reply(self._generator, request, controls.usage)
            wire.ids(self._generator, reply)
        cut = controls.error == "interrupt"
        usage = None if cut else wire.reported(reply.usage)
        record(200, request.model, request.stream, usage, interrupted=cut)
        if request.stream:
            frames = wire.frames(reply, cut)
            return _RawResponse(frames, wire.stream_type, self.chunk_delay_seconds, cut, sent)
        content = json.dumps(wire.body(reply), separators=(",", ":")).encode()
        if cut:
            content = content[: len(content) // 2]
        return _RawResponse([content], "application/json", 0, cut, sent)


@dataclass
class _Recorder:
    simulator: ProviderSimulator
    wire_format: str
    http: HttpRequest
    headers: dict[str, str]

    def __call__(
        self, status: int, model: str, stream: bool, usage: Usage | None, interrupted: bool = False
    ) -> None:
        response = SimulatedResponse(
            wire_format=self.wire_format,
            path=self.http.url.path,
            model=model,
            stream=stream,
            status=status,
            usage=usage,
            interrupted=interrupted,
            request_headers=self.headers,
            request_query=self.http.url.query,
        )
        with self.simulator._lock:
            self.simulator.responses.append(response)


def _headers(http: HttpRequest) -> dict[str, str]:
    return {key.lower(): value for key, value in http.headers.items()}
