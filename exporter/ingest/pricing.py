"""What one LLM call costs, and where that price comes from.

Order: what the provider says it charged (a span's `gen_ai.usage.cost.amount` with
`gen_ai.usage.cost.source` = `provider`, such as OpenRouter's `usage.cost`: source `provider`),
then a matching user override (NEXUS_PRICES_FILE), then genai-prices for the response model (more
specific, e.g. a dated version) and then the request model, then any other cost the span reported
(source `span`). Otherwise the call is unpriced: `Price(None, None)`, never a fake $0. A price
from a table carries its `reference` (the row's `price_ref`): the genai-prices version and data,
or the overrides entry and its valid_from, built once per snapshot and per entry.

genai-prices costs are exactly `genai_prices.calc_price(...).total_price` for the same usage and
timestamp. The library spends 30-150 µs a call resolving and validating a price set, so each
price set is compiled once into the few terms our usage can touch (input, output, cache read,
cache write, per-request fees), checked against the library on probe usages (falling back to the
library's own arithmetic on any difference), and evaluated with the same Decimal operations.
1-hour cache writes (Anthropic) are genai-prices' `cache_write_1h_tokens`, within the cache
writes, priced at `cache_write_1h_mtok` where there is one (as the library splits counts).

Which price set prices a call (provider names to genai-prices ids, the response model before the
request model, unpriceable price sets and usage) is `nexus_otel._pricing`'s rule, the one the
app-side handle (`op.cost_usd`) prices by too: without overrides, the handle's cost and the
stored row's are the same. A call genai-prices cannot price falls through to a span-reported
cost.

Overrides: `exporter.ingest.price_overrides`.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices, TimeOfDateConstraint
from rich.table import Table

from exporter.ingest.price_overrides import TOKEN_PRICE_KEYS, Override, load_overrides, utc_day
from nexus_otel._llm_providers import PRICE_PROVIDER_IDS
from nexus_otel._pricing import find_model, library_usage, tier_prices, token_priced

# fmt: off
# price key → (slot in (input leaf, output, cache read, cache write leaf, one request, 1-hour
# cache write), unit size)
_SLOTS = {
    "input_mtok": (0, 1_000_000), "output_mtok": (1, 1_000_000), "cache_read_mtok": (2, 1_000_000),
    "cache_write_mtok": (3, 1_000_000), "requests_kcount": (4, 1_000),
    "cache_write_1h_mtok": (5, 1_000_000),
}
# (input, output, cache read, cache write, of which 1-hour writes)
_PROBES = (
    (0, 0, 0, 0, 0), (1_234, 567, 89, 10, 0), (10_000_001, 54_321, 1_000_000, 300_000, 0),
    (1_234, 567, 89, 10, 4), (10_000_001, 54_321, 1_000_000, 300_000, 300_000),
)
# fmt: on
_CACHE_MAX = 50_000  # entries per cache; span attributes are untrusted, so bound what they key
# api_calls.cost_usd is numeric(20, 12): PostgreSQL stores a cost rounded half away from zero to
# 12 places. A call's cost is rounded so before it is added to anything (the summaries, the
# metrics), or a summary would hold digits its rows do not (a reported 4.2000000000000004e-05).
COST_QUANTUM = Decimal("1e-12")
# No single call costs a million dollars (numeric(20, 12) holds less): such a cost is bad data.
MAX_CALL_COST_USD = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    """The result of pricing one call."""

    cost_usd: Decimal | None  # None = unpriced (never a fake 0)
    source: str | None  # "provider" | "override" | "genai-prices" | "span" | None
    # Where exactly a price table's price comes from (the row's price_ref): the genai-prices
    # version and data, or the overrides entry with its valid_from; None for a reported cost.
    # Not part of equality: two prices are equal when they cost the same by the same kind.
    reference: str | None = field(default=None, compare=False)


UNPRICED = Price(None, None)


@dataclass(frozen=True)
class ModelPriceInfo:
    """What a model costs, for people: per-million-token prices and where they come from."""

    model_id: str
    model_name: str | None
    provider: str | None
    source: str
    at: datetime
    input_mtok: Decimal | None
    output_mtok: Decimal | None
    cache_read_mtok: Decimal | None
    cache_write_mtok: Decimal | None
    tiers: tuple[tuple[str, int, Decimal], ...] = ()  # (price key, above N input tokens, price)

    @property
    def tiered(self) -> bool:
        """Whether the price depends on the size of the call (tiers on total input tokens)."""
        return bool(self.tiers)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One genai-prices price set, reduced to the terms token usage can touch."""

    model_price: ModelPrice
    terms: tuple[tuple[int, Decimal | TieredPrices, int], ...]
    subtract_read: bool
    subtract_write: bool
    priceable: bool = True
    use_library: bool = False
    split_1h: bool = False  # 1-hour cache writes have a price of their own
    # `terms` but the 1-hour write price: what a call without 1-hour writes loops over
    plain_terms: tuple[tuple[int, Decimal | TieredPrices, int], ...] = ()

    def cost(
        self, inp: int, out: int, cache_read: int, cache_write: int, write_1h: int = 0
    ) -> Decimal | None:
        if not self.priceable:
            return None
        if self.use_library:
            try:
                usage = library_usage(inp, out, cache_read, cache_write, write_1h)
                result = self.model_price.calc_price(usage)
            except ValueError:
                return None
            return result["total_price"]
        leaf = inp - (cache_read if self.subtract_read else 0)
        leaf -= cache_write if self.subtract_write else 0
        if write_1h and self.split_1h:  # priced apart: the other writes are the write leaf
            if not self.subtract_write:
                leaf -= write_1h  # the other writes are billed as input
            cache_write -= write_1h
        if leaf < 0:
            return None  # genai-prices raises: cache counts exceed the input
        counts = (leaf, out, cache_read, cache_write, 1, write_1h)
        total = Decimal(0)
        for slot, price, per in self.terms if write_1h else self.plain_terms:
            if not (count := counts[slot]):
                continue  # adds an exact zero
            if isinstance(price, TieredPrices):
                unit_price = price.base
                for tier in reversed(price.tiers):  # the library's cliff rule, on total input
                    if inp > tier.start:
                        unit_price = tier.price
                        break
            else:
                unit_price = price
            total += unit_price * count / per  # as the library: (price * count) / per
        return total


