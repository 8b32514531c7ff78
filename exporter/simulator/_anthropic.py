"""Anthropic Messages (`POST /v1/messages`), JSON and SSE with `event:` lines."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from exporter.simulator._model import BadRequest, Generator, Reply, Request, Usage, split_text

WIRE_FORMAT = "anthropic"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def parse(body: dict[str, Any], headers: dict[str, str]) -> Request:
    model, messages, max_tokens = body.get("model"), body.get("messages"), body.get("max_tokens")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required")
    blocks = _blocks(body.get("tools")) + _blocks(body.get("system"))
    for message in messages:
        blocks += _blocks(message.get("content") if isinstance(message, dict) else None)
    texts = [_block_text(block) for block in blocks]
    marked = [i for i, block in enumerate(blocks) if block.get("cache_control")]
    prefix = "".join(texts[: marked[-1] + 1]) if marked else ""
    thinking = body.get("thinking")
    return Request(
        model=model,
        stream=bool(body.get("stream")),
        prompt_chars=sum(len(text) for text in texts),
        messages=len(messages),
        max_tokens=max_tokens,
        cache_prefix_chars=len(prefix),
        cache_key=hashlib.sha256((model + prefix).encode()).hexdigest(),
        thinking=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
    )


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if isinstance(value, list):
        return [block for block in value if isinstance(block, dict)]
    return []


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") == "text" or "text" in block:
        return str(block.get("text", ""))
    return json.dumps(block)  # tools and other blocks count by their size


def new_reply_ids(gen: Generator, reply: Reply) -> None:
    reply.id = "msg_01" + gen.token_id(22, BASE58)
    if reply.thoughts:
        reply.extra["signature"] = gen.token_id(48) + "=="


def wire_usage(usage: Usage, *, final: bool = True) -> dict[str, Any]:
    """`input_tokens` excludes cache reads and writes on this wire."""
    out: dict[str, Any] = {
        "input_tokens": usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "output_tokens": usage.output_tokens if final else 1,
    }
    if final and usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def _stop_reason(reply: Reply) -> str:
    limit = reply.request.max_tokens
    return "max_tokens" if limit is not None and reply.usage.output_tokens >= limit else "end_turn"


def _content(reply: Reply) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if reply.thoughts:
        signature = reply.extra["signature"]
        content.append({"type": "thinking", "thinking": reply.thoughts, "signature": signature})
    content.append({"type": "text", "text": reply.text})
    return content


def json_body(reply: Reply) -> dict[str, Any]:
    return {
        "model": reply.request.model,
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "content": _content(reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": {**wire_usage(reply.usage), "service_tier": "standard"},
    }


def sse_frames(reply: Reply, interrupted: bool) -> list[bytes]:
    """message_start, per block start/deltas/stop, message_delta (cumulative usage), stop."""
    start = {**json_body(reply), "content": [], "stop_reason": None}
    start["usage"] = {**wire_usage(reply.usage, final=False), "service_tier": "standard"}
    frames = [_event("message_start", {"message": start})]
    for index, block in enumerate(_content(reply)):
        frames += _block_events(index, block)
        if index == 0:
            frames.insert(2, _event("ping", {}))
    if interrupted:
        return frames[:5]
    delta = {"stop_reason": _stop_reason(reply), "stop_sequence": None}
    frames.append(_event("message_delta", {"delta": delta, "usage": wire_usage(reply.usage)}))
    frames.append(_event("message_stop", {}))
    return frames


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    if block["type"] == "thinking":
        empty = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": p} for p in split_text(block["thinking"], 4)
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        empty = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in split_text(block["text"], 6)]
    frames = [_event("content_block_start", {"index": index, "content_block": empty})]
    frames += [_event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
    frames.append(_event("content_block_stop", {"index": index}))
    return frames


def _event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": name, **payload}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


_ERRORS = {
    400: ("invalid_request_error", ""),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 30,000 input tokens "
        "per minute. Please try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
}


def error_body(status: int, message: str, model: str, request_id: str) -> dict[str, Any]:
    kind, default = _ERRORS.get(status, ("api_error", "Internal server error"))
    error = {"type": kind, "message": message or default}
    return {"type": "error", "error": error, "request_id": request_id}
