"""Gemini generateContent and streamGenerateContent: request fields and usage extraction.

`promptTokenCount` includes cached content; `candidatesTokenCount` excludes thoughts, so output is
candidates + thoughts. `toolUsePromptTokenCount` (what built-in tools such as Google Search
grounding, URL context or code execution fed the model) is not in `promptTokenCount` and is billed
as input, so input is prompt + tool-use prompt: input + output is then `totalTokenCount`. Every
stream event repeats running totals: the last one is authoritative.
"""

from __future__ import annotations

import re

from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage, as_int, count, dig

OPERATION = "generate_content"
DEFAULT_PROVIDER = "gcp.gemini"
_PATH = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$")


def matches(path: str) -> bool:
    return _PATH.search(path) is not None


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    found = _PATH.search(path)
    config = body.get("generationConfig") or body.get("generation_config") or {}
    max_tokens = dig(config, "maxOutputTokens")
    temperature = dig(config, "temperature")
    contents, system = body.get("contents"), body.get("systemInstruction")
    return RequestInfo(
        model=found.group("model") if found else None,
        stream=bool(found and found.group("method") == "streamGenerateContent"),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=float(temperature) if isinstance(temperature, int | float) else None,
        prompt={"contents": contents, "systemInstruction": system},
        messages=contents,
        message_count=count(contents) + (1 if system else 0),
    )


def read_json(body: object, info: ResponseInfo) -> None:
    # A non-streamed answer is one object; some clients read the stream as a JSON array.
    items: list[object] = body if isinstance(body, list) else [body]
    for item in items:
        read_event(None, item, info)
    info.complete = True


def new_stream_state() -> None:
    return None  # each event repeats the running totals


def read_event(event: str | None, data: object, info: ResponseInfo, state: None = None) -> None:
    if not isinstance(data, dict):
        return
    if isinstance(data.get("modelVersion"), str):
        info.model = data["modelVersion"]
    if isinstance(data.get("responseId"), str):
        info.response_id = data["responseId"]
    for candidate in data.get("candidates") or []:
        _read_candidate(candidate, info)
    usage = data.get("usageMetadata")
    if isinstance(usage, dict):
        info.usage = _usage(usage)
        # Each stream event carries usage; the one that carries a finish reason is the last.
        info.complete = info.complete or bool(info.finish_reasons)
    error = dig(data, "error", "message")
    if isinstance(error, str):
        info.error_message = error


def _read_candidate(candidate: object, info: ResponseInfo) -> None:
    if not isinstance(candidate, dict):
        return
    reason = candidate.get("finishReason")
    if isinstance(reason, str):
        info.finish_reasons = [reason.lower()]
    parts = dig(candidate, "content", "parts")
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought"):
            info.output_parts.append(part["text"])


def _usage(usage: dict[str, object]) -> TokenUsage:
    thoughts = as_int(usage.get("thoughtsTokenCount"))
    return TokenUsage(
        input_tokens=as_int(usage.get("promptTokenCount"))
        + as_int(usage.get("toolUsePromptTokenCount")),
        output_tokens=as_int(usage.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=as_int(usage.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )
