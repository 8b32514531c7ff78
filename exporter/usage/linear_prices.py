"""Prices that are a linear function of a call's token counts, priced inside PostgreSQL.

Repricing a million calls one group at a time in Python spends most of its time moving and
pricing rows. Most prices are linear in the token counts: an override entry, and a genai-prices
price set without tiers or rules of its own (the ones PriceBook evaluates term by term). Such a
price is reduced to per-million-token coefficients and a fixed amount per call, and the
database computes every call's cost with exact numeric arithmetic (multiplications only, so
nothing is rounded before the final 12 places), as PriceBook does in Decimal.

1-hour cache writes (`cache_write_1h_tokens`, a part of the cache writes) are priced apart when
the price has a price for them (`split_1h`, as PriceBook's plan): the other writes at the cache
write price, and, for a genai-prices price set without a cache write price, as input.

Each linear price is checked against PriceBook on probe usages before it is used: any difference
(a price the reduction misreads) sends its calls the Python way instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext

from genai_prices.types import TieredPrices

from exporter.ingest.price_overrides import Override
from exporter.ingest.pricing import PriceBook, _Plan

_MTOK = Decimal(1_000_000)
# Usages the linear form must price as PriceBook does (input, output, cache read, cache write,
# of which 1-hour writes): nothing, each kind alone, all at once, and sizes at the top of what a
# call may count.
_PROBES = (
    (0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (5, 0, 5, 0, 0), (5, 0, 0, 5, 0),
    (5, 0, 0, 5, 5), (5, 0, 0, 5, 2), (1_234, 567, 89, 10, 0), (1_234, 567, 89, 10, 4),
    (10_000_001, 54_321, 1_000_000, 300_000, 0),
    (100_000_000, 100_000_000, 40_000_000, 60_000_000, 0),
    (100_000_000, 100_000_000, 40_000_000, 60_000_000, 20_000_000),
)  # fmt: skip
# The SQL of a call's new cost, from api_calls `a` and nexus_reprice_linear `l`, rounded as
# numeric(20, 12) rounds (half away from zero).
COST_SQL = (
    "round((a.input_tokens - CASE WHEN l.subtract_read THEN a.cache_read_tokens ELSE 0 END"
    " - CASE WHEN l.subtract_write THEN a.cache_write_tokens"
    " WHEN l.split_1h THEN a.cache_write_1h_tokens ELSE 0 END) * l.input_mtok"
    " * 0.000001 + a.output_tokens * l.output_mtok * 0.000001"
    " + a.cache_read_tokens * l.cache_read_mtok * 0.000001"
    " + (a.cache_write_tokens - CASE WHEN l.split_1h THEN a.cache_write_1h_tokens ELSE 0 END)"
    " * l.cache_write_mtok * 0.000001"
    " + a.cache_write_1h_tokens * l.cache_write_1h_mtok * 0.000001 + l.per_call, 12)"
)


@dataclass(frozen=True)
class LinearPrice:
    """One piece of a price: linear for calls whose input count is in (above, up_to]."""

    source: str  # the cost_source it gives: override | genai-prices
    input_mtok: Decimal  # input tokens not counted as cache reads or writes (the leaf)
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal
    per_call: Decimal
    subtract_read: bool  # cache reads are priced apart from the input (else within it)
    subtract_write: bool
    above: int = -1  # a tier applies to calls with more input tokens than its start
    up_to: int | None = None
    cache_write_1h_mtok: Decimal = Decimal(0)
    split_1h: bool = False  # 1-hour cache writes are priced apart (else as any cache write)

    def cost(self, inp: int, out: int, read: int, write: int, write_1h: int = 0) -> Decimal:
        """COST_SQL in Python, for the check against PriceBook."""
        leaf = inp - (read if self.subtract_read else 0)
        if self.subtract_write:
            leaf -= write
        elif self.split_1h:
            leaf -= write_1h
        write_leaf = write - (write_1h if self.split_1h else 0)
        with localcontext() as exact:
            exact.prec = 60  # no rounding before the last step, like numeric
            total = (
                leaf * self.input_mtok / _MTOK
                + out * self.output_mtok / _MTOK
                + read * self.cache_read_mtok / _MTOK
                + write_leaf * self.cache_write_mtok / _MTOK
                + write_1h * self.cache_write_1h_mtok / _MTOK
                + self.per_call
            )
            return total.quantize(Decimal("1e-12"), ROUND_HALF_UP)

    def probes(self) -> list[tuple[int, int, int, int, int]]:
        """_PROBES within this piece, and usages at both ends of its input range."""
        ends = [self.above + 1, self.up_to if self.up_to is not None else self.above + 10**6]
        edges = [(i, 7, 0, 0, 0) for i in ends] + [(i, 3, i // 3, i // 5, i // 10) for i in ends]
        inside = [
            p for p in _PROBES if p[0] > self.above and (self.up_to is None or p[0] <= self.up_to)
        ]
        return inside + edges


def linear_price(
    book: PriceBook,
    provider: str,
    model: str,
    response_model: str | None,
    at: datetime,
    service_tier: str | None = None,
) -> list[LinearPrice] | None:
    """The price of this model's calls served by `service_tier` on `at`'s UTC day as linear
    pieces by input size, each checked against PriceBook; None when there is none (no price, a
    library rule) or any piece differs."""
    price_set = book.price_set(provider, model, response_model, at, service_tier)
    if isinstance(price_set, Override):
        found: list[LinearPrice] | None = [
            LinearPrice(
                "override", price_set.input, price_set.output, price_set.cache_read,
                price_set.cache_write, Decimal(0), True, True,
                cache_write_1h_mtok=price_set.cache_write_1h, split_1h=True,
            )
        ]  # fmt: skip
    elif isinstance(price_set, _Plan):
        found = _from_plan(price_set)
    else:
        return None
    for piece in found or ():
        for probe in piece.probes():
            expected = book.price(
                provider=provider, model=model, response_model=response_model, timestamp=at,
                input_tokens=probe[0], output_tokens=probe[1], cache_read_tokens=probe[2],
                cache_write_tokens=probe[3], cache_write_1h_tokens=probe[4],
                service_tier=service_tier,
            )  # fmt: skip
            if expected.cost_usd is None or expected.source != piece.source:
                return None
            exact = expected.cost_usd.quantize(Decimal("1e-12"), ROUND_HALF_UP)
            if piece.cost(*probe) != exact:
                return None
    return found


def _unit_price(price: Decimal | TieredPrices, inp: int) -> Decimal:
    """The library's cliff rule: the last tier whose start the call's input exceeds."""
    if not isinstance(price, TieredPrices):
        return price
    return next((t.price for t in reversed(price.tiers) if inp > t.start), price.base)


def _from_plan(plan: _Plan) -> list[LinearPrice] | None:
    """A piece per stretch of input sizes between tier starts (the library's cliff rule: a
    call's whole input size sets the rate of every tiered price)."""
    if plan.use_library or not plan.priceable:
        return None
    if any(slot != 4 and per != 1_000_000 for slot, _, per in plan.terms):
        return None
    starts = sorted(
        {t.start for _, price, _ in plan.terms if isinstance(price, TieredPrices)
         for t in price.tiers}
    )  # fmt: skip
    bounds = [-1, *starts]
    pieces = []
    for index, above in enumerate(bounds):
        up_to = bounds[index + 1] if index + 1 < len(bounds) else None
        slots = [Decimal(0)] * 6
        for slot, price, per in plan.terms:
            unit = _unit_price(price, above + 1)  # every input in (above, up_to] alike
            slots[slot] = unit if slot != 4 else unit / per  # a request counts 1
        inp, out, read, write, per_call, write_1h = slots
        pieces.append(
            LinearPrice(
                "genai-prices", inp, out, read, write, per_call, plan.subtract_read,
                plan.subtract_write, above, up_to, write_1h, plan.split_1h,
            )
        )  # fmt: skip
    return pieces
