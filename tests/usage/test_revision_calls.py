"""A revision explained call by call: calls of an unknown model stored unpriced through a real
`nexus-otel serve`, priced by `nexus-otel reprice` with an overrides file (a real process on the
real PostgreSQL), then listed page by page by GET /api/prices/revisions/{id}/calls and shown by
`nexus-otel reprice --history --revision ID`: each call's previous and new cost and source, and
where its new price comes from. Unknown revisions answer 404, bad paging parameters 422.

The expected costs are worked out by hand from the overrides' per-million-token prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, api_usd, query, write_prices_file
from tests.usage.test_reprice import nexus

DAY = datetime.now(UTC).date() - timedelta(days=1)
MODEL = "acme-bulk-1"
CALLS = 53  # more than the CLI shows (50) and than two pages of PAGE
PAGE = 20
OVERRIDES = """models:
  - model: acme-bulk-*
    input_mtok: 3
    output_mtok: 15
"""
FIRST = datetime(DAY.year, DAY.month, DAY.day, 10, tzinfo=UTC)


def expected_cost(number: int) -> Decimal:
    # (1000 + number) input tokens at $3 and 100 output tokens at $15 per million
    return (Decimal(1000 + number) * 3 + 100 * 15) / 1_000_000


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prices_file(tmp_path_factory, OVERRIDES)


@pytest.fixture(scope="module")
def expected(
    exporter: ExporterProcess, database_url: str, overrides: Path
) -> dict[str, dict[str, Any]]:
    """The calls, sent and repriced (revision 1); what the API should say of each, by span id."""
    specs = [
        {
            "start": FIRST + timedelta(seconds=number),
            "attributes": {
                "gen_ai.provider.name": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": MODEL,
                "gen_ai.usage.input_tokens": 1000 + number,
                "gen_ai.usage.output_tokens": 100,
            },
        }
        for number in range(CALLS)
    ]
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=protobuf_body(make_spans(specs, "bulk")),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    result = nexus(database_url, "reprice", "--since", str(DAY), "--prices-file", str(overrides))
    assert result.returncode == 0, result.stderr
    assert f"revision 1 applied: {CALLS} calls repriced" in result.stderr
    rows = query(database_url, 'SELECT trace_id, span_id, "timestamp" FROM api_calls')
    assert len(rows) == CALLS
    calls = {}
    for trace_id, span_id, started in rows:
        number = int((started - FIRST).total_seconds())
        calls[span_id] = {
            "trace_id": trace_id, "span_id": span_id,
            "timestamp": started.isoformat().replace("+00:00", "Z"), "provider": "openai",
            "model": MODEL, "response_model": None, "input_tokens": 1000 + number,
            "output_tokens": 100, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "previous_cost_usd": None, "previous_cost_source": None, "previous_price_ref": None,
            "cost_usd": api_usd(expected_cost(number)), "cost_source": "override",
            "price_ref": f"{overrides} models[0] (acme-bulk-*)",
        }  # fmt: skip
    return calls


def calls_url(exporter: ExporterProcess, revision: object) -> str:
    return f"{exporter.api_url}/api/prices/revisions/{revision}/calls"


def test_the_calls_of_a_revision_page_by_page(
    exporter: ExporterProcess, expected: dict[str, dict[str, Any]]
) -> None:
    seen: list[dict[str, Any]] = []
    sizes = []
    cursor = 0
    while True:
        response = httpx.get(
            calls_url(exporter, 1), params={"limit": PAGE, "cursor": cursor}, timeout=30
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert (page["revision_id"], page["calls_changed"]) == (1, CALLS)
        seen += page["calls"]
        sizes.append(len(page["calls"]))
        if page["next_cursor"] is None:
            break
        assert page["next_cursor"] > cursor
        cursor = page["next_cursor"]
    assert sizes == [PAGE, PAGE, CALLS - 2 * PAGE]
    assert {c["span_id"]: c for c in seen} == expected and len(seen) == CALLS
    # Without paging parameters: the first 100, here all of them, in the same order.
    whole = httpx.get(calls_url(exporter, 1), timeout=30).json()
    assert (whole["calls"], whole["next_cursor"]) == (seen, None)


def test_an_unknown_revision_is_a_404(
    exporter: ExporterProcess, expected: dict[str, dict[str, Any]]
) -> None:
    for revision in (2, 2**63 - 1):
        response = httpx.get(calls_url(exporter, revision), timeout=30)
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": f"no price revision with id {revision}"}


@pytest.mark.parametrize(
    ("revision", "params", "location"),
    [
        ("0", {}, ["path", "revision_id"]),
        ("x", {}, ["path", "revision_id"]),
        (str(2**63), {}, ["path", "revision_id"]),
        ("1", {"limit": "0"}, ["query", "limit"]),
        ("1", {"limit": "1001"}, ["query", "limit"]),
        ("1", {"limit": "x"}, ["query", "limit"]),
        ("1", {"cursor": "-1"}, ["query", "cursor"]),
        ("1", {"cursor": str(2**63)}, ["query", "cursor"]),
        ("1", {"cursor": "x"}, ["query", "cursor"]),
    ],
)
def test_bad_parameters_are_a_422(
    exporter: ExporterProcess, revision: str, params: dict[str, str], location: list[str]
) -> None:
    response = httpx.get(calls_url(exporter, revision), params=params, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == location


def test_history_shows_the_first_calls_of_a_revision_and_how_many_more(
    database_url: str, expected: dict[str, dict[str, Any]], overrides: Path
) -> None:
    result = nexus(database_url, "reprice", "--history", "--revision", "1")
    assert result.returncode == 0, result.stderr
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if MODEL in line
    ]
    assert len(rows) == 50
    by_time = {c["timestamp"]: c for c in expected.values()}
    for when, provider, model, tokens, previous, new, source in rows:
        call = by_time[when.replace(" ", "T") + "Z"]
        number = call["input_tokens"] - 1000
        assert (provider, model, tokens, previous, new, source) == (
            "openai", MODEL, f"{1000 + number:,} / 100", "unpriced",
            f"${expected_cost(number).normalize():f} (override)", call["price_ref"],
        )  # fmt: skip
    assert len({row[0] for row in rows}) == 50
    assert "3 more calls; GET /api/prices/revisions/1/calls lists them all" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--history", "--revision", "2"), "error: no price revision with id 2"),
        (("--history", "--revision", "0"), "error: no price revision with id 0"),
        (
            ("--revision", "1"),
            "error: --revision goes with --history only (it lists the calls a revision changed)",
        ),
    ],
)
def test_history_of_an_unknown_revision_is_a_one_line_error(
    database_url: str, expected: dict[str, dict[str, Any]], args: tuple[str, ...], message: str
) -> None:
    result = nexus(database_url, "reprice", *args)
    assert (result.returncode, result.stderr.strip()) == (2, message)
