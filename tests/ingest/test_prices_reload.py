"""An overrides file edited while `nexus-otel serve` runs prices the calls stored from then on,
without a restart (the flow after `prices --unpriced`: write the prices, `reprice` the past, and
the exporter prices what arrives next); a file saved broken leaves the prices as they were and
says so in the log. Costs worked out by hand from the per-million-token prices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.ingest.decode import PRICES_RECHECK_SECONDS
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, exporter_pricing_with, query, write_prices_file

MODEL = "acme-reload-1"
# 1000 input and 200 output tokens: at $3 / $15 per million, 3000 + 3000 = $0.006; at $5 / $15,
# 5000 + 3000 = $0.008.
FIRST, SECOND = Decimal("0.006"), Decimal("0.008")
# Long enough for every process of the exporter to look at the file again, on a busy machine.
WAIT_SECONDS = 60


def prices(input_mtok: int) -> str:
    return f"models:\n  - model: {MODEL}\n    input_mtok: {input_mtok}\n    output_mtok: 15\n"


# Each test has its own file and exporter: every process of the exporter read the file at its
# start, so each test begins with the same prices in all of them, whatever ran before.
@pytest.fixture
def prices_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prices_file(tmp_path_factory, prices(3))


@pytest.fixture
def priced_exporter(
    database_url: str, prices_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    with exporter_pricing_with(database_url, prices_file, tmp_path_factory) as process:
        yield process


def store_one(exporter: ExporterProcess, database_url: str) -> Decimal | None:
    """Stores a new call of MODEL (1000 in, 200 out) and returns its cost."""
    started = datetime.now(UTC)
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200,
    }
    [span] = make_spans([{"start": started, "attributes": attributes, "duration_ms": 10}])
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=protobuf_body([span]),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    [(cost,)] = query(
        database_url,
        "SELECT cost_usd FROM api_calls WHERE span_id = %s",
        (format(span.context.span_id, "016x"),),
    )
    return cost  # type: ignore[no-any-return]


def costs_until(exporter: ExporterProcess, database_url: str, wanted: Decimal) -> list[Decimal]:
    """The costs of calls stored one after another until one costs `wanted` (or time is up)."""
    seen: list[Decimal] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        cost = store_one(exporter, database_url)
        assert cost is not None
        seen.append(cost)
        if cost == wanted:
            break
        time.sleep(PRICES_RECHECK_SECONDS / 4)
    return seen


def save_broken_and_check_costs(
    exporter: ExporterProcess, database_url: str, prices_file: Path, cost: Decimal
) -> None:
    """Saves the file broken: every call costs `cost` while the exporter comes to read it, the
    log then says it cannot be used, and every call after costs `cost` still."""
    prices_file.write_text("models:\n  - model: [unclosed\n")
    deadline = time.monotonic() + WAIT_SECONDS
    while "cannot be used" not in exporter.log() and time.monotonic() < deadline:
        assert store_one(exporter, database_url) == cost
        time.sleep(PRICES_RECHECK_SECONDS / 4)
    assert f"prices file {prices_file} changed but cannot be used" in exporter.log()
    assert {store_one(exporter, database_url) for _ in range(16)} == {cost}


def test_an_edited_prices_file_prices_the_next_calls_without_a_restart(
    priced_exporter: ExporterProcess, database_url: str, prices_file: Path
) -> None:
    assert store_one(priced_exporter, database_url) == FIRST
    prices_file.write_text(prices(5))
    seen = costs_until(priced_exporter, database_url, SECOND)
    # Until the exporter has read the file again, a call costs the old price; never another.
    assert seen[-1] == SECOND and set(seen) <= {FIRST, SECOND}
    # Once read, it holds: the exporter hands it to every decode process with each request.
    assert {store_one(priced_exporter, database_url) for _ in range(8)} == {SECOND}


def test_a_broken_prices_file_leaves_the_prices_as_they_were_and_says_so(
    priced_exporter: ExporterProcess, database_url: str, prices_file: Path
) -> None:
    assert store_one(priced_exporter, database_url) == FIRST
    save_broken_and_check_costs(priced_exporter, database_url, prices_file, FIRST)


def test_every_decode_process_keeps_the_edit_through_a_broken_save(
    priced_exporter: ExporterProcess, database_url: str, prices_file: Path
) -> None:
    """An edit, then a broken save before every decode process has priced a call: all of them
    keep the edit. The exporter reads the file and hands what it read to its decode processes;
    when each read the file itself, one that had not looked since the edit kept the old price
    for good, and calls of one model cost two prices at once."""
    prices_file.write_text(prices(5))
    assert costs_until(priced_exporter, database_url, SECOND)[-1] == SECOND
    save_broken_and_check_costs(priced_exporter, database_url, prices_file, SECOND)
