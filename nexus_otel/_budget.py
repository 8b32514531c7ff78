"""The budget guard: before an LLM request leaves the app, its worst-case cost is reserved
against the budgets whose scope matches the call (service, provider, model, operation).

Reserving on the server for every call would add a network round trip to each. Instead the app
leases an allowance per scope from the API (`POST /api/budget/leases`, atomic in PostgreSQL
across every process and thread), spends it locally call by call, and refills it when short:
one round trip per LEASE_CALLS calls in steady state. Each call's span carries its lease and the
estimate it took (`nexus.budget.lease_id`, `nexus.budget.reserved_usd`); when the exporter
stores the call, that estimate leaves the lease and the exact cost enters the spend, in one
transaction. What a lease still holds is given back when it is refilled, at shutdown and at exit;
a killed app's leases stop counting when they expire.

The worst case: input tokens from the request body (the offline tokenizer, or characters /
CHARS_PER_TOKEN_BOUND when that is more), plus the format's per-message overhead (both in
`nexus_otel._worst_case`); output tokens bounded by the request's max_tokens
(max_output_tokens, max_completion_tokens, maxOutputTokens), else DEFAULT_MAX_OUTPUT_TOKENS;
priced at list price as the exporter prices. A model of unknown price is not guarded (its calls
are stored unpriced and count in no budget's spend).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from nexus_otel._budget_api import ApiUnreachable, BudgetApi, Lease, Refusal
from nexus_otel._estimate import price
from nexus_otel._internal import log
from nexus_otel._llm_providers import normalize_provider
from nexus_otel._usage import TokenUsage
from nexus_otel._worst_case import worst_case_tokens
from nexus_otel.attributes import BUDGET_EXCEEDED_ERROR

GUARD_MODES = ("off", "warn", "block")
FAIL_POLICIES = ("open", "closed")
# A refill asks for this many recent calls' worth: one API round trip per ~LEASE_CALLS calls
# (under 1 per 50) while a budget is far from its limit.
LEASE_CALLS = 64
# Leases the app takes count this long on the server (NEXUS_OTEL_BUDGET_LEASE_SECONDS): a killed
# app's allowance is free again after it.
DEFAULT_LEASE_SECONDS = 120
# The app draws on a lease for this share of its life only, then refills: the calls it paid
# for then have the rest (90 s by default) to end and be stored while it still counts.
LEASE_USE_SHARE = 0.25
# Output tokens assumed when a request sets no output limit (NEXUS_OTEL_BUDGET_MAX_OUTPUT_TOKENS).
# Not an upper bound for a model that writes more: set max_tokens on guarded calls.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Worst-case input is rounded up to this many significant bits (at most 1/16 more), so that
# pricing it (some 70 µs with genai-prices) is cached for similar prompts.
ROUNDED_BITS = 5
PRICE_CACHE_SIZE = 4096  # (provider, model, tokens, hour) prices kept: a few hundred kB at most
_CENT_FRACTIONS = Decimal("1e-12")  # amounts go to the API with at most 12 decimal places
# The allowance counts in those units (whole pico-dollars): taking from it is integer
# arithmetic, which costs a fraction of Decimal's.
_UNITS_PER_USD = 10**12
# The typical estimate (a refill's size) moves this fraction of the way to each call's: 1/5.
_RECENT_SHARE = 5

LEASE_ID_ATTRIBUTE = "nexus.budget.lease_id"
RESERVED_ATTRIBUTE = "nexus.budget.reserved_usd"
BLOCKED_ATTRIBUTE = "nexus.budget.blocked"  # the budget that refused (block)
EXCEEDED_ATTRIBUTE = "nexus.budget.exceeded"  # the budget that would have refused (warn)
UNCHECKED_ATTRIBUTE = "nexus.budget.unchecked"  # the API could not be asked (fail open)


class BudgetExceeded(Exception):
    """A budget has too little left for this call: raised before any byte went to the provider.
    `budget` is None when the API could not be asked and the guard fails closed."""

    # The call's span and row say `error.type` budget_exceeded, with no tokens and no cost.
    budget_error_type = BUDGET_EXCEEDED_ERROR

    def __init__(
        self,
        budget: str | None,
        spend_usd: Decimal | None,
        reserved_usd: Decimal | None,
        limit_usd: Decimal | None,
        estimate_usd: Decimal,
        reason: str = "",
    ) -> None:
        self.budget, self.spend_usd, self.reserved_usd = budget, spend_usd, reserved_usd
        self.limit_usd, self.estimate_usd = limit_usd, estimate_usd
        if budget is None:
            message = f"budget not checked ({reason}); the guard fails closed"
        else:
            message = (
                f"budget {budget!r}: spend ${spend_usd} + reserved ${reserved_usd} leaves less"
                f" than this call's worst case ${estimate_usd} of ${limit_usd}"
            )
        super().__init__(message)


@dataclass
class _Allowance:
    """What the app holds of one scope's lease, and how big its calls have been."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    lease_id: str | None = None
    left: int = 0  # pico-dollars (_UNITS_PER_USD)
    use_until: float = 0.0  # monotonic
    recent: int = 0  # typical estimate, pico-dollars


