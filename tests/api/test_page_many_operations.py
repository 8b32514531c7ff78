"""The built-in dashboard when an app names many operations: the cost-by-operation chart draws the
most expensive ones and one bar for the rest (3,000 bars in one chart were each thinner than a
pixel), and calls without an operation do not add a second "All" to the operation filter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.api.conftest import call_spec
from tests.api.page_support import Stored, open_page, send, wait_until
from tests.browser import chromium, console_errors
from tests.support import ExporterProcess

pytestmark = pytest.mark.e2e

SHOWN = 12  # bars of their own; the page's OPERATION_BARS
# op-01 costs $0.20, op-02 $0.19, ... op-20 $0.01: the most expensive first.
COSTS = {f"op-{i:02d}": Decimal(21 - i) / 100 for i in range(1, 21)}
UNNAMED = Decimal("0.005")  # one call made outside any operation


@pytest.fixture(scope="module")
def page(exporter: ExporterProcess) -> Iterator[Any]:
    at = datetime.now(UTC) - timedelta(minutes=1)
    specs = [call_spec(at, str(cost), operation=name) for name, cost in COSTS.items()]
    unnamed = call_spec(at, str(UNNAMED))
    del unnamed["attributes"]["nexus.operation"]
    send(exporter, Stored(), [*specs, unnamed], "many-operations")
    with chromium() as driver:
        open_page(driver, exporter.api_url + "/")
        yield driver


def test_the_most_expensive_operations_have_bars_and_the_rest_share_one(page: Any) -> None:
    labels, values = wait_until(
        lambda: page.execute_script(
            "const c = Chart.getChart(document.getElementById('chart-cost-operation'));"
            "return c && [c.data.labels, c.data.datasets[0].data];"
        )
    )
    assert labels == [*list(COSTS)[:SHOWN], "9 other operations"]
    assert values[:SHOWN] == [float(cost) for cost in list(COSTS.values())[:SHOWN]]
    rest = sum(list(COSTS.values())[SHOWN:], UNNAMED)  # op-13 to op-20 and the unnamed call
    assert rest == Decimal("0.365") and values[SHOWN] == pytest.approx(float(rest), abs=1e-12)
    assert console_errors(page) == []


def test_calls_without_an_operation_add_no_second_all(page: Any) -> None:
    options = page.execute_script(
        "return [...document.getElementById('operation').options]"
        ".map(o => [o.value, o.textContent]);"
    )
    assert options == [["", "All"], *([name, name] for name in sorted(COSTS))]
