"""The OpenAI Responses API (`POST /v1/responses`, also served by Groq and other OpenAI-compatible
hosts): request fields and usage extraction.

Usage is `input_tokens` (cached input included, as the conventions count it),
`input_tokens_details.cached_tokens` (and `cache_write_tokens`), `output_tokens` (reasoning
included) and `output_tokens_details.reasoning_tokens`. A stream's usage is in its terminal event,
`response.completed`, `response.incomplete` or `response.failed`, whose `response` is the whole
final Response.

Only creating a response is a call: `POST .../responses`, and `POST .../responses/compact` (a
billed model pass over a conversation). Counting tokens (`/responses/input_tokens`), cancelling
(`/responses/{id}/cancel`), retrieving, deleting and listing input items (GET and DELETE) are not,
so a stored or background response fetched later is never counted a second time.

A background response (`background: true`) answers its POST at once with status `queued` and no
usage: the model has not run yet. It is recorded then, as the call it is, with its input estimated
from the prompt and marked so, and no output; the GET that later fetches its result is no call.
Streamed (`stream: true`), a background response reports its exact usage like any stream.
"""

from __future__ import annotations

from nexus_otel._usage import (
    RequestInfo,
    ResponseInfo,
    TokenUsage,
    as_int,
    count,
    dig,
    read_service_tier,
)

# The GenAI conventions' well-known operations are `chat` (e.g. OpenAI's Chat API),
# `generate_content` (multimodal, e.g. Gemini), `text_completion` (the legacy Completions API),
# `embeddings` and the agent ones. A response is a conversation turn answered by a model (input
# messages and instructions in, assistant message items out): OpenAI's successor to chat
# completions, so it is `chat`, and its calls sum and compare with chat completions' calls.
OPERATION = "chat"
DEFAULT_PROVIDER = "openai"
_CREATE_PATHS = ("/responses", "/responses/compact")
# Statuses after which a response does not change: its usage, when given, is final.
_FINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
# Stream events carrying the whole Response object: the last of a stream, with its usage, and
# those before it (`response.queued` in a background stream), whose status is not the call's.
_LAST_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_EARLY_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})


def matches(path: str) -> bool:
    return path.rstrip("/").endswith(_CREATE_PATHS)


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    model, max_tokens = body.get("model"), body.get("max_output_tokens")
    temperature = body.get("temperature")
    given, instructions = body.get("input"), body.get("instructions")
    # A string input is one user message; instructions are a system message before it.
    messages: list[object] = list(given) if isinstance(given, list) else []
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    return RequestInfo(
        model=model if isinstance(model, str) else None,
        stream=body.get("stream") is True,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        temperature=float(temperature) if isinstance(temperature, int | float) else None,
        prompt=messages,
        messages=messages,
        message_count=count(messages),
    )


def read_json(body: object, info: ResponseInfo) -> None:
    """A complete Response (or a compaction, or an error body)."""
    if not isinstance(body, dict):
        return
    _read_response(body, info)
    output = body.get("output")
    for item in output if isinstance(output, list) else ():
        parts = dig(item, "content")
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") == "output_text":
                text = part.get("text")
                if isinstance(text, str):
                    info.output_parts.append(text)
    if body.get("object") == "response.compaction":  # no status: its usage is final
        info.complete = True


def new_stream_state() -> None:
    return None  # the terminal event holds the whole response


def read_event(event: str | None, data: object, info: ResponseInfo, state: None = None) -> None:
    if not isinstance(data, dict):
        return
    kind = data.get("type") or event
    if not isinstance(kind, str):
        return
    if kind == "response.output_text.delta":
        delta = data.get("delta")
        if isinstance(delta, str):
            info.output_parts.append(delta)
    elif kind in _LAST_EVENTS:
        _read_response(data.get("response"), info)
    elif kind in _EARLY_EVENTS:
        _read_response(data.get("response"), info, status=False)
    elif kind == "error":  # the stream ended on an error, with no final response
        message, code = data.get("message"), data.get("code")
        info.error_message = message if isinstance(message, str) else "stream error"
        info.error_type = code if isinstance(code, str) and code else "error"


def _read_response(response: object, info: ResponseInfo, status: bool = True) -> None:
    """A Response object: model, id, usage, and (unless `status` is False) its status and why
    it stopped."""
    if not isinstance(response, dict):
        return
    model, response_id = response.get("model"), response.get("id")
    if isinstance(model, str):
        info.model = model
    if isinstance(response_id, str):
        info.response_id = response_id
    if "service_tier" in response:
        read_service_tier(response, info)
    usage = response.get("usage")
    if isinstance(usage, dict):
        info.usage = _usage(usage)
    error = response.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        info.error_message = error["message"]  # a failed response's, or a 4xx body's
    state = response.get("status") if status else None
    if not isinstance(state, str):
        return
    reason = dig(response, "incomplete_details", "reason")
    info.finish_reasons = [reason if isinstance(reason, str) else state]
    info.complete = state in _FINAL
    if state == "failed":  # answered 200 (a stream) or in the body: a failed call all the same
        code = dig(error, "code")
        info.error_type = code if isinstance(code, str) and code else "failed"


def _usage(usage: dict[str, object]) -> TokenUsage:
    details = usage.get("input_tokens_details")
    cached = cache_write = 0
    if isinstance(details, dict):
        cached = as_int(details.get("cached_tokens"))
        cache_write = as_int(details.get("cache_write_tokens"))
    reasoning = as_int(dig(usage, "output_tokens_details", "reasoning_tokens"))
    return TokenUsage(
        as_int(usage.get("input_tokens")),
        as_int(usage.get("output_tokens")),
        cached,
        cache_write,
        reasoning,
    )