@dataclass(frozen=True, slots=True)
class Estimate:
    """A call's worst-case cost: in pico-dollars for the allowance, and as its span says it."""

    units: int
    text: str  # the Decimal's string, 12 decimal places

    @property
    def usd(self) -> Decimal:
        return Decimal(self.text)


def _note(allowance: _Allowance, estimate: int) -> None:
    """Moves the scope's typical estimate (what sizes its refills) towards this one."""
    if allowance.recent:
        allowance.recent += (estimate - allowance.recent) // _RECENT_SHARE
    else:  # the scope's first call
        allowance.recent = estimate


def _usd(units: int) -> Decimal:
    return Decimal(units).scaleb(-12)


class Guard:
    def __init__(
        self,
        mode: str,
        api: BudgetApi,
        service_name: str,
        fail_closed: bool = False,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    ) -> None:
        self.mode, self.api, self.service_name = mode, api, service_name
        self.fail_closed = fail_closed
        self.lease_seconds, self.max_output_tokens = lease_seconds, max_output_tokens
        self._allowances: dict[tuple[str, str, str, str], _Allowance] = {}
        self._unreachable_logged = False
        atexit.register(self.close)

    def reserve(
        self, scope: tuple[str, str, str, str], estimate: Estimate, typical: bool = True
    ) -> dict[str, Any]:
        """Takes `estimate` from the scope's allowance (refilling it when short): the span
        attributes that say so. Raises BudgetExceeded in block mode when a budget refuses.
        `typical`: the estimate sizes the scope's refills (not a quick bound that the exact
        count will lower: `give_back` notes that one)."""
        allowance = self._allowances.get(scope) or self._allowance(scope)
        units = estimate.units
        with allowance.lock:
            if typical:
                _note(allowance, units)
            if allowance.left >= units and time.monotonic() < allowance.use_until:
                allowance.left -= units  # the common case, inline: no call, integers only
                return {LEASE_ID_ATTRIBUTE: allowance.lease_id, RESERVED_ATTRIBUTE: estimate.text}
            return self._refill(scope, allowance, estimate)

    def sized(self, scope: tuple[str, str, str, str]) -> bool:
        """Whether the scope has a typical estimate yet (its first call's sets its lease)."""
        allowance = self._allowances.get(scope)
        return allowance is not None and allowance.recent > 0

    def give_back(
        self, scope: tuple[str, str, str, str], lease_id: str, taken: Estimate, exact: Estimate
    ) -> bool:
        """Returns to the allowance what a call took beyond its exact estimate, while the
        allowance still holds the lease it took it from (else the lease's settlement frees it);
        True when it did. The exact estimate sizes the refills."""
        allowance = self._allowance(scope)
        with allowance.lock:
            _note(allowance, exact.units)
            if allowance.lease_id != lease_id:
                return False
            allowance.left += taken.units - exact.units
            return True

    def reserve_at_once(
        self, scope: tuple[str, str, str, str], estimate: Estimate, typical: bool = True
    ) -> dict[str, Any] | None:
        """`reserve` when the allowance has enough and no other call holds it; else None (the
        caller then reserves in a thread: a refill, or a wait for one, would block)."""
        allowance = self._allowance(scope)
        if not allowance.lock.acquire(blocking=False):
            return None
        try:
            taken = self._take(allowance, estimate)
            if taken is not None and typical:  # else `reserve` notes it (or `give_back`)
                _note(allowance, estimate.units)
            return taken
        finally:
            allowance.lock.release()

    def _allowance(self, scope: tuple[str, str, str, str]) -> _Allowance:
        allowance = self._allowances.get(scope)
        if allowance is None:
            allowance = self._allowances.setdefault(scope, _Allowance())
        return allowance

    @staticmethod
    def _take(allowance: _Allowance, estimate: Estimate) -> dict[str, Any] | None:
        """Takes `estimate` from the allowance when it holds enough (the lock held); None when
        it needs a refill."""
        if allowance.left >= estimate.units and time.monotonic() < allowance.use_until:
            allowance.left -= estimate.units
            return {LEASE_ID_ATTRIBUTE: allowance.lease_id, RESERVED_ATTRIBUTE: estimate.text}
        return None

    def _refill(
        self, scope: tuple[str, str, str, str], allowance: _Allowance, estimate: Estimate
    ) -> dict[str, Any]:
        returning = None
        if allowance.lease_id is not None:
            returning = (allowance.lease_id, _usd(allowance.left))
        wanted = _usd(max(estimate.units, allowance.recent * LEASE_CALLS))
        try:
            answer = self.api.lease(scope, wanted, estimate.usd, self.lease_seconds, returning)
        except ApiUnreachable as exc:
            return self._unreachable(exc, estimate)
        allowance.lease_id, allowance.left = None, 0
        if isinstance(answer, Refusal):
            return self._refused(answer, estimate)
        assert isinstance(answer, Lease)
        granted = int((answer.granted_usd * _UNITS_PER_USD).to_integral_value(ROUND_FLOOR))
        allowance.lease_id, allowance.left = answer.lease_id, granted - estimate.units
        allowance.use_until = time.monotonic() + self.lease_seconds * LEASE_USE_SHARE
        return {LEASE_ID_ATTRIBUTE: answer.lease_id, RESERVED_ATTRIBUTE: estimate.text}

    def _refused(self, refusal: Refusal, estimate: Estimate) -> dict[str, Any]:
        if self.mode == "block":
            raise BudgetExceeded(
                refusal.budget,
                refusal.spend_usd,
                refusal.reserved_usd,
                refusal.limit_usd,
                estimate.usd,
            )
        log.warning(
            "nexus_otel: budget %r has too little left for a call (worst case $%s); "
            "sent anyway (budget_guard=warn)",
            refusal.budget,
            estimate.text,
        )
        return {EXCEEDED_ATTRIBUTE: refusal.budget}

    def _unreachable(self, error: ApiUnreachable, estimate: Estimate) -> dict[str, Any]:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            policy = "refusing calls" if self.fail_closed else "letting calls through"
            log.warning("nexus_otel: budget API unreachable (%s); %s", error, policy)
        if self.fail_closed:
            raise BudgetExceeded(None, None, None, None, estimate.usd, str(error))
        return {UNCHECKED_ATTRIBUTE: True}

    def close(self) -> None:
        """Gives back what every allowance still holds (at shutdown and at exit)."""
        atexit.unregister(self.close)
        for allowance in list(self._allowances.values()):
            with allowance.lock:
                lease_id, left = allowance.lease_id, allowance.left
                allowance.lease_id, allowance.left = None, 0
            if lease_id is not None and left > 0:
                try:
                    self.api.give_back(lease_id, _usd(left))
                except ApiUnreachable as exc:  # it expires in time
                    log.warning("nexus_otel: could not give back a budget lease: %s", exc)


