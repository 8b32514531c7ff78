"""The built-in dashboard with the names a span may carry at their longest, written as markup: the
page shows each as text, exactly, runs none of it, and still fits the screen (only tables scroll,
in their box) on a desktop and on a phone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.api.conftest import call_spec
from tests.api.page_support import Stored, open_page, send, wait_until
from tests.browser import PHONE_WIDTH, chromium, console_errors, desktop_width, phone_width
from tests.support import ExporterProcess

pytestmark = pytest.mark.e2e

# Each at the length the exporter stores whole (README, "Per span"), with no space to break at.
OPERATION = ("<img/src=x/onerror=document.title='op'>" + "o" * 128)[:128]
MODEL = ("<svg/onload=document.title='model'>" + "m" * 256)[:256]  # unpriced: in the banner
SERVICE = ("<script>document.title='service'</script>" + "s" * 128)[:128]
ERROR = ("<b>" + "e" * 128)[:128]  # stored as _OTHER: an error type is a code
BUDGET = ("<iframe/src=javascript:alert(1)>" + "b" * 200)[:200]
TITLE = "nexus-otel · LLM usage and cost"


@pytest.fixture(scope="module")
def page(exporter: ExporterProcess) -> Iterator[Any]:
    spec = call_spec(
        datetime.now(UTC) - timedelta(minutes=1),
        None,
        provider="openai",
        model=MODEL,
        operation=OPERATION,
        error=ERROR,
    )
    send(exporter, Stored(), [spec], SERVICE)
    budget = {"name": BUDGET, "period": "daily", "amount_usd": "5", "operation": OPERATION}
    assert httpx.post(exporter.api_url + "/api/budgets", json=budget).status_code == 201
    with chromium() as driver:
        yield driver


def _shown(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        "const row = document.querySelector('#recent tbody tr');"
        "return {row: row && [...row.cells].slice(1).map(c => c.textContent),"
        " unpriced: [...document.querySelectorAll('#unpriced-models code')]"
        ".map(c => c.textContent),"
        " budget: [...document.querySelectorAll('#budgets .name')].map(n => n.textContent),"
        " services: [...document.getElementById('service').options].map(o => o.value),"
        " operations: [...document.getElementById('operation').options].map(o => o.value),"
        " markup: document.querySelectorAll('main img, main svg, main script, main iframe')"
        ".length, title: document.title}"
    )


def test_markup_in_names_is_shown_as_text(exporter: ExporterProcess, page: Any) -> None:
    open_page(page, exporter.api_url + "/")
    expected = {
        "row": ["openai", MODEL, OPERATION, "150", "unpriced", "200 ms", "✗ _OTHER"],
        "unpriced": [f"openai/{MODEL} (1 call)"],
        "budget": [f"{BUDGET} (daily, {OPERATION})"],
        "services": ["", SERVICE],
        "operations": ["", OPERATION],
        "markup": 0,
        "title": TITLE,
    }
    wait_until(lambda: _shown(page)["row"])  # drawn with the rest, in one render
    assert _shown(page) == expected
    assert console_errors(page) == []


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_long_names_do_not_widen_the_page(exporter: ExporterProcess, page: Any, width: str) -> None:
    """The longest names wrap or are cut by their box: the operation filter and the unpriced
    models' banner made the page 2,200 pixels wide, at either width."""
    try:
        if width == "phone":
            phone_width(page)
        open_page(page, exporter.api_url + "/")
        wait_until(lambda: _shown(page)["unpriced"])
        client, scrolled = page.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
        )
        assert client == (PHONE_WIDTH if width == "phone" else client)
        outside = page.execute_script(
            "return [...document.querySelectorAll('body *')]"
            ".filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > arguments[0])"
            ".map(e => e.id || e.tagName)",
            client + 0.5,
        )
        assert (scrolled, outside) == (client, [])
    finally:
        desktop_width(page)
    assert console_errors(page) == []
