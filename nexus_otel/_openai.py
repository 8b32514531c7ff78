"""OpenAI-compatible chat completions (OpenAI, Groq): request fields and usage extraction."""

from __future__ import annotations

from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage, as_int, count, dig, text_of

OPERATION = "chat"
DEFAULT_PROVIDER = "openai"


def matches(path: str) -> bool:
    return path.rstrip("/").endswith("/chat/completions")


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    temperature = body.get("temperature")
    return RequestInfo(
        model=body.get("model") if isinstance(body.get("model"), str) else None,  # type: ignore[arg-type]
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=float(temperature) if isinstance(temperature, int | float) else None,
        prompt=body.get("messages"),
        messages=body.get("messages"),
        message_count=count(body.get("messages")),
    )


def read_json(body: object, info: ResponseInfo) -> None:
    """A complete (non-streamed) chat completion."""
    for choice in _read_common(body, info):
        info.output_parts.append(text_of(dig(choice, "message", "content")))
    info.complete = True


def new_stream_state() -> None:
    return None  # each chunk stands alone


def read_event(event: str | None, data: object, info: ResponseInfo, state: None = None) -> None:
    """One `data:` line of a streamed chat completion; `[DONE]` ends it."""
    if data == "[DONE]":
        info.complete = True
        return
    for choice in _read_common(data, info):
        content = dig(choice, "delta", "content")
        if isinstance(content, str):
            info.output_parts.append(content)


def _read_common(body: object, info: ResponseInfo) -> list[dict[str, object]]:
    """Reads what every body and chunk may say; returns its choices."""
    if not isinstance(body, dict):
        return []
    model, response_id = body.get("model"), body.get("id")
    if isinstance(model, str):
        info.model = model
    if isinstance(response_id, str):
        info.response_id = response_id
    choices = []
    listed = body.get("choices")
    for choice in listed if isinstance(listed, list) else ():
        if isinstance(choice, dict):
            choices.append(choice)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                info.finish_reasons.append(reason)
    usage = body.get("usage") or dig(body, "x_groq", "usage")
    if isinstance(usage, dict):
        info.usage = _usage(usage)
    if "error" in body:
        error = dig(body, "error", "message")
        if isinstance(error, str):
            info.error_message = error
    return choices


def _usage(usage: dict[str, object]) -> TokenUsage:
    cached = cache_write = reasoning = 0
    prompt = usage.get("prompt_tokens_details")
    if isinstance(prompt, dict):
        cached = as_int(prompt.get("cached_tokens"))
        cache_write = as_int(prompt.get("cache_write_tokens"))
    completion = usage.get("completion_tokens_details")
    if isinstance(completion, dict):
        reasoning = as_int(completion.get("reasoning_tokens"))
    input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return TokenUsage(as_int(input_tokens), as_int(output_tokens), cached, cache_write, reasoning)