def _compile(model_price: ModelPrice) -> _Plan:
    items = [
        (k, v) for k, v in vars(model_price).items() if not k.startswith("_") and v is not None
    ]
    keys = {k for k, _ in items}
    terms = tuple((_SLOTS[k][0], v, _SLOTS[k][1]) for k, v in items if k in _SLOTS)
    plan = _Plan(
        model_price,
        terms,
        "cache_read_mtok" in keys,
        "cache_write_mtok" in keys,
        split_1h="cache_write_1h_mtok" in keys,
        plain_terms=tuple(t for t in terms if t[0] != _SLOTS["cache_write_1h_mtok"][0]),
    )
    if not token_priced(model_price):  # priced per audio hour, page or character
        return _Plan(model_price, (), False, False, priceable=False)
    try:
        for probe in _PROBES:
            if plan.cost(*probe) != model_price.calc_price(library_usage(*probe))["total_price"]:
                return _Plan(model_price, (), False, False, use_library=True)
    except ValueError:  # the library rejects this price set: it prices nothing with it
        return _Plan(model_price, (), False, False, priceable=False)
    return plan


def _put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def stored_cost(cost: Decimal) -> Decimal:
    """`cost` as api_calls stores it, rounded to COST_QUANTUM; a cost of MAX_CALL_COST_USD or
    more (refused, never stored) as it is: rounding it could pass Decimal's precision."""
    if cost >= MAX_CALL_COST_USD:
        return cost
    return cost.quantize(COST_QUANTUM, ROUND_HALF_UP)


