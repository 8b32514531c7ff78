"""Anthropic Messages: request fields and usage extraction.

Anthropic's `input_tokens` excludes the cache; the conventions' input includes it, so reads and
writes are added back. Stream usage is cumulative: `message_delta` repeats the running totals, so
the last value of each field wins and nothing is summed. `cache_creation` splits the writes by
cache lifetime (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`): 1-hour writes are
priced apart, so their count is kept (within the writes: a larger one raises the writes to it).
"""

from __future__ import annotations

from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage, as_int, count, dig

OPERATION = "chat"
DEFAULT_PROVIDER = "anthropic"
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_WRITE_1H = "ephemeral_1h_input_tokens"  # in `cache_creation`; kept in the fields by this name


def matches(path: str) -> bool:
    return path.rstrip("/").endswith("/v1/messages")


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    model, max_tokens, temperature = (
        body.get("model"),
        body.get("max_tokens"),
        body.get("temperature"),
    )
    return RequestInfo(
        model=model if isinstance(model, str) else None,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=float(temperature) if isinstance(temperature, int | float) else None,
        prompt={"system": body.get("system"), "messages": body.get("messages")},
        messages=body.get("messages"),
        message_count=count(body.get("messages")) + (1 if body.get("system") else 0),
    )


class _StreamUsage:
    """The running usage of one stream, kept on the ResponseInfo between events."""

    def __init__(self) -> None:
        self.fields: dict[str, object] = {}
        self.thinking: object = None


def read_json(body: object, info: ResponseInfo) -> None:
    if not isinstance(body, dict):
        return
    _read_message(body, info, None)
    for block in body.get("content") or []:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            info.output_parts.append(block["text"])
    if "error" in body:
        error = dig(body, "error", "message")
        if isinstance(error, str):
            info.error_message = error
    info.complete = True


def read_event(event: str | None, data: object, info: ResponseInfo, state: _StreamUsage) -> None:
    if not isinstance(data, dict):
        return
    kind = data.get("type") or event
    if kind == "message_start":
        _read_message(data.get("message"), info, state)
    elif kind == "message_delta":
        reason = dig(data, "delta", "stop_reason")
        if isinstance(reason, str):
            info.finish_reasons = [reason]
        _merge_usage(data.get("usage"), info, state)
    elif kind == "content_block_delta":
        text = dig(data, "delta", "text")
        if isinstance(text, str):
            info.output_parts.append(text)
    elif kind == "message_stop":
        info.complete = True
    elif kind == "error":
        message = dig(data, "error", "message")
        info.error_message = message if isinstance(message, str) else "stream error"


def new_stream_state() -> _StreamUsage:
    return _StreamUsage()


def _read_message(message: object, info: ResponseInfo, state: _StreamUsage | None) -> None:
    """A whole message (`state` None), or a stream's `message_start`."""
    if not isinstance(message, dict):
        return
    if isinstance(message.get("model"), str):
        info.model = message["model"]
    if isinstance(message.get("id"), str):
        info.response_id = message["id"]
    if isinstance(message.get("stop_reason"), str):
        info.finish_reasons = [message["stop_reason"]]
    usage = message.get("usage")
    if state is not None:
        _merge_usage(usage, info, state)
    elif isinstance(usage, dict):
        fields = dict(usage, **{_WRITE_1H: dig(usage, "cache_creation", _WRITE_1H)})
        info.usage = _usage(fields, dig(usage, "output_tokens_details", "thinking_tokens"))


def _merge_usage(usage: object, info: ResponseInfo, state: _StreamUsage) -> None:
    if not isinstance(usage, dict):
        return
    for key in _USAGE_FIELDS:
        if usage.get(key) is not None:
            state.fields[key] = usage[key]
    write_1h = dig(usage, "cache_creation", _WRITE_1H)
    if write_1h is not None:
        state.fields[_WRITE_1H] = write_1h
    thinking = dig(usage, "output_tokens_details", "thinking_tokens")
    if thinking is not None:
        state.thinking = thinking
    info.usage = _usage(state.fields, state.thinking)


def _usage(fields: dict[str, object], thinking: object) -> TokenUsage:
    """Anthropic's usage fields in the conventions' terms: input includes the cache."""
    cache_read = as_int(fields.get("cache_read_input_tokens"))
    write_1h = as_int(fields.get(_WRITE_1H))
    cache_write = max(as_int(fields.get("cache_creation_input_tokens")), write_1h)
    uncached, output = as_int(fields.get("input_tokens")), as_int(fields.get("output_tokens"))
    return TokenUsage(
        uncached + cache_read + cache_write,
        output,
        cache_read,
        cache_write,
        as_int(thinking),
        write_1h,
    )
