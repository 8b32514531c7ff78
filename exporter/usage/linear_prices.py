"""Prices that are a linear function of a call's token counts, priced inside PostgreSQL.

Repricing a million calls one group at a time in Python spends most of its time moving and
pricing rows. Most prices are linear in the token counts: an override entry, and a genai-prices
price set without tiers or rules of its own (the ones PriceBook evaluates term by term). Such a
price is reduced to per-million-token coefficients and a fixed amount per call, and the
database computes every call's cost with exact numeric arithmetic (multiplications only, so
nothing is rounded before the final 12 places), as PriceBook does in Decimal.

Each linear price is checked against PriceBook on probe usages before it is used: any difference
(a price the reduction misreads) sends its calls the Python way instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext

from genai_prices.types import TieredPrices

from exporter.ingest.pricing import PriceBook, _Override, _Plan

_MTOK = Decimal(1_000_000)
# Usages the linear form must price as PriceBook does (input, output, cache read, cache write):
# nothing, each kind alone, all at once, and sizes at the top of what a call may count.
_PROBES = (
    (0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (5, 0, 5, 0), (5, 0, 0, 5),
    (1_234, 567, 89, 10), (10_000_001, 54_321, 1_000_000, 300_000),
    (100_000_000, 100_000_000, 40_000_000, 60_000_000),
)  # fmt: skip
# The SQL of a call's new cost, from api_calls `a` and nexus_reprice_linear `l`, rounded as
# numeric(20, 12) rounds (half away from zero).
COST_SQL = (
    "round((a.input_tokens - CASE WHEN l.subtract_read THEN a.cache_read_tokens ELSE 0 END"
    " - CASE WHEN l.subtract_write THEN a.cache_write_tokens ELSE 0 END) * l.input_mtok"
    " * 0.000001 + a.output_tokens * l.output_mtok * 0.000001"
    " + a.cache_read_tokens * l.cache_read_mtok * 0.000001"
    " + a.cache_write_tokens * l.cache_write_mtok * 0.000001 + l.per_call, 12)"
)


@dataclass(frozen=True)
class LinearPrice:
    source: str  # the cost_source it gives: override | genai-prices
    input_mtok: Decimal  # input tokens not counted as cache reads or writes (the leaf)
    output_mtok: Decimal
    cache_read_mtok: Decimal
    cache_write_mtok: Decimal
    per_call: Decimal
    subtract_read: bool  # cache reads are priced apart from the input (else within it)
    subtract_write: bool

    def cost(self, inp: int, out: int, read: int, write: int) -> Decimal:
        """COST_SQL in Python, for the check against PriceBook."""
        leaf = inp - (read if self.subtract_read else 0) - (write if self.subtract_write else 0)
        with localcontext() as exact:
            exact.prec = 60  # no rounding before the last step, like numeric
            total = (
                leaf * self.input_mtok / _MTOK
                + out * self.output_mtok / _MTOK
                + read * self.cache_read_mtok / _MTOK
                + write * self.cache_write_mtok / _MTOK
                + self.per_call
            )
            return total.quantize(Decimal("1e-12"), ROUND_HALF_UP)


def linear_price(
    book: PriceBook, provider: str, model: str, response_model: str | None, at: datetime
) -> LinearPrice | None:
    """The linear form of the price of this model's calls on `at`'s UTC day, checked against
    PriceBook; None when there is none (no price, tiers, a library rule) or it differs."""
    price_set = book.price_set(provider, model, response_model, at)
    if isinstance(price_set, _Override):
        found: LinearPrice | None = LinearPrice(
            "override", price_set.input, price_set.output, price_set.cache_read,
            price_set.cache_write, Decimal(0), True, True,
        )  # fmt: skip
    elif isinstance(price_set, _Plan):
        found = _from_plan(price_set)
    else:
        return None
    if found is None:
        return None
    for probe in _PROBES:
        expected = book.price(
            provider=provider, model=model, response_model=response_model, timestamp=at,
            input_tokens=probe[0], output_tokens=probe[1], cache_read_tokens=probe[2],
            cache_write_tokens=probe[3],
        )  # fmt: skip
        if expected.cost_usd is None or expected.source != found.source:
            return None
        if found.cost(*probe) != expected.cost_usd.quantize(Decimal("1e-12"), ROUND_HALF_UP):
            return None
    return found


def _from_plan(plan: _Plan) -> LinearPrice | None:
    if plan.use_library or not plan.priceable:
        return None
    slots = [Decimal(0)] * 5
    for slot, price, per in plan.terms:
        if isinstance(price, TieredPrices):
            return None  # the input size sets the rate: priced the Python way
        if slot < 4 and per != 1_000_000:
            return None
        slots[slot] = price if slot < 4 else price / per  # a request counts 1
    inp, out, read, write, per_call = slots
    return LinearPrice(
        "genai-prices", inp, out, read, write, per_call, plan.subtract_read, plan.subtract_write
    )
