"""Token usage in OpenTelemetry semantics, and what one response told us about itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple


class TokenUsage(NamedTuple):
    """Input includes cache reads and writes; output includes reasoning (the GenAI conventions).

    A named tuple: made on every call, and a frozen dataclass costs twice as much to make."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of the cache writes, those to a 1-hour cache (Anthropic)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class RequestInfo:
    """What the request body says; the same shape for every wire format."""

    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    prompt: object = None  # the prompt's JSON; its text is only needed to estimate usage
    messages: object = None  # for opt-in content capture only
    message_count: int = 0

    @property
    def prompt_text(self) -> str:
        return text_of(self.prompt)

    def estimated_input_tokens(self, estimate: Callable[[str], int]) -> int:
        """The prompt's tokens plus the chat format's overhead (3 a message, 3 to prime the reply,
        as OpenAI's cookbook counts it)."""
        return estimate(self.prompt_text) + 3 * self.message_count + 3


@dataclass(slots=True)
class ResponseInfo:
    """What the response said, filled in as its body (or stream) is read."""

    usage: TokenUsage | None = None
    model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    output_parts: list[str] = field(default_factory=list)
    complete: bool = False  # a JSON body fully read, or a stream's terminal event seen
    error_message: str | None = None
    provider_cost_usd: Decimal | None = None  # what the provider says it charged (OpenRouter)
    # A failure the body reports in a successful HTTP answer (a Responses API stream's
    # `response.failed`): the call failed all the same.
    error_type: str | None = None
    # The tier that served the call (OpenAI's `service_tier`: default, flex, priority, scale),
    # which its price depends on.
    service_tier: str | None = None

    @property
    def output_text(self) -> str:
        return "".join(self.output_parts)


def as_int(value: object) -> int:
    """A token count from a JSON field: non-integers and negatives count as 0."""
    if type(value) is int:  # the usual case, first (bool is not int here)
        return value if value > 0 else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(0, int(value))


MAX_SERVICE_TIER = 32  # characters: longer is not a tier name


def read_service_tier(body: dict[str, object], info: ResponseInfo) -> None:
    """A body's (or chunk's) `service_tier`, when it names one."""
    tier = body.get("service_tier")
    if isinstance(tier, str) and 0 < len(tier) <= MAX_SERVICE_TIER:
        info.service_tier = tier


def dig(data: object, *path: str) -> object:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def count(value: object) -> int:
    return len(value) if isinstance(value, list) else 0


def text_of(value: object) -> str:
    """All the text inside a JSON message structure (strings, `text`/`content` fields, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _joined(text_of(v) for v in value)
    if isinstance(value, dict):
        return _joined(text_of(v) for k, v in value.items() if k in TEXT_KEYS)
    return ""


def _joined(texts: Iterable[str]) -> str:
    return "\n".join(t for t in texts if t)


TEXT_KEYS = frozenset(
    {
        "content",
        "text",
        "parts",
        "contents",
        "system",
        "messages",
        "systemInstruction",
        "system_instruction",
    }
)