class PriceBook:
    """Prices calls. Build one per process; it caches lookups and compiled price sets."""

    def __init__(
        self, overrides_path: Path | None = None, overrides_text: str | None = None
    ) -> None:
        """`overrides_text`: the file's text as read before (see WatchedOverrides); without it,
        the file is read now."""
        self.overrides_path = overrides_path
        self.overrides = load_overrides(overrides_path, overrides_text) if overrides_path else ()
        # Each entry's reference, built once: pricing a call only picks one up.
        self._entry_references = tuple(self._entry_reference(e) for e in self.overrides)
        self._library_ref = ""  # set with the snapshot, by _check_snapshot
        self._override_hits: dict[tuple[str, str, str | None], tuple[Override, ...]] = {}
        self._snapshot: data_snapshot.DataSnapshot | None = None
        self._models: dict[tuple[str, str], tuple[Provider, ModelInfo, bool] | None] = {}
        self._day_plans: dict[tuple[int, date, str | None], _Plan] = {}
        self._plans: dict[int, _Plan] = {}

    def price(
        self,
        *,
        provider: str,
        model: str,
        response_model: str | None,
        timestamp: datetime,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        cache_write_1h_tokens: int = 0,
        reported_cost_usd: Decimal | None = None,
        reported_by_provider: bool = False,
        total_tokens: int = 0,
        service_tier: str | None = None,
    ) -> Price:
        """`reported_by_provider`: `reported_cost_usd` is what the provider charged, which no
        price table knows better. `cache_write_1h_tokens`: of the cache writes, those to a
        1-hour cache. `total_tokens` with no input or output count (a span telling only its
        total): no price table prices it, as a fake $0; only a reported cost does.
        `service_tier`: the tier that served the call (overrides price every tier alike)."""
        reported = reported_cost_usd
        valid_reported = reported is not None and reported.is_finite() and reported >= 0
        if reported_by_provider and valid_reported:
            return Price(reported, "provider")
        write_1h = cache_write_1h_tokens
        usage = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, write_1h)
        # Which usage and models price a call: nexus_otel._pricing.list_price's rule, written
        # out here because it runs for every span.
        if (
            min(usage) >= 0
            and cache_read_tokens + cache_write_tokens <= input_tokens
            and (input_tokens or output_tokens or not total_tokens)
            and (not write_1h or write_1h <= cache_write_tokens)
        ):
            if self.overrides:
                entry = self._override(provider, model, response_model, utc_day(timestamp))
                if entry is not None:
                    reference = self._entry_references[entry.index]
                    return Price(entry.cost(*usage), "override", reference)
            self._check_snapshot()
            refs = (model,) if response_model in (None, model) else (response_model, model)
            for ref in refs:
                if ref and (found := self._lookup(provider, ref)) is not None:
                    plan = self._plan_at(found[1], found[2], timestamp, service_tier)
                    cost = plan.cost(*usage)
                    if cost is not None:
                        return Price(cost, "genai-prices", self._library_ref)
        if valid_reported:
            return Price(reported, "span")
        return UNPRICED

    def unknown_provider(self, provider: str) -> str | None:
        """Why `provider` names no provider prices come from (a semconv name, a genai-prices
        provider or one of its spellings, an override's provider), or None when it does one."""
        name = provider.lower()
        if name in PRICE_PROVIDER_IDS or any(
            e.provider is not None and fnmatch.fnmatchcase(name, e.provider) for e in self.overrides
        ):
            return None
        snapshot = self._check_snapshot()
        try:
            snapshot.find_provider(None, name, None)
        except LookupError:
            known = sorted({*PRICE_PROVIDER_IDS, *(p.id for p in snapshot.providers)})
            return f"unknown provider {provider!r}; known providers: {', '.join(known)}"
        return None

    def describe(
        self, model: str, provider: str | None = None, at: datetime | None = None
    ) -> ModelPriceInfo:
        at = at or datetime.now(UTC)
        for entry in self.overrides:
            if entry.valid_from is not None and entry.valid_from > utc_day(at):
                continue
            if entry.matches(provider.lower() if provider else None, (model.lower(),)):
                source = f"override: {self.overrides_path} (models[{entry.index}])"
                costs = (entry.input, entry.output, entry.cache_read, entry.cache_write)
                return ModelPriceInfo(model, None, provider or entry.provider, source, at, *costs)
        self._check_snapshot()
        found = self._lookup(provider, model) if provider else self._lookup_anywhere(model)
        if found is None:
            raise LookupError(self._unknown_message(model, provider))
        prov, info = found[0], found[1]
        model_price = info.get_prices(at)
        tiers: list[tuple[str, int, Decimal]] = []

        def base(key: str) -> Decimal | None:
            value = getattr(model_price, key, None)
            if isinstance(value, TieredPrices):
                tiers.extend((key, tier.start, tier.price) for tier in value.tiers)
                return value.base
            return value

        source = self._library_reference()
        inp, out, read, write = (base(key) for key in TOKEN_PRICE_KEYS)
        return ModelPriceInfo(
            info.id, info.name, prov.id, source, at, inp, out, read, write, tuple(tiers)
        )

    def time_of_day_priced(self, provider: str, model: str, response_model: str | None) -> bool:
        """Whether genai-prices prices this model by time of day (off-peak hours), so that a
        call's price depends on its time, not only on its UTC day."""
        self._check_snapshot()
        refs = (model,) if response_model in (None, model) else (response_model, model)
        return any(ref and (found := self._lookup(provider, ref)) and found[2] for ref in refs)

    def price_set(
        self,
        provider: str,
        model: str,
        response_model: str | None,
        at: datetime,
        service_tier: str | None = None,
    ) -> Override | _Plan | None:
        """What `price` prices a call of this model at `at` with, for usage it accepts (no
        negative count, cache counts within the input): the override entry, the first
        genai-prices price set that prices anything, or None (then a reported cost, or none)."""
        if self.overrides:
            entry = self._override(provider, model, response_model, utc_day(at))
            if entry is not None:
                return entry
        self._check_snapshot()
        refs = (model,) if response_model in (None, model) else (response_model, model)
        for ref in refs:
            if ref and (found := self._lookup(provider, ref)) is not None:
                plan = self._plan_at(found[1], found[2], at, service_tier)
                if plan.priceable:
                    return plan
        return None

    def reference(
        self, provider: str, model: str, response_model: str | None, at: datetime, source: str
    ) -> str | None:
        """Where a price of `source` for this call comes from, precisely enough to reproduce
        it: the overrides entry and its valid_from, or the genai-prices version and data."""
        if source == "override":
            entry = self._override(provider, model, response_model, utc_day(at))
            if entry is not None:
                return self._entry_references[entry.index]
        if source == "genai-prices":
            return self._library_reference()
        return None

    def sources(self) -> dict[str, Any]:
        """The price sources in force, for a record of what priced something."""
        overrides: dict[str, Any] | None = None
        if self.overrides_path is not None:
            overrides = {
                "file": str(self.overrides_path),
                "sha256": hashlib.sha256(self.overrides_path.read_bytes()).hexdigest(),
                "entries": list(self._entry_references),
            }
        return {"genai_prices": self._library_reference(), "overrides": overrides}

    def _entry_reference(self, entry: Override) -> str:
        where = f"{self.overrides_path} models[{entry.index}] ({entry.pattern}"
        where += f", provider {entry.provider})" if entry.provider else ")"
        return where + (f" valid_from {entry.valid_from}" if entry.valid_from else "")

    def _library_reference(self) -> str:
        self._check_snapshot()
        return self._library_ref

    # -- internals ---------------------------------------------------------------------------

    def _check_snapshot(self) -> data_snapshot.DataSnapshot:
        """Follows the library's data (bundled, or refreshed when an app enabled updates)."""
        snapshot = data_snapshot.get_snapshot()
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            for cache in (self._models, self._day_plans, self._plans):
                cache.clear()
            self._library_ref = _library_reference(snapshot)
        return snapshot

    def _override(
        self, provider: str, model: str, response: str | None, day: date
    ) -> Override | None:
        key = (provider, model, response)
        hits = self._override_hits.get(key)
        if hits is None:
            names = (model.lower(),) if not response else (response.lower(), model.lower())
            hits = tuple(e for e in self.overrides if e.matches(provider.lower(), names))
            _put(self._override_hits, key, hits)
        for entry in hits:
            if entry.valid_from is None or entry.valid_from <= day:
                return entry
        return None

    def _lookup(self, provider: str, model: str) -> tuple[Provider, ModelInfo, bool] | None:
        key = (provider, model)
        if key in self._models:
            return self._models[key]
        assert self._snapshot is not None
        hit = find_model(self._snapshot, provider, model)
        if hit is None:
            found = None
        else:
            prov, info = hit
            prices = info.prices if isinstance(info.prices, list) else []
            by_hour = any(isinstance(p.constraint, TimeOfDateConstraint) for p in prices)
            found = (prov, info, by_hour)
        _put(self._models, key, found)
        return found

    def _plan_at(self, info: ModelInfo, by_hour: bool, ts: datetime, tier: str | None) -> _Plan:
        """Prices change by UTC day (price history) or hour (off-peak pricing), and by tier."""
        key = (id(info), utc_day(ts), tier)
        if by_hour or (plan := self._day_plans.get(key)) is None:
            model_price = tier_prices(info, ts, tier)
            # By identity: the plan holds its price set, and the snapshot holds the models.
            plan = self._plans.get(id(model_price))
            if plan is None or plan.model_price is not model_price:
                plan = _compile(model_price)
                _put(self._plans, id(model_price), plan)
            if not by_hour:
                _put(self._day_plans, key, plan)
        return plan

    def _lookup_anywhere(self, model: str) -> tuple[Provider, ModelInfo, bool] | None:
        """For people asking without a provider: the maker, else the first provider listing it."""
        if (found := self._lookup("", model)) is not None:
            return found
        assert self._snapshot is not None
        direct = set(PRICE_PROVIDER_IDS.values())
        ordered = sorted(self._snapshot.providers, key=lambda p: p.id not in direct)
        return next((r for p in ordered if (r := self._lookup(p.id, model)) is not None), None)

    def _unknown_message(self, model: str, provider: str | None) -> str:
        assert self._snapshot is not None
        ids = sorted({m.id for p in self._snapshot.providers for m in p.models})
        close = difflib.get_close_matches(model.lower(), ids, n=5, cutoff=0.6)
        where = f" for provider {provider!r}" if provider else ""
        hint = f" Close matches: {', '.join(close)}." if close else ""
        if provider and (others := [p.id for p in self._snapshot.providers if p.find_model(model)]):
            hint += f" It is priced for: {', '.join(others)}."
        return (
            f"No price known for model {model!r}{where}.{hint} "
            "Add it to the price overrides file (NEXUS_PRICES_FILE) to price it."
        )


