"""OpenAI and Groq chat completions (`POST /openai/v1/chat/completions`), JSON and SSE; and the
OpenAI-compatible providers' (any path ending `/chat/completions`).

Two control headers shape what only some OpenAI-compatible providers answer: `x-sim-cost: 0.0042`
adds OpenRouter's `usage.cost` (credits, USD), with `x-sim-cost-upstream: 0.01` the user's own
key's upstream charge (`usage.is_byok`); `x-sim-response-model` is the `model` the answer names
(Azure OpenAI names the model a deployment runs, not the deployment).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from exporter.simulator._model import BadRequest, Generator, Reply, Request, Usage

WIRE_FORMAT = "openai"
_REASONING_MODELS = re.compile(r"^(o\d|gpt-5|openai/gpt-oss|qwen/qwen3|deepseek-r1)", re.I)


def is_groq(headers: dict[str, str]) -> bool:
    """The Groq SDK names itself in User-Agent (`Groq/Python 1.7.0`, `AsyncGroq/Python ...`)."""
    return headers.get("user-agent", "").startswith(("Groq/", "AsyncGroq/"))


def parse(body: dict[str, Any], headers: dict[str, str]) -> Request:
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    for header in _COST_HEADERS:
        if header in headers:
            _cost(header, headers[header])
    options = body.get("stream_options") or {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    tier = body.get("service_tier")
    return Request(
        model=model,
        stream=bool(body.get("stream")),
        prompt_chars=sum(len(_content_text(m)) for m in messages if isinstance(m, dict)),
        messages=len(messages),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        thinking=bool(_REASONING_MODELS.match(model)),
        service_tier=tier if isinstance(tier, str) and tier != "auto" else "default",
    )


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


_COST_HEADERS = ("x-sim-cost", "x-sim-cost-upstream")
_EXTRA_HEADERS = {"x-sim-response-model": "response_model", **{h: h for h in _COST_HEADERS}}


def _cost(header: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{header} {raw!r}: expected a non-negative number of US dollars")
    return value


def reply_extras(headers: dict[str, str]) -> dict[str, str]:
    """What the control headers add to every reply (checked by `parse`)."""
    return {key: headers[h] for h, key in _EXTRA_HEADERS.items() if headers.get(h)}


def new_reply_ids(
    gen: Generator, reply: Reply, groq: bool, extras: dict[str, str] | None = None
) -> None:
    reply.extra.update(extras or {})
    reply.id = "chatcmpl-" + gen.token_id(29 if not groq else 26)
    reply.extra["fingerprint"] = "fp_" + gen.token_id(10, "0123456789abcdef")
    if groq:
        reply.extra["x_groq_id"] = "req_" + gen.token_id(26, "0123456789abcdefghjkmnpqrstvwxyz")


def wire_usage(usage: Usage, groq: bool) -> dict[str, Any]:
    prompt_details: dict[str, Any] = {"cached_tokens": usage.cache_read_tokens}
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if groq:
        out = {"queue_time": 0.0123, **out, "prompt_time": 0.0041, "completion_time": 0.2077}
        out["total_time"] = 0.2118
        if usage.cache_read_tokens:
            out["prompt_tokens_details"] = prompt_details
        if usage.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
        return out
    prompt_details["audio_tokens"] = 0
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    out["prompt_tokens_details"] = prompt_details
    out["completion_tokens_details"] = {
        "reasoning_tokens": usage.reasoning_tokens,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return out


def _reply_usage(reply: Reply, groq: bool) -> dict[str, Any]:
    """The usage object, with OpenRouter's cost fields when the request asked for them."""
    out = wire_usage(reply.usage, groq)
    if "x-sim-cost" in reply.extra:
        cost = _cost("x-sim-cost", reply.extra["x-sim-cost"])
        upstream = reply.extra.get("x-sim-cost-upstream")
        out["cost"] = cost
        out["is_byok"] = upstream is not None
        # Without the user's own key, OpenRouter repeats the cost as the upstream's.
        upstream_cost = cost if upstream is None else _cost("x-sim-cost-upstream", upstream)
        out["cost_details"] = {"upstream_inference_cost": upstream_cost}
    return out


def _model(reply: Reply) -> str:
    return reply.extra.get("response_model") or reply.request.model


def reported_usage(usage: Usage, groq: bool) -> Usage:
    """What the wire format can carry: Groq has no cache-write count."""
    return Usage(**{**usage.__dict__, "cache_write_tokens": 0}) if groq else usage


def json_body(reply: Reply, groq: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if groq and reply.thoughts:
        message["reasoning"] = reply.thoughts
    if not groq:
        message |= {"refusal": None, "annotations": []}
    body: dict[str, Any] = {
        "id": reply.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(reply),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
        ],
        "usage": _reply_usage(reply, groq),
        "system_fingerprint": reply.extra["fingerprint"],
    }
    if groq:
        body |= {"usage_breakdown": None, "x_groq": {"id": reply.extra["x_groq_id"]}}
        body["service_tier"] = "on_demand"
    else:
        body["service_tier"] = reply.request.service_tier
    return body


def _finish(reply: Reply) -> str:
    limit = reply.request.max_tokens
    return "length" if limit is not None and reply.usage.output_tokens >= limit else "stop"


def sse_frames(reply: Reply, groq: bool, interrupted: bool) -> list[bytes]:
    """Role chunk, content chunks, finish chunk, usage chunk (when asked for), `[DONE]`."""
    base = {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": _model(reply),
        "system_fingerprint": reply.extra["fingerprint"],
    }
    if not groq:
        base["service_tier"] = reply.request.service_tier
    usage_field = {"usage": None} if reply.request.include_usage and not groq else {}

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: object) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _frame({**base, "choices": [choice], **usage_field, **more})

    first_extra = {"x_groq": {"id": reply.extra["x_groq_id"]}} if groq else {}
    role: dict[str, Any] = {"role": "assistant", "content": ""}
    if not groq:
        role["refusal"] = None
    frames = [chunk(role, None, **first_extra)]
    frames += [chunk({"content": part}) for part in reply.text_chunks()]
    if interrupted:
        return frames[:3]
    if groq:
        x_groq = {"id": reply.extra["x_groq_id"], "usage": _reply_usage(reply, groq)}
        frames.append(chunk({}, _finish(reply), x_groq=x_groq))
    else:
        frames.append(chunk({}, _finish(reply)))
    if reply.request.include_usage:
        usage = {"usage": _reply_usage(reply, groq)}
        frames.append(_frame({**base, "choices": [], **usage}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


_ERRORS = {
    400: ("invalid_request_error", None),
    429: ("tokens", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def error_body(status: int, message: str, model: str, groq: bool) -> dict[str, Any]:
    kind, code = _ERRORS.get(status, ("server_error", None))
    if status == 429:
        who = "model `" + model + "` in organization `org_01simulator`" if groq else model
        message = (
            f"Rate limit reached for {who} on tokens per min (TPM): Limit 6000, Used 5800, "
            "Requested 900. Please try again in 1s."
        )
    elif status == 503 and not message:
        message = "The engine is currently overloaded, please try again later"
    elif status == 500 and not message:
        message = "The server had an error while processing your request. Sorry about that!"
    error: dict[str, Any] = {"message": message, "type": kind}
    if groq:
        return {"error": {**error, **({"code": code} if code else {})}}
    return {"error": {**error, "param": None, "code": code}}
