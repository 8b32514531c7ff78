"""From a decoded span to one normalized LLM call, whatever spelling of the conventions it used."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from exporter.ingest.kept import MAX_STRING, kept_attributes
from exporter.ingest.kept import scrubbed as _scrubbed
from exporter.ingest.metrics import ERROR_CODE, OTHER_ERROR
from exporter.ingest.model import TRUNCATED_MARKER, AttributeValue, LLMCall, RawSpan
from exporter.ingest.spellings import (
    CACHE_READ,
    CACHE_WRITE,
    CURRENT_SPELLINGS,
    INPUT,
    OTHER_SPELLINGS,
    OUTPUT,
    REASONING,
    TOKEN_KEYS,
    TOTAL,
)
from nexus_otel import attributes as a
from nexus_otel._embeddings import EMBEDDINGS
from nexus_otel._llm_providers import (
    MAX_REPORTED_COST_USD,
    NOT_MODEL_CALL_KINDS,
    NOT_MODEL_CALL_SPANS,
    NOT_MODEL_CALLS,
    normalize_provider,
    provider_from_host,
)
from nexus_otel._secrets import CACHED_LENGTH, scrub_text
from nexus_otel._secrets import scrubbed_before as _seen
from nexus_otel._usage import MAX_SERVICE_TIER

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Plausible ranges, checked here at the edge; a span outside one is rejected alone, with a reason.
# Tokens: the largest context windows hold about 10^7 tokens, so no real call uses 10^8. One
# bound on every count (and on the total, which is at least input + output) also keeps every
# summary sum far from bigint: a summary row adds at most 10^8 per call, and 9.2 * 10^18 (the
# bigint maximum) is 9.2 * 10^10 such calls in one UTC day on one dimension key, over a million
# calls a second for 24 hours, ten times what one writer connection can store.
MAX_TOKENS_PER_CALL = 10**8
# No LLM call lasts a day; an end time far past its start (2^64 - 1 ns, an unset clock) is bad data.
MAX_CALL_DURATION_NS = 24 * 3600 * 10**9
_MAX_TTFC_SECONDS = MAX_CALL_DURATION_NS / 10**9
# A span-reported cost above MAX_REPORTED_COST_USD ($1,000: a unit mistake, cents, micro-dollars,
# credits) is ignored and the call priced from its tokens like any other, the value kept beside it.
IGNORED_REPORTED_COST = "nexus.cost.ignored_reported_usd"
# Why a call is stored unpriced although it reported a cost (one in another currency: never summed
# as dollars, and no list price in dollars stands in for it).
UNPRICED_REASON = "nexus.cost.unpriced_reason"
MAX_CURRENCY_CHARS = 16  # of a currency quoted in UNPRICED_REASON; ISO 4217 codes have 3
# Stored text, in characters. The four summary dimensions (service, provider, model, operation)
# share one btree key, whose entry PostgreSQL refuses over 2,704 bytes: at 4 bytes a character
# at worst, 128 + 64 + 256 + 128 characters is 2,304 bytes. Names and messages longer than
# their bound are stored cut, ending in TRUNCATED_MARKER, always the same way for the same value
# (so idempotency keys and summary dimensions stay stable).
MAX_SERVICE_NAME = 128
MAX_PROVIDER = 64
MAX_MODEL = 256
MAX_OPERATION = 128  # nexus.operation and gen_ai.operation.name
MAX_ERROR_TYPE = 128
MAX_SERVER_ADDRESS = 256  # a DNS name is at most 253
MAX_SPAN_NAME = 1024
MAX_ERROR_MESSAGE = 1000
# A correlation id cut short would join the wrong content item (the content API takes ids of at
# most 200 characters): a longer one is not stored cut, its span is rejected.
MAX_CORRELATION_ID = 200
_TEXTS_AT_ONCE = min(
    MAX_MODEL,
    MAX_SERVICE_NAME,
    MAX_OPERATION,
    MAX_SPAN_NAME,
    MAX_CORRELATION_ID,
    MAX_SERVER_ADDRESS,
)
# Start times accepted: from the retention window's start (older calls would go at the next
# retention run, and each would create a partition of its own) to MAX_CLOCK_SKEW ahead of now (a
# sender's clock that is wrong by a time zone); never before EARLIEST_START. Partitions are
# therefore only ever created for months inside this window.
EARLIEST_START = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(hours=24)
_OPENINFERENCE_LLM_KINDS = frozenset({"LLM", "EMBEDDING"})
# Strings scrubbed before are looked up, never cut again: they must fit every text bound.
assert min(MAX_STRING, MAX_ERROR_MESSAGE, MAX_SPAN_NAME) >= CACHED_LENGTH

_PROVIDER_KEYS = (a.GEN_AI_PROVIDER_NAME, a.GEN_AI_SYSTEM, a.LLM_PROVIDER, a.LLM_SYSTEM)
# A span is an LLM call only if it carries one of these keys (see _provider): a span without
# any of them is not read further (and the decode workers skip it undecoded: not_calls).
CALL_KEYS = (*_PROVIDER_KEYS, a.OPENINFERENCE_SPAN_KIND)
_TTFC_KEYS = (
    a.NEXUS_TIME_TO_FIRST_CHUNK,
    "gen_ai.response.time_to_first_chunk",
    "gen_ai.server.time_to_first_token",
)
_MAPPED = frozenset(
    (
        *TOKEN_KEYS,
        *_PROVIDER_KEYS,
        *_TTFC_KEYS,
        *a.COST_ATTRIBUTES,
        a.GEN_AI_USAGE_COST_CURRENCY,
        a.GEN_AI_USAGE_COST_SOURCE,
        a.GEN_AI_REQUEST_MODEL,
        a.GEN_AI_RESPONSE_MODEL,
        a.LLM_MODEL_NAME,
        a.EMBEDDING_MODEL_NAME,
        a.GEN_AI_OPERATION_NAME,
        a.NEXUS_OPERATION,
        a.NEXUS_CORRELATION_ID,
        a.NEXUS_USAGE_SOURCE,
        a.NEXUS_USAGE_CACHE_WRITE_1H_INPUT_TOKENS,
        a.OPENAI_RESPONSE_SERVICE_TIER,
        a.SERVER_ADDRESS,
        a.ERROR_TYPE,
    )
)
_ABSENT = object()


class InvalidSpan(ValueError):
    """An LLM span whose data cannot be stored; the message names the span and the value."""


def to_llm_call(span: RawSpan, *, store_content: bool = False) -> LLMCall | None:
    """The call a span describes, or None when it describes no LLM call."""
    attrs = span.attributes
    provider = _provider(attrs)
    if provider is None or not _is_model_call(attrs, span.name):
        return None
    request_model = _str(attrs.get(a.GEN_AI_REQUEST_MODEL))
    response_model = _str(attrs.get(a.GEN_AI_RESPONSE_MODEL))
    model = (
        request_model
        or response_model
        or _str(attrs.get(a.LLM_MODEL_NAME))
        or _str(attrs.get(a.EMBEDDING_MODEL_NAME))
    )
    if model is None and not any(k in attrs for k in TOKEN_KEYS):
        return None
    _check_ids(span)
    input_tokens, output_tokens, cache_read, cache_write, reasoning, total = _tokens(span)
    if total > MAX_TOKENS_PER_CALL:
        raise InvalidSpan(
            f"span {span.span_id} ({_short(span.name)}): {total:,} tokens in all is beyond the"
            f" {MAX_TOKENS_PER_CALL:,} a call can use"
        )
    duration_ns = span.end_time_unix_nano - span.start_time_unix_nano
    if not 0 <= duration_ns <= MAX_CALL_DURATION_NS:
        _duration_out_of_range(span, duration_ns)
    error_type, error_message = _error(span)
    reported_cost, cost_key = _reported_cost(attrs)
    # By position, in LLMCall's order (a test checks each field's source): by keyword, its 27
    # fields cost 2 us more, a sixth of this function.
    call = LLMCall(
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        _timestamp(span.start_time_unix_nano),
        _scrubbed(_str(span.resource_attributes.get(a.SERVICE_NAME))) or "unknown_service",
        _seen(provider) or scrub_text(provider),
        _seen(model) or _scrubbed(model) or "unknown",  # type: ignore[arg-type]
        _seen(response_model) or _scrubbed(response_model),  # type: ignore[arg-type]
        scrub_text(_gen_ai_operation(attrs)),  # gen_ai_operation
        _scrubbed(_tag(span, a.NEXUS_OPERATION)) or "",  # operation
        _scrubbed(_tag(span, a.NEXUS_CORRELATION_ID)),  # correlation_id
        input_tokens,
        output_tokens,
        cache_read,
        cache_write,
        reasoning,
        total,
        duration_ns / 1e6,  # duration_ms
        error_type is None,  # success
        error_type,
        error_message,
        _usage_source(attrs),
        _scrubbed(_str(attrs.get(a.SERVER_ADDRESS))),  # server_address
        _seen(span.name) or _scrubbed_cut(span.name, MAX_SPAN_NAME),  # span_name
        _ttfc_ms(attrs),  # time_to_first_chunk_ms
        reported_cost,  # reported_cost_usd
        kept_attributes(attrs, store_content, _MAPPED),  # attributes
    )
    # 1-hour cache writes (Anthropic), within the cache writes: a larger count is cut to them.
    if write_1h := attrs.get(a.NEXUS_USAGE_CACHE_WRITE_1H_INPUT_TOKENS):
        key = a.NEXUS_USAGE_CACHE_WRITE_1H_INPUT_TOKENS
        call.cache_write_1h_tokens = min(_token_value(span, key, write_1h), cache_write)
    # The tier that served it (OpenAI): a name, else none (and not kept).
    tier = attrs.get(a.OPENAI_RESPONSE_SERVICE_TIER)
    if tier.__class__ is str and 0 < len(tier) <= MAX_SERVICE_TIER:  # type: ignore[arg-type]
        call.service_tier = _scrubbed(tier)  # type: ignore[arg-type]
    call.reported_cost_key = cost_key or None
    if not input_tokens and total and call.gen_ai_operation == EMBEDDINGS and not output_tokens:
        call.input_tokens = total  # an embeddings call has no output: its total is its input
    if reported_cost is not None:
        _judge_reported_cost(call, attrs, reported_cost, cost_key)
    # The common case (every text short) costs a few len() calls: one sum for the names every
    # call has, within each of their bounds (_TEXTS_AT_ONCE), then the optional ones.
    if (
        len(call.model)
        + len(call.service_name)
        + len(call.operation)
        + len(call.gen_ai_operation)
        + len(call.span_name)
        > _TEXTS_AT_ONCE
        or len(call.provider) > MAX_PROVIDER
        or (call.correlation_id is not None and len(call.correlation_id) > _TEXTS_AT_ONCE)
        or (call.server_address is not None and len(call.server_address) > _TEXTS_AT_ONCE)
        or (call.response_model is not None and len(call.response_model) > _TEXTS_AT_ONCE)
        or error_type is not None
        or (call.parent_span_id is not None and len(call.parent_span_id) != 16)
    ):
        _bound_texts(call, span.name)
    return call


def _short(text: str, limit: int = 120) -> str:
    """A value quoted in a rejection message, cut: the message must stay small."""
    return text if len(text) <= limit else text[:limit] + TRUNCATED_MARKER


def _duration_out_of_range(span: RawSpan, duration_ns: int) -> None:
    where = f"span {span.span_id} ({_short(span.name)})"
    if duration_ns < 0:
        raise InvalidSpan(f"{where}: end time {span.end_time_unix_nano} is before its start")
    hours = MAX_CALL_DURATION_NS // (3600 * 10**9)
    raise InvalidSpan(
        f"{where}: end time {span.end_time_unix_nano} is more than {hours} h after its start"
    )


def truncated(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last of them TRUNCATED_MARKER; the same every time."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER


def _bound_texts(call: LLMCall, name: str) -> None:
    """Cuts names and messages to their bounds; rejects what a cut would make untrue."""
    if call.parent_span_id is not None and len(call.parent_span_id) != 16:
        raise InvalidSpan(
            f"span {call.span_id} ({_short(name)}): invalid parent span id"
            f" {_short(call.parent_span_id)!r}"
        )
    if call.correlation_id is not None and len(call.correlation_id) > MAX_CORRELATION_ID:
        raise InvalidSpan(
            f"span {call.span_id} ({_short(name)}): {a.NEXUS_CORRELATION_ID} of"
            f" {len(call.correlation_id):,} characters is longer than {MAX_CORRELATION_ID}"
        )
    call.model = truncated(call.model, MAX_MODEL)
    call.service_name = truncated(call.service_name, MAX_SERVICE_NAME)
    call.provider = truncated(call.provider, MAX_PROVIDER)
    call.operation = truncated(call.operation, MAX_OPERATION)
    call.gen_ai_operation = truncated(call.gen_ai_operation, MAX_OPERATION)
    call.span_name = truncated(call.span_name, MAX_SPAN_NAME)
    if call.response_model is not None:
        call.response_model = truncated(call.response_model, MAX_MODEL)
    if call.server_address is not None:
        call.server_address = truncated(call.server_address, MAX_SERVER_ADDRESS)
    if call.error_type is not None:
        call.error_type = truncated(call.error_type, MAX_ERROR_TYPE)
    if call.error_message is not None:
        call.error_message = truncated(call.error_message, MAX_ERROR_MESSAGE)


def accepted_start_times(now: datetime, retention_days: int | None) -> tuple[datetime, datetime]:
    """The window of start times a call may have (both ends included)."""
    earliest = EARLIEST_START
    if retention_days:
        earliest = max(earliest, now - timedelta(days=retention_days))
    return earliest, now + MAX_CLOCK_SKEW


def _provider(attrs: dict[str, AttributeValue]) -> str | None:
    for key in _PROVIDER_KEYS:
        value = _str(attrs.get(key))
        if value:
            return normalize_provider(value)
    kind = _str(attrs.get(a.OPENINFERENCE_SPAN_KIND))  # upper case by spec; any case read
    if kind is not None and kind.upper() in _OPENINFERENCE_LLM_KINDS:
        host = _str(attrs.get(a.SERVER_ADDRESS)) or ""
        return provider_from_host(host) or "unknown"
    return None


def _is_model_call(attrs: dict[str, AttributeValue], name: str) -> bool:
    operation = _str(attrs.get(a.GEN_AI_OPERATION_NAME))
    if operation in NOT_MODEL_CALLS or (operation is None and name in NOT_MODEL_CALL_SPANS):
        return False
    traceloop_kind = attrs.get(a.TRACELOOP_SPAN_KIND)  # absent on most spans: one lookup
    if traceloop_kind is not None and (_str(traceloop_kind) or "").lower() in NOT_MODEL_CALL_KINDS:
        return False
    kind = _str(attrs.get(a.OPENINFERENCE_SPAN_KIND))
    return kind is None or kind.upper() in _OPENINFERENCE_LLM_KINDS


def _check_ids(span: RawSpan) -> None:
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) == 32 and len(span_id) == 16 and trace_id.strip("0") and span_id.strip("0"):
        return
    for name, value, length in (("trace id", trace_id, 32), ("span id", span_id, 16)):
        if len(value) != length or value.strip("0") == "":
            raise InvalidSpan(
                f"span {_short(span_id) or '?'} ({_short(span.name)}): invalid {name}"
                f" {_short(value)!r}"
            )


def _count(span: RawSpan, keys: tuple[str, ...]) -> int:
    attrs = span.attributes
    for key in keys:
        value = attrs.get(key, _ABSENT)
        if value is not _ABSENT:
            if value.__class__ is int and 0 <= value <= MAX_TOKENS_PER_CALL:  # type: ignore[operator]
                return value  # type: ignore[return-value]
            return _token_value(span, key, value)  # type: ignore[arg-type]
    return 0


def _token_value(span: RawSpan, key: str, value: AttributeValue) -> int:
    if value.__class__ is int and 0 <= value <= MAX_TOKENS_PER_CALL:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            number = None
    valid = (
        isinstance(number, int | float)
        and not isinstance(number, bool)
        and math.isfinite(number)
        and number == int(number)
        and 0 <= number <= MAX_TOKENS_PER_CALL
    )
    if not valid:
        raise InvalidSpan(
            f"span {span.span_id} ({_short(span.name)}): {key} = {_short(repr(value))} is not"
            f" a token count (0 to {MAX_TOKENS_PER_CALL:,})"
        )
    return int(number)


def _tokens(span: RawSpan) -> tuple[int, int, int, int, int, int]:
    """Input, output, cache read, cache write, reasoning and total tokens."""
    if OTHER_SPELLINGS.isdisjoint(span.attributes):
        # The current conventions' names only (most spans): one lookup per count.
        attrs, counts = span.attributes, []
        for key in CURRENT_SPELLINGS:
            value = attrs.get(key, 0)
            if value.__class__ is not int or not 0 <= value <= MAX_TOKENS_PER_CALL:  # type: ignore[operator]
                value = _token_value(span, key, value)
            counts.append(value)
        return _inclusive(*counts)  # type: ignore[arg-type]
    cache_read = _count(span, CACHE_READ)
    cache_write = _count(span, CACHE_WRITE)
    reasoning = _count(span, REASONING)
    input_tokens = _count(span, INPUT)
    output_tokens = _count(span, OUTPUT)
    return _inclusive(
        cache_read, cache_write, reasoning, input_tokens, output_tokens, _count(span, TOTAL)
    )


def _inclusive(
    cache_read: int,
    cache_write: int,
    reasoning: int,
    input_tokens: int,
    output_tokens: int,
    total: int,
) -> tuple[int, int, int, int, int, int]:
    # Some instrumentations report input exclusive of cache (Anthropic's raw numbers) or output
    # exclusive of reasoning (Gemini's candidates): make both inclusive, as the conventions say.
    if input_tokens < cache_read + cache_write:
        input_tokens += cache_read + cache_write
    if output_tokens < reasoning:
        output_tokens += reasoning
    total = max(total, input_tokens + output_tokens)
    return input_tokens, output_tokens, cache_read, cache_write, reasoning, total


def _timestamp(unix_nano: int) -> datetime:
    # Microseconds, truncated: the same span must always give the same key.
    return _EPOCH + timedelta(0, 0, unix_nano // 1000)  # positional: faster than a keyword


def _gen_ai_operation(attrs: dict[str, AttributeValue]) -> str:
    name = _str(attrs.get(a.GEN_AI_OPERATION_NAME))
    if name:
        return name
    request_type = _str(attrs.get("llm.request.type"))
    if request_type is None:
        kind = attrs.get(a.OPENINFERENCE_SPAN_KIND)
        if kind is not None and kind != "LLM" and (_str(kind) or "").upper() == "EMBEDDING":
            return EMBEDDINGS
    return {"completion": "text_completion", "embedding": "embeddings"}.get(
        request_type or "", request_type or "chat"
    )


def _tag(span: RawSpan, key: str) -> str | None:
    value = span.attributes.get(key)
    if value.__class__ is str and value:  # the common case: a plain, non-blank name
        stripped: str = value.strip()  # type: ignore[union-attr]
        if stripped:
            return stripped
    return _str(value) or _str(span.resource_attributes.get(key))


def _error(span: RawSpan) -> tuple[str | None, str | None]:
    """The error's code (a metric label, so never free text) and its message, scrubbed."""
    error_type = _str(span.attributes.get(a.ERROR_TYPE))
    if span.status_code == 2 and not error_type:
        error_type = _str(span.exception_type) or "_OTHER"
    if error_type is None:
        return None, None
    message = span.status_message or span.exception_message
    if not ERROR_CODE.fullmatch(error_type) or scrub_text(error_type) != error_type:
        # Free text (a message, a URL, a credential) is no code: it is told as the message.
        message = message or error_type
        error_type = OTHER_ERROR
    return error_type, _scrubbed_cut(message, MAX_ERROR_MESSAGE) if message else None


