"""OpenAI-compatible chat completions (OpenAI, Groq, DeepSeek, Mistral, xAI, Together, Fireworks,
OpenRouter, Azure OpenAI, any `base_url`): request fields and usage extraction.

Azure OpenAI names the deployment in the path (`/openai/deployments/<name>/chat/completions`,
the API version in the query): the request's model is the deployment when the body names none,
and the response's `model` is the model the deployment runs, which prices the call.

OpenRouter reports what it charged in `usage.cost` (credits, one credit one US dollar). With the
user's own provider key (`usage.is_byok`), that is OpenRouter's fee alone, and
`usage.cost_details.upstream_inference_cost` is what the provider charged the key: the call cost
both. Without it, `upstream_inference_cost` is part of `cost`.

`completion_tokens` includes `completion_tokens_details.reasoning_tokens` (OpenAI, Groq, and
`total_tokens` is prompt + completion), except at xAI, whose `total_tokens` is prompt + completion
+ reasoning: there the reasoning, billed as output, is added to the output. The totals tell which.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from nexus_otel._usage import (
    RequestInfo,
    ResponseInfo,
    TokenUsage,
    as_int,
    count,
    dig,
    read_service_tier,
    text_of,
)

OPERATION = "chat"
DEFAULT_PROVIDER = "openai"
_AZURE_DEPLOYMENT = re.compile(r"/deployments/(?P<name>[^/]+)/")


def matches(path: str) -> bool:
    return path.rstrip("/").endswith("/chat/completions")


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    temperature = body.get("temperature")
    model = body.get("model")
    if not isinstance(model, str):
        found = _AZURE_DEPLOYMENT.search(path)
        model = found.group("name") if found else None
    return RequestInfo(
        model=model,
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
    if "service_tier" in body:
        read_service_tier(body, info)
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
        if "cost" in usage:
            info.provider_cost_usd = _provider_cost(usage)
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
    input_tokens = as_int(usage.get("prompt_tokens"))
    output_tokens = as_int(usage.get("completion_tokens"))
    if reasoning and as_int(usage.get("total_tokens")) == input_tokens + output_tokens + reasoning:
        output_tokens += reasoning  # xAI: the reasoning is outside completion_tokens
    return TokenUsage(input_tokens, output_tokens, cached, cache_write, reasoning)


def _provider_cost(usage: dict[str, object]) -> Decimal | None:
    """OpenRouter's `usage.cost`, plus the upstream provider's charge when the key was the user's
    own; None when it is not a finite, non-negative number."""
    total = _amount(usage.get("cost"))
    if total is not None and usage.get("is_byok") is True:
        upstream = _amount(dig(usage, "cost_details", "upstream_inference_cost"))
        total = total + upstream if upstream is not None else None
    return total


def _amount(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return Decimal(str(value))  # via str: 0.0001 stays exactly 0.0001
