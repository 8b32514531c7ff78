"""A cost the span reports, through a real `nexus-otel serve` into PostgreSQL: the provider's own
charge is preferred to a price table; a cost in another currency leaves the call unpriced, with
the reason, never summed as dollars; past $1,000 a claim is ignored. Tokens are stored exactly
whatever happens to the cost. And spans of calls that bill nothing are no rows."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from exporter.ingest.model import RawSpan
from exporter.ingest.normalize import to_llm_call
from tests.hostile.payloads import llm_attributes, new_span, post, rejected_spans, request
from tests.support import ExporterProcess, list_price, query

UNKNOWN = {"gen_ai.request.model": "house-model-7"}  # a model genai-prices has no price for
PROVIDER = {"gen_ai.usage.cost.source": "provider"}
# name → (extra span attributes, cost stored: a Decimal, "list" for genai-prices' price or None,
# cost_source, the reason it is unpriced)
CASES: dict[str, tuple[dict[str, Any], Decimal | str | None, str | None, str | None]] = {
    "provider USD": ({"gen_ai.usage.cost.amount": 0.0042, "gen_ai.usage.cost.currency": "USD",
                      **PROVIDER}, Decimal("0.0042"), "provider", None),
    "provider, currency lower case": ({"gen_ai.usage.cost.amount": 0.0042,
                                       "gen_ai.usage.cost.currency": "usd", **PROVIDER},
                                      Decimal("0.0042"), "provider", None),
    "provider, no currency (USD)": ({"gen_ai.usage.cost.amount": 0.0042, **PROVIDER},
                                    Decimal("0.0042"), "provider", None),
    "provider $0": ({"gen_ai.usage.cost.amount": 0.0, **PROVIDER}, Decimal(0), "provider", None),
    # Priced locally by someone else: a price table we trust as much; genai-prices first.
    "local cost": ({"gen_ai.usage.cost.amount": 0.0042, "gen_ai.usage.cost.source": "local"},
                   "list", "genai-prices", None),
    "cost without a source": ({"gen_ai.usage.cost": 0.0042}, "list", "genai-prices", None),
    "provider EUR": ({"gen_ai.usage.cost.amount": 12.5, "gen_ai.usage.cost.currency": "EUR",
                      **PROVIDER}, None, None,
                     "cost reported in EUR, not US dollars: gen_ai.usage.cost.amount = 12.5 EUR"),
    "OpenLIT JPY, unknown model": ({**UNKNOWN, "gen_ai.usage.cost": 3.0,
                                    "gen_ai.usage.cost.currency": "JPY"}, None, None,
                                   "cost reported in JPY, not US dollars: gen_ai.usage.cost = 3.0"
                                   " JPY"),
    # Ours is dollars by its name, whatever a currency attribute says.
    "nexus.cost.usd, unknown model": ({**UNKNOWN, "nexus.cost.usd": 0.5,
                                       "gen_ai.usage.cost.currency": "EUR"}, Decimal("0.5"),
                                      "span", None),
    "provider past the bound": ({"gen_ai.usage.cost.amount": 1500.0, **PROVIDER}, "list",
                                "genai-prices", None),
}  # fmt: skip


def test_reported_costs(exporter: ExporterProcess, database_url: str) -> None:
    spans = {name: new_span(llm_attributes(1200, 300, **extra)) for name, (extra, *_) in
             CASES.items()}  # fmt: skip
    response = post(exporter.base_url, request(list(spans.values())).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    rows = {
        span_id: (tokens, cost, source, attributes, at)
        for span_id, tokens, cost, source, attributes, at in query(
            database_url,
            "SELECT span_id, (input_tokens, output_tokens, total_tokens)::text, cost_usd,"
            " cost_source, attributes, timestamp FROM api_calls WHERE span_id = ANY(%s)",
            ([s.span_id.hex() for s in spans.values()],),
        )
    }
    for name, span in spans.items():
        extra, cost, source, reason = CASES[name]
        tokens, stored, stored_source, attributes, at = rows[span.span_id.hex()]
        if cost == "list":
            cost = _list_price(extra, at)
        assert (name, tokens, stored, stored_source) == (name, "(1200,300,1500)", cost, source)
        assert attributes.get("nexus.cost.unpriced_reason") == reason, name
    ignored = rows[spans["provider past the bound"].span_id.hex()][3]
    assert ignored["nexus.cost.ignored_reported_usd"] == "1500.0"


def _list_price(extra: dict[str, Any], at: datetime) -> Decimal:
    return list_price(llm_attributes(1200, 300, **extra), at)


START_NS = 1_763_800_000_123_456_789


def _raw(name: str, attributes: dict[str, Any]) -> RawSpan:
    return RawSpan(
        trace_id="1" * 32, span_id="2" * 16, parent_span_id=None, name=name, kind=3,
        start_time_unix_nano=START_NS, end_time_unix_nano=START_NS + 1_000_000, status_code=0,
        status_message="", resource_attributes={"service.name": "svc"}, attributes=attributes,
    )  # fmt: skip


# Spans of calls that bill no tokens, as their instrumentations send them.
NOT_BILLED = {
    # The Anthropic SDK's own span of `messages.count_tokens` names the model, no operation.
    "anthropic count_tokens": _raw("anthropic.messages.count_tokens", {
        "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
        "anthropic.message.count_tokens.input_tokens": 14, "server.address": "api.anthropic.com"}),
    "anthropic sessions.create": _raw("anthropic.sessions.create", {
        "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.agent.name": "helper"}),
    # A stored response fetched again (the conventions' `fetch_response`): counted when made.
    "fetch_response": _raw("fetch_response o4-mini", {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "fetch_response",
        "gen_ai.request.model": "o4-mini", "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NOT_BILLED))
def test_spans_of_calls_that_bill_nothing_are_no_calls(name: str) -> None:
    assert to_llm_call(NOT_BILLED[name]) is None


def test_the_model_call_named_like_them_still_is() -> None:
    """The Anthropic SDK's span of `messages.create` (operation `chat`) is a call."""
    span = _raw("anthropic.messages.create", {
        "gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.output_tokens": 30})  # fmt: skip
    call = to_llm_call(span)
    assert call is not None and (call.provider, call.output_tokens) == ("anthropic", 30)
