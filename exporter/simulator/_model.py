"""What the simulator knows independently of any wire format: usage, controls, made-up replies."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_CACHEABLE_TOKENS = 1024  # shorter prefixes are not cached (Anthropic's minimum for Sonnet)
ERRORS = ("429", "500", "503", "timeout", "interrupt")
_USAGE_KEYS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
    "cache_write_1h": "cache_write_1h_tokens",  # of cache_write: Anthropic's 1-hour cache
}
_TEXT = (
    "the quick carousel slide brings your audience a fresh fact about coffee mornings, ocean "
    "light, city gardens and small habits that compound; each caption invites a save, a share "
    "and a second look at what matters today"
)
_WORDS = _TEXT.split()


@dataclass(frozen=True)
class Usage:
    """OpenTelemetry semantics: input includes cache read and write; output includes reasoning."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of the cache writes; only Anthropic's wire tells them


@dataclass
class SimulatedResponse:
    """One per HTTP request answered, in order."""

    # "openai" (OpenAI-compatible chat and embeddings) | "openai_responses" | "anthropic" | "gemini"
    wire_format: str
    path: str
    model: str
    stream: bool
    status: int  # HTTP status sent; 200 for an interrupted stream
    usage: Usage | None  # what the response reported, in OTel semantics; None when none
    interrupted: bool
    request_headers: dict[str, str]
    request_query: str


class BadRequest(ValueError):
    """A request (or a control header) the simulator cannot answer: a 400 with this message."""


@dataclass
class Controls:
    """The optional `x-sim-*` request headers."""

    usage: Usage | None = None
    error: str | None = None
    latency: float | None = None

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Controls:
        controls = cls()
        if raw := headers.get("x-sim-usage"):
            controls.usage = parse_usage(raw)
        if raw := headers.get("x-sim-error"):
            if raw.strip() not in ERRORS:
                raise BadRequest(f"x-sim-error {raw!r}: expected one of {', '.join(ERRORS)}")
            controls.error = raw.strip()
        if raw := headers.get("x-sim-latency"):
            try:
                controls.latency = float(raw)
            except ValueError:
                raise BadRequest(f"x-sim-latency {raw!r}: expected seconds") from None
            if not 0 <= controls.latency <= 120:
                raise BadRequest(f"x-sim-latency {raw!r}: expected 0 to 120 seconds")
        return controls


def parse_usage(raw: str) -> Usage:
    """`input=1200,output=300,cache_read=1000` into a Usage, checked for consistency."""
    values: dict[str, int] = {}
    for item in raw.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in _USAGE_KEYS:
            raise BadRequest(f"x-sim-usage key {key!r}: expected {', '.join(_USAGE_KEYS)}")
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"x-sim-usage {key}={value!r}: expected an integer") from None
        if number < 0:
            raise BadRequest(f"x-sim-usage {key}={number}: must not be negative")
        values[_USAGE_KEYS[key]] = number
    if "input_tokens" not in values or "output_tokens" not in values:
        raise BadRequest("x-sim-usage needs at least input= and output=")
    usage = Usage(**values)
    if usage.cache_read_tokens + usage.cache_write_tokens > usage.input_tokens:
        raise BadRequest("x-sim-usage: cache_read + cache_write exceed input (input includes them)")
    if usage.cache_write_1h_tokens > usage.cache_write_tokens:
        raise BadRequest("x-sim-usage: cache_write_1h exceeds cache_write (a part of them)")
    if usage.reasoning_tokens > usage.output_tokens:
        raise BadRequest("x-sim-usage: reasoning exceeds output (output includes it)")
    return usage


@dataclass
class Request:
    """A provider request, reduced to what shapes the reply."""

    model: str
    stream: bool
    prompt_chars: int
    messages: int
    max_tokens: int | None = None
    include_usage: bool = False  # OpenAI stream_options.include_usage
    cache_prefix_chars: int = 0  # Anthropic cache_control / Gemini cachedContent
    cache_key: str = ""
    cached_content_tokens: int = 0  # Gemini explicit cache: read on every call
    thinking: bool = False
    include_thoughts: bool = False
    service_tier: str = "default"  # OpenAI: the tier asked for ("auto" is served by default)


@dataclass
class Reply:
    """A successful answer, before it is written in a wire format."""

    request: Request
    usage: Usage
    text: str
    thoughts: str = ""
    id: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def text_chunks(self, count: int = 6) -> list[str]:
        return split_text(self.text, count)


def split_text(text: str, count: int) -> list[str]:
    words = text.split(" ")
    size = max(1, -(-len(words) // count))
    parts = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [part if i == 0 else " " + part for i, part in enumerate(parts)]


class Generator:
    """Realistic, seed-deterministic usage and text. Not thread-safe: callers hold a lock."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._cached: set[str] = set()

    def token_id(self, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def usage(self, request: Request) -> Usage:
        """Input ~ prompt characters / 4 plus per-message overhead; output within max_tokens."""
        rng = self.rng
        input_tokens = request.prompt_chars // 4 + 4 * request.messages + 3
        cap = request.max_tokens or 1024
        output = rng.randint(max(1, cap // 4), max(1, cap * 3 // 4))
        reasoning = rng.randint(output // 4, output * 2 // 3) if request.thinking else 0
        cache_read = cache_write = 0
        if request.cached_content_tokens:
            input_tokens += request.cached_content_tokens
            cache_read = request.cached_content_tokens
        elif request.cache_prefix_chars // 4 >= MIN_CACHEABLE_TOKENS:
            cached = min(input_tokens, request.cache_prefix_chars // 4)
            if request.cache_key in self._cached:
                cache_read = cached
            else:
                cache_write = cached
                self._cached.add(request.cache_key)
        elif input_tokens >= 1024 and rng.random() < 0.3:
            cache_read = input_tokens // 256 * 128  # providers cache in whole blocks
        return Usage(input_tokens, output, cache_read, cache_write, reasoning)

    def text(self, output_tokens: int) -> str:
        words = max(1, min(output_tokens * 3 // 4, 60))
        return " ".join(self.rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


# How a reply is made from a request and the usage `x-sim-usage` gave, if any.
ReplyMaker = Callable[[Generator, Request, Usage | None], Reply]


def realistic_or_given(gen: Generator, request: Request, given: Usage | None) -> Reply:
    usage = given or gen.usage(request)
    visible = usage.output_tokens - usage.reasoning_tokens
    thoughts = gen.text(usage.reasoning_tokens) if usage.reasoning_tokens else ""
    return Reply(request, usage, gen.text(max(visible, 1)), thoughts)
