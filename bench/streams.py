"""The local server of the instrumentation benchmark, in the exact wire formats of OpenAI/Groq
chat completions and Anthropic Messages: a short JSON reply, or a 1 MB SSE stream.

Why not the provider simulator: it answers short replies only, and sends JSON replies chunked,
which on loopback costs about 40 ms per OpenAI-format call (a delayed ACK): that would drown
the microseconds measured here. This server answers with Content-Length, in one write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

STREAM_BYTES = 1024 * 1024
CHUNK_CHARS = 256
CHUNKS = STREAM_BYTES // CHUNK_CHARS
_TEXT = ("lorem ipsum dolor sit amet " * 20)[:CHUNK_CHARS]
USAGE = {"input": 12, "output": CHUNKS * 64}


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def openai_frames(model: str, groq: bool) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **more})

    usage = {
        "prompt_tokens": USAGE["input"],
        "completion_tokens": USAGE["output"],
        "total_tokens": USAGE["input"] + USAGE["output"],
    }
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": _TEXT}) for _ in range(CHUNKS)]
    if groq:
        frames.append(chunk({}, "stop", x_groq={"id": "req_bench", "usage": usage}))
    else:
        frames.append(chunk({}, "stop"))
    frames.append(_sse({**base, "choices": [], "usage": usage}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def anthropic_frames(model: str) -> list[bytes]:
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": USAGE["input"], "output_tokens": 1},
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    frames = [
        _sse({"type": "message_start", "message": message}, "message_start"),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
    ]
    text_delta = {**delta, "delta": {"type": "text_delta", "text": _TEXT}}
    frames += [_sse(text_delta, "content_block_delta")] * CHUNKS
    frames += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output"]},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return frames


def _batched(frames: list[bytes], per_write: int = 32) -> Iterator[bytes]:
    for i in range(0, len(frames), per_write):
        yield b"".join(frames[i : i + per_write])


def openai_json(model: str) -> bytes:
    usage = {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23}
    message = {"role": "assistant", "content": "Coffee mornings start slow."}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }
    return json.dumps(body).encode()


def anthropic_json(model: str) -> bytes:
    body = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Coffee mornings start slow."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 14,
            "output_tokens": 9,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }
    return json.dumps(body).encode()


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = body.get("model", "model")
    if not body.get("stream"):
        return Response(openai_json(model), media_type="application/json")
    groq = request.headers.get("user-agent", "").startswith("Groq/")
    frames = openai_frames(model, groq)
    return StreamingResponse(_batched(frames), media_type="text/event-stream")


async def _messages(request: Request) -> Response:
    body = await request.json()
    model = body.get("model", "model")
    if not body.get("stream"):
        return Response(anthropic_json(model), media_type="application/json")
    frames = anthropic_frames(model)
    return StreamingResponse(_batched(frames), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/openai/v1/chat/completions", _chat, methods=["POST"]),
        Route("/v1/messages", _messages, methods=["POST"]),
    ]
)
