"""Gemini `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`."""

from __future__ import annotations

import json
import re
from typing import Any

from exporter.simulator._model import BadRequest, Generator, Reply, Request, Usage, split_text

WIRE_FORMAT = "gemini"
METHODS = ("generateContent", "streamGenerateContent")
_THINKS_BY_DEFAULT = re.compile(r"^gemini-(2\.5|3)(?!.*lite)")
_EXPLICIT_CACHE_TOKENS = 4096


def parse(body: dict[str, Any], model: str, method: str) -> Request:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = body.get("generationConfig") or body.get("generation_config") or {}
    thinking = config.get("thinkingConfig") or config.get("thinking_config") or {}
    budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens"))
    system = body.get("systemInstruction") or body.get("system_instruction")
    chars = sum(len(_text(c)) for c in [*contents, system] if isinstance(c, dict))
    return Request(
        model=model,
        stream=method == "streamGenerateContent",
        prompt_chars=chars,
        messages=len(contents),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        cached_content_tokens=_EXPLICIT_CACHE_TOKENS if body.get("cachedContent") else 0,
        thinking=bool(budget) if budget is not None else bool(_THINKS_BY_DEFAULT.match(model)),
        include_thoughts=bool(thinking.get("includeThoughts", thinking.get("include_thoughts"))),
    )


def _text(content: dict[str, Any]) -> str:
    parts = content.get("parts") or []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def new_reply_ids(gen: Generator, reply: Reply) -> None:
    reply.id = gen.token_id(22, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def wire_usage(usage: Usage, candidates: int | None = None) -> dict[str, Any]:
    """`promptTokenCount` includes cached input; `candidatesTokenCount` excludes thoughts."""
    visible = usage.output_tokens - usage.reasoning_tokens if candidates is None else candidates
    out: dict[str, Any] = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": visible,
        "totalTokenCount": usage.input_tokens + visible + usage.reasoning_tokens,
    }
    if usage.cache_read_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_tokens
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.input_tokens}]
    if usage.cache_read_tokens:
        out["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.cache_read_tokens}]
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def reported_usage(usage: Usage) -> Usage:
    """The wire has no cache-write count (explicit caches are created by another call)."""
    return Usage(**{**usage.__dict__, "cache_write_tokens": 0})


def _finish(reply: Reply) -> str:
    limit = reply.request.max_tokens
    return "MAX_TOKENS" if limit is not None and reply.usage.output_tokens >= limit else "STOP"


def _parts(reply: Reply, text: str, thoughts: str = "") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if thoughts and reply.request.include_thoughts:
        parts.append({"text": thoughts, "thought": True})
    if text:
        parts.append({"text": text})
    return parts


def _chunk(reply: Reply, parts: list[dict[str, Any]], **candidate: Any) -> dict[str, Any]:
    content = {"parts": parts, "role": "model"}
    return {
        "candidates": [{"content": content, **candidate, "index": 0}],
        "modelVersion": reply.request.model,
        "responseId": reply.id,
    }


def json_body(reply: Reply) -> dict[str, Any]:
    body = _chunk(reply, _parts(reply, reply.text, reply.thoughts), finishReason=_finish(reply))
    return {**body, "usageMetadata": wire_usage(reply.usage)}


def sse_frames(reply: Reply, interrupted: bool) -> list[bytes]:
    """Every event repeats running usage totals; the last one is final and authoritative."""
    texts = split_text(reply.text, 5)
    events: list[dict[str, Any]] = []
    if reply.thoughts and reply.request.include_thoughts:
        events.append(_chunk(reply, _parts(reply, "", reply.thoughts)))
    visible = reply.usage.output_tokens - reply.usage.reasoning_tokens
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        event = _chunk(
            reply, _parts(reply, text), **({"finishReason": _finish(reply)} if last else {})
        )
        running = visible if last else visible * (i + 1) // len(texts)
        if not interrupted:
            event["usageMetadata"] = wire_usage(reply.usage, running)
        events.append(event)
    if interrupted:
        events = events[:2]
    return [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\r\n\r\n" for e in events]


_HELP = "https://developers.generativeai.google/guide/troubleshooting"
_STATUS = {
    400: ("INVALID_ARGUMENT", ""),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in " + _HELP),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    name, default = _STATUS.get(status, ("INTERNAL", "An internal error has occurred."))
    return {"error": {"code": status, "message": message or default, "status": name}}