def _library_reference(snapshot: data_snapshot.DataSnapshot) -> str:
    """The genai-prices version and its data: bundled with it, or refreshed at a time."""
    data = "bundled data"
    if snapshot.from_auto_update:
        data = f"data of {snapshot.timestamp.isoformat(timespec='seconds')}"
    return f"genai-prices {genai_prices.__version__} ({data})"


def render_price_table(info: ModelPriceInfo) -> Table:
    """The `nexus-otel prices MODEL` table."""
    table = Table(title=f"Prices for {info.model_id}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")

    def usd(value: Decimal | None, absent: str = "—") -> str:
        return absent if value is None else f"${value.normalize():f}"

    table.add_row("Model", info.model_id + (f" ({info.model_name})" if info.model_name else ""))
    table.add_row("Provider", info.provider or "any")
    table.add_row("Source", info.source)
    table.add_row("Prices at", info.at.isoformat(timespec="seconds"))
    table.add_row("Input / MTok", usd(info.input_mtok))
    table.add_row("Output / MTok", usd(info.output_mtok))
    # genai-prices bills cache tokens without a price of their own as plain input
    table.add_row("Cache read / MTok", usd(info.cache_read_mtok, "— (billed as input)"))
    table.add_row("Cache write / MTok", usd(info.cache_write_mtok, "— (billed as input)"))
    for key, start, value in info.tiers:
        name = key.removesuffix("_mtok").replace("_", " ").capitalize()
        table.add_row(f"{name} / MTok, input > {start:,}", usd(value))
    if info.tiered:
        table.add_row("Tiers", "a call's input size sets the rate for all its tokens")
    return table