def rounded_up(tokens: int) -> int:
    """`tokens` rounded up to ROUNDED_BITS significant bits (at most 1/16 more): estimates of
    similar prompts then share one price in the cache, and stay upper bounds."""
    step = 1 << max(0, tokens.bit_length() - ROUNDED_BITS)
    return -(-tokens // step) * step


@functools.lru_cache(maxsize=PRICE_CACHE_SIZE)
def _worst_case_cost(
    provider: str, model: str, input_tokens: int, output_tokens: int, hour: int
) -> Estimate | None:
    """The list price of that usage in that UTC hour (prices change by day, or by hour for
    off-peak prices), cut up to 12 decimal places; None when the model is unpriced."""
    at = datetime.fromtimestamp(hour * 3600, UTC)
    cost = price(TokenUsage(input_tokens, output_tokens), model, provider, at)
    if cost is None:
        return None
    cost = cost.quantize(_CENT_FRACTIONS, ROUND_CEILING)
    return Estimate(int(cost.scaleb(12)), str(cost))


def guard_from_settings(
    mode: str | None,
    fail: str | None,
    api_url: str | None,
    api_token: str | None,
    service_name: str,
) -> Guard | None:
    """The guard `instrument()` asked for (or NEXUS_OTEL_BUDGET_* says); None when off."""
    mode = (mode or os.environ.get("NEXUS_OTEL_BUDGET_GUARD", "") or "off").strip().lower()
    fail = (fail or os.environ.get("NEXUS_OTEL_BUDGET_FAIL", "") or "open").strip().lower()
    if mode not in GUARD_MODES:
        raise ValueError(f"budget_guard must be one of {', '.join(GUARD_MODES)}, not {mode!r}")
    if fail not in FAIL_POLICIES:
        raise ValueError(f"budget_fail must be one of {', '.join(FAIL_POLICIES)}, not {fail!r}")
    if mode == "off":
        return None
    return Guard(
        mode,
        BudgetApi(api_url, api_token),
        service_name,
        fail_closed=fail == "closed",
        lease_seconds=_positive_int("NEXUS_OTEL_BUDGET_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
        max_output_tokens=_positive_int(
            "NEXUS_OTEL_BUDGET_MAX_OUTPUT_TOKENS", DEFAULT_MAX_OUTPUT_TOKENS
        ),
    )


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


def admit(guard: Guard, call: Any) -> None:
    """Reserves the call's worst-case cost before its request is sent; its span (started once
    the request is sent, as without the guard) says so. Raises BudgetExceeded (block mode, or
    fail closed), the span then saying `blocked`.

    The reservation counts the prompt's new texts at their bytes, an upper bound of their
    tokens, so the tokenizer stays off the call's path: the exact count is taken while the
    request is in flight, and what the bound took beyond it goes back to the allowance. A
    budget that refuses the bound is asked again with the exact count before a call is
    refused or flagged, so a call is refused exactly as with the exact count alone."""
    wanted = _Wanted.of(guard, call)
    first = not guard.sized(wanted.scope)  # a scope's first call sizes its leases: exact
    quick, bounded = wanted.estimate(exact=first)
    if quick is None:  # unpriced: stored as such, counted in no spend
        return
    try:
        attributes = guard.reserve(wanted.scope, quick, typical=first)
        if bounded and EXCEEDED_ATTRIBUTE in attributes:  # warn mode: flagged on the bound
            attributes = _exactly(guard, wanted)
    except BudgetExceeded as exc:
        try:
            if not _ask_again(bounded, exc):
                raise
            attributes = _exactly(guard, wanted)
        except BudgetExceeded as refused:
            _decided(call, {BLOCKED_ATTRIBUTE: refused.budget or "unchecked"})
            raise
    _decided(call, attributes)
    if bounded:
        _count_in_flight(guard, call, wanted, quick, attributes)


async def admit_async(guard: Guard, call: Any) -> None:
    """`admit` for a call made in an event loop: a refill (an API round trip) or a wait for
    another call's refill runs in a thread, so the loop's other tasks go on meanwhile."""
    wanted = _Wanted.of(guard, call)
    first = not guard.sized(wanted.scope)
    quick, bounded = wanted.estimate(exact=first)
    if quick is None:
        return
    try:
        attributes = guard.reserve_at_once(wanted.scope, quick, typical=first)
        if attributes is None:
            attributes = await asyncio.to_thread(guard.reserve, wanted.scope, quick, first)
        if bounded and EXCEEDED_ATTRIBUTE in attributes:
            attributes = await asyncio.to_thread(_exactly, guard, wanted)
    except BudgetExceeded as exc:
        try:
            if not _ask_again(bounded, exc):
                raise
            attributes = await asyncio.to_thread(_exactly, guard, wanted)
        except BudgetExceeded as refused:
            _decided(call, {BLOCKED_ATTRIBUTE: refused.budget or "unchecked"})
            raise
    _decided(call, attributes)
    if bounded:
        _count_in_flight(guard, call, wanted, quick, attributes)


@dataclass(frozen=True, slots=True)
class _Wanted:
    """What a call's worst case is made of, read from its request once."""

    scope: tuple[str, str, str, str]
    provider: str
    model: str
    prompt: object
    messages: int
    output_tokens: int
    hour: int

    @classmethod
    def of(cls, guard: Guard, call: Any) -> _Wanted:
        request, target = call.read_request(), call.target
        model = request.model or "unknown"
        provider = normalize_provider(target.provider or "")
        operation = call.operation.name if call.operation is not None else ""
        return cls(
            (guard.service_name, provider, model, operation),
            provider,
            model,
            request.prompt,
            request.message_count,
            request.max_tokens or guard.max_output_tokens,
            int(time.time() // 3600),
        )

    def estimate(self, exact: bool) -> tuple[Estimate | None, bool]:
        """The worst-case cost (None when the model has no price), and whether a bytes bound
        made it more than the exact count may (see worst_case_tokens)."""
        tokens, bounded = worst_case_tokens(self.prompt, self.messages, exact)
        cost = _worst_case_cost(
            self.provider, self.model, rounded_up(tokens), self.output_tokens, self.hour
        )
        return cost, bounded


def _ask_again(bounded: bool, refused: BudgetExceeded) -> bool:
    """Whether a refused call is asked for again with its exact count: only when a bytes bound
    made its estimate, and a budget refused it (a guard that could not ask, the API
    unreachable and failing closed, does not ask twice)."""
    return bounded and refused.budget is not None


def _exactly(guard: Guard, wanted: _Wanted) -> dict[str, Any]:
    """`reserve` with the exact count, after a budget refused or flagged the bytes bound: it
    raises or flags only if that too is refused."""
    exact, _ = wanted.estimate(exact=True)
    assert exact is not None  # priced at the bound, priced exactly: the same model and hour
    return guard.reserve(wanted.scope, exact)


def _count_in_flight(
    guard: Guard, call: Any, wanted: _Wanted, taken: Estimate, attributes: dict[str, Any]
) -> None:
    """Has the call count its prompt exactly once its request is sent (call.prepare), and
    give back what the bound took beyond that. The span says what stays reserved."""
    lease_id = attributes.get(LEASE_ID_ATTRIBUTE)
    if lease_id is None or attributes.get(RESERVED_ATTRIBUTE) != taken.text:
        return  # nothing taken from an allowance, or taken exactly already

    def in_flight() -> None:
        exact, _ = wanted.estimate(exact=True)
        if exact is None or exact.units >= taken.units:
            return
        if guard.give_back(wanted.scope, lease_id, taken, exact):
            _decided(call, {**attributes, RESERVED_ATTRIBUTE: exact.text})

    call.budget_in_flight = in_flight


def _decided(call: Any, attributes: dict[str, Any]) -> None:
    call.budget_attributes = attributes
    if call.span is not None:  # started already (with HTTP spans kept, before the request)
        call.span.set_attributes(attributes)