def _usage_source(attrs: dict[str, AttributeValue]) -> str:
    source = _str(attrs.get(a.NEXUS_USAGE_SOURCE))
    return source if source in a.USAGE_SOURCES else "response"


def _ttfc_ms(attrs: dict[str, AttributeValue]) -> float | None:
    for key in _TTFC_KEYS:
        value = attrs.get(key)
        if value is None:  # most spans carry none: the isinstance tests cost more
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            # Seconds; past the longest call it is bad data, and an optional measure: left out.
            return max(0.0, float(value) * 1000) if value <= _MAX_TTFC_SECONDS else None
    return None


def _reported_cost(attrs: dict[str, AttributeValue]) -> tuple[Decimal | None, str]:
    """The cost the span reports, and the attribute it is in."""
    for key in a.COST_ATTRIBUTES:
        value = attrs.get(key)
        if value is None or isinstance(value, bool | list):
            continue
        try:
            cost = Decimal(str(value))
        except InvalidOperation:
            continue
        if cost.is_finite() and cost >= 0:
            return cost, key
    return None, ""


def _judge_reported_cost(
    call: LLMCall, attrs: dict[str, AttributeValue], cost: Decimal, key: str
) -> None:
    """What a reported cost counts for: a cost in another currency leaves the call unpriced; a
    cost past the bound is ignored; the provider's own charge is preferred to a price table."""
    currency = _str(attrs.get(a.GEN_AI_USAGE_COST_CURRENCY)) if key != a.NEXUS_COST_USD else None
    if currency is not None and currency.upper() != "USD":
        currency = _short(scrub_text(currency), MAX_CURRENCY_CHARS)
        call.reported_cost_usd = None
        call.unpriced_reason = (
            f"cost reported in {currency}, not US dollars: {key} = {cost} {currency}"
        )
        call.attributes[UNPRICED_REASON] = call.unpriced_reason
    elif cost > MAX_REPORTED_COST_USD:
        call.reported_cost_usd = None
        call.attributes[IGNORED_REPORTED_COST] = str(cost)
    elif _str(attrs.get(a.GEN_AI_USAGE_COST_SOURCE)) == "provider":
        call.cost_reported_by_provider = True


def _scrubbed_cut(text: str, limit: int) -> str:
    """Stored text without credentials; past `limit`, cut to it with TRUNCATED_MARKER (which a
    cut made while scrubbing would leave out, the text then looking whole)."""
    if len(text) <= limit:
        return _seen(text) or scrub_text(text)
    return scrub_text(text, limit)[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER


def _str(value: AttributeValue) -> str | None:
    if value.__class__ is str:  # the common case, first: called a dozen times per span
        return value.strip() or None  # type: ignore[union-attr]
    if value is None or isinstance(value, list):
        return None
    text = str(value).strip()
    return text or None
