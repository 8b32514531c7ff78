"""The built-in dashboard at `/` in a real Chromium against a real `nexus-otel serve`: its numbers
are the database's (computed here from the calls the test stores), a new call shows up live, the
budget bars, the filters, the console, a phone's width and the token prompt."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import MODEL_A, MODEL_B, call_spec
from tests.api.page_support import (
    Stored,
    api_requests,
    card,
    expected_cards,
    open_page,
    send,
    shown_cards,
    start_of_day,
    usd_text,
    wait_until,
)
from tests.browser import (
    PHONE_WIDTH,
    chromium,
    console_errors,
    desktop_width,
    full_page_screenshot,
    phone_width,
)
from tests.support import ExporterProcess, api_ratio, api_usd, free_port, start_exporter

pytestmark = pytest.mark.e2e

TOKEN = "page-t0ken/with+base64 chars"
# The page shows a stored call this soon (the promise: within a second; two here, for a
# machine busy with other tests).
LIVE_SECONDS = 2


@pytest.fixture(scope="module")
def stored(exporter: ExporterProcess) -> Stored:
    """Calls today, yesterday at an earlier time of day, two providers, two services, three
    operations, a failed call, an unpriced model, and a content item with its engagement."""
    ledger = Stored()
    now = datetime.now(UTC).replace(microsecond=0)
    minutes = [timedelta(minutes=m) for m in (2, 3, 5, 8, 13, 21)]
    send(
        exporter,
        ledger,
        [
            call_spec(
                now - minutes[0],
                "0.40",
                input_tokens=1200,
                output_tokens=300,
                correlation_id="carousel-1",
            ),
            call_spec(
                now - minutes[1],
                "0.15",
                provider="anthropic",
                operation="hashtags",
                input_tokens=800,
                output_tokens=200,
                duration_ms=400,
            ),
            call_spec(
                now - minutes[2],
                "0.05",
                operation="captions",
                input_tokens=300,
                output_tokens=100,
                correlation_id="carousel-1",
            ),
            call_spec(
                now - minutes[3],
                None,
                model=MODEL_B,
                provider="anthropic",
                input_tokens=50,
                output_tokens=50,
            ),
        ],
        "carousel-bot",
    )
    send(
        exporter,
        ledger,
        [
            call_spec(
                now - minutes[4],
                "0.25",
                provider="anthropic",
                operation="hashtags",
                input_tokens=1000,
                output_tokens=500,
                error="RateLimitError",
            ),
            # Yesterday, an hour of the day earlier than now (unless now is just past
            # midnight, when the test's own arithmetic below sees the same).
            call_spec(
                now - timedelta(days=1, minutes=30), "0.20", input_tokens=600, output_tokens=200
            ),
        ],
        "ops-bot",
    )
    api = exporter.api_url
    assert (
        httpx.post(
            api + "/api/carousels", json={"correlation_id": "carousel-1", "title": "Ten facts"}
        ).status_code
        == 201
    )
    engagement = {"likes": 90, "comments": 5, "shares": 3, "saves": 2}
    assert (
        httpx.post(api + "/api/carousels/carousel-1/engagement", json=engagement).status_code == 201
    )
    return ledger


@pytest.fixture(scope="module")
def budgets(exporter: ExporterProcess, stored: Stored) -> dict[str, str]:
    """Three daily budgets against today's spend: one well under it, one in its warning band
    (80 % by default) and one spent past its amount. Name -> the state each must be in."""
    now = datetime.now(UTC)
    spend = stored.totals(start_of_day(now), now + timedelta(days=1))["cost"]
    amounts = {"roomy": spend * 10, "tight": spend / Decimal("0.9"), "blown": spend / 2}
    for name, amount in amounts.items():
        exact = str(amount.quantize(Decimal("0.000001")))
        body = {"name": name, "period": "daily", "amount_usd": exact}
        assert httpx.post(exporter.api_url + "/api/budgets", json=body).status_code == 201
    return {"roomy": "ok", "tight": "warning", "blown": "exceeded"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def test_the_cards_show_todays_totals_and_trends_from_the_stored_calls(
    exporter: ExporterProcess, stored: Stored, browser: Any
) -> None:
    open_page(browser, exporter.api_url + "/")
    expected = expected_cards(stored)
    wait_until(lambda: shown_cards(browser) == expected)
    now = datetime.now(UTC)
    day = start_of_day(now)
    today = stored.totals(day, now + timedelta(days=1))
    earlier = stored.totals(day - timedelta(days=1), now - timedelta(days=1))
    for name, key in (("tokens", "tokens"), ("cost", "cost"), ("calls", "calls")):
        shown = card(browser, name)
        if not earlier[key]:
            assert shown["trend"] == "no calls yesterday by this time"
            continue
        change = (Decimal(today[key]) - Decimal(earlier[key])) * 100 / Decimal(earlier[key])
        # The API's percent is a float, within a few roundings of the exact change; the page
        # writes that float as JavaScript's toFixed does (its exact binary value, a tie up).
        assert float(shown["pct"]) == api_ratio(change), name
        shown_change = Decimal(float(shown["pct"])).quantize(Decimal("0.1"), ROUND_HALF_UP)
        assert shown["trend"] == f"▲ +{shown_change}% vs yesterday at this time", name
    assert console_errors(browser) == []


def test_a_call_stored_now_appears_in_recent_calls_without_a_reload(
    exporter: ExporterProcess, stored: Stored, browser: Any
) -> None:
    open_page(browser, exporter.api_url + "/")
    wait_until(lambda: browser.execute_script(
        "return document.getElementById('live').dataset.state === 'on'"))  # fmt: skip
    browser.execute_script("window.sameDocument = true")
    spec = call_spec(datetime.now(UTC), "0.0125", operation="live_check", model=MODEL_A)
    [span] = send(exporter, stored, [spec], "live-bot")
    stored_at = time.monotonic()
    span_id = format(span.context.span_id, "016x")
    row = wait_until(
        lambda: browser.execute_script(
            "const r = document.querySelector(`#recent tr[data-span-id='${arguments[0]}']`);"
            "return r && [...r.cells].map(c => c.textContent);",
            span_id,
        ),
        LIVE_SECONDS,
    )
    assert time.monotonic() - stored_at < LIVE_SECONDS
    assert browser.execute_script("return window.sameDocument") is True  # no reload
    assert row[1:] == ["openai", MODEL_A, "live_check", "150", "$0.0125", "200 ms", "✓ ok"]
    assert console_errors(browser) == []


def test_budget_bars_have_the_states_of_the_budget_status_api(
    exporter: ExporterProcess, budgets: dict[str, str], browser: Any
) -> None:
    # A forecast moves with the clock (the last hour's rate slides): the page's, read between
    # these two answers, is one of theirs.
    before = httpx.get(exporter.api_url + "/api/budget/status").json()
    open_page(browser, exporter.api_url + "/")
    api = httpx.get(exporter.api_url + "/api/budget/status").json()
    forecasts: dict[int, set[str]] = {}
    for answer in (before, api):
        for b in answer:
            forecasts.setdefault(b["id"], set()).add(usd_text(Decimal(repr(b["forecast_usd"]))))
    assert {b["name"]: b["state"] for b in api} == budgets
    shown = wait_until(lambda: browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#budgets .budget')]"
        ".map(b => [b.dataset.id, [b.dataset.state, b.querySelector('progress').value,"
        " getComputedStyle(b.querySelector('.state')).color]]))"))  # fmt: skip
    assert {int(k): v[0] for k, v in shown.items()} == {b["id"]: b["state"] for b in api}
    for b in api:
        assert shown[str(b["id"])][1] == min(b["usage_pct"], 100)
    details = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#budgets .budget')]"
        ".map(b => [b.dataset.id, [...b.querySelector('.details').children]"
        ".map(c => c.textContent).join(' ')]))"
    )
    for b in api:
        spend, amount = Decimal(repr(b["spend_usd"])), Decimal(repr(b["amount_usd"]))
        text = details[str(b["id"])]
        assert text.startswith(
            f"Spend {usd_text(spend)} of {usd_text(amount)} ({b['usage_pct']:.1f}%) Forecast "
        ), text
        assert text.split(" Forecast ", 1)[1].split(" ", 1)[0] in forecasts[b["id"]], text
        assert ("Exceeded" in text) == (b["state"] == "exceeded"), text
        assert ("Runs out" in text) == (b["state"] != "exceeded"), text
    colours = {state: colour for state, _, colour in shown.values()}
    assert len(set(colours.values())) == 3, colours  # ok, warning, exceeded: three colours
    assert console_errors(browser) == []


def test_filters_change_the_numbers_as_the_api_does_and_stay_in_the_url(
    exporter: ExporterProcess, stored: Stored, browser: Any
) -> None:
    from selenium.webdriver.support.ui import Select

    open_page(browser, exporter.api_url + "/")
    wait_until(lambda: shown_cards(browser) == expected_cards(stored))
    Select(browser.find_element("id", "provider")).select_by_value("anthropic")
    expected = expected_cards(stored, provider="anthropic")
    wait_until(lambda: shown_cards(browser) == expected)
    assert browser.current_url == exporter.api_url + "/?provider=anthropic"
    api = httpx.get(exporter.api_url + "/api/dashboard/stats", params={"provider": "anthropic"})
    today = api.json()["today"]
    assert expected["calls"][1] == str(today["calls"])
    assert expected["tokens"][1] == str(today["total_tokens"])
    providers = browser.execute_script(
        "return [...document.querySelectorAll('#providers tbody tr')].map(r => r.dataset.provider)"
    )
    assert providers == ["anthropic"]

    # A link with filters opens filtered: here the service and the operation.
    browser.get(exporter.api_url + "/?service=carousel-bot&operation=hashtags&range=7d")
    expected = expected_cards(stored, service="carousel-bot", operation="hashtags")
    wait_until(lambda: shown_cards(browser) == expected)
    assert browser.execute_script(
        "return ['range', 'service', 'provider', 'operation']"
        ".map(i => document.getElementById(i).value)"
    ) == ["7d", "carousel-bot", "", "hashtags"]
    assert console_errors(browser) == []


def test_unpriced_models_banner_provider_table_and_top_content(
    exporter: ExporterProcess, stored: Stored, browser: Any
) -> None:
    open_page(browser, exporter.api_url + "/")
    models = wait_until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#unpriced-models code')].map(c => c.dataset.model)"
    ))  # fmt: skip
    assert models == [f"anthropic/{MODEL_B}"]
    assert browser.find_element("id", "unpriced").is_displayed()
    wait_until(lambda: browser.execute_script("return document.body.dataset.contentRenders"))
    content = browser.execute_script(
        "return [...document.querySelectorAll('#content tbody tr')].map(r =>"
        " [...r.cells].map(c => c.textContent))"
    )
    cost = Decimal("0.40") + Decimal("0.05")  # the two calls of carousel-1
    assert content == [["Ten facts", "instagram", "100", usd_text(cost), f"{100 / cost:.1f}"]]
    assert console_errors(browser) == []


def test_usable_at_a_phone_width_and_screenshots(
    exporter: ExporterProcess, stored: Stored, budgets: dict[str, str], browser: Any
) -> None:
    open_page(browser, exporter.api_url + "/")
    wait_until(lambda: shown_cards(browser) == expected_cards(stored))
    desktop = full_page_screenshot(browser, "dashboard-desktop.png")
    try:
        phone_width(browser)
        open_page(browser, exporter.api_url + "/")
        wait_until(lambda: shown_cards(browser) == expected_cards(stored))
        widths = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth,"
            " document.body.scrollWidth]"
        )
        assert widths == [PHONE_WIDTH, PHONE_WIDTH, PHONE_WIDTH]  # no sideways scrolling
        # Every card and filter lies inside the screen; only wide tables scroll, in their box.
        outside = browser.execute_script(
            "return [...document.querySelectorAll('.card, .filters select, h1')]"
            ".filter(e => e.getBoundingClientRect().right > arguments[0] + 0.5)"
            ".map(e => e.id || e.className)",
            PHONE_WIDTH,
        )
        assert outside == []
        phone = full_page_screenshot(browser, "dashboard-phone.png")
    finally:
        desktop_width(browser)
    assert desktop.stat().st_size > 0 and phone.stat().st_size > 0
    assert console_errors(browser) == []


def test_the_page_has_a_content_security_policy_and_serves_only_its_files(
    exporter: ExporterProcess,
) -> None:
    page = httpx.get(exporter.api_url + "/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "<script>" not in page.text and " on" not in page.text.split("<body>")[1].split("=")[0]
    script = httpx.get(exporter.api_url + "/page/app.js")
    assert (script.status_code, script.headers["content-type"]) == (
        200, "text/javascript; charset=utf-8",
    )  # fmt: skip
    assert httpx.get(exporter.api_url + "/page/../app.py").status_code == 404
    assert httpx.get(exporter.api_url + "/page/vendor/chart.js.LICENSE.md").status_code == 200


@pytest.fixture(scope="module")
def guarded(
    database_url: str, stored: Stored, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    process = start_exporter(
        database_url, tmp_path_factory.mktemp("guarded"), {"NEXUS_API_TOKEN": TOKEN}
    )
    try:
        yield process
    finally:
        process.stop()


def test_with_a_token_nothing_loads_until_it_is_given(
    guarded: ExporterProcess, stored: Stored, browser: Any
) -> None:
    browser.get(guarded.api_url + "/?provider=openai")
    browser.execute_script("sessionStorage.clear()")
    browser.get(guarded.api_url + "/?provider=openai")
    wait_until(lambda: browser.find_element("id", "token").is_displayed())
    assert not browser.find_element("id", "main").is_displayed()
    assert api_requests(browser) == []
    assert httpx.get(guarded.api_url + "/api/dashboard/stats").status_code == 401

    browser.find_element("id", "token").send_keys(TOKEN + "\n")
    expected = expected_cards(stored, provider="openai")
    wait_until(lambda: shown_cards(browser) == expected)
    assert TOKEN not in browser.current_url
    assert not [url for url in api_requests(browser) if "page-t0ken" in url]
    # The live feed takes the token too (as a WebSocket subprotocol, not in the URL).
    wait_until(lambda: browser.execute_script(
        "return document.getElementById('live').dataset.state === 'on'"))  # fmt: skip
    [span] = send(guarded, stored, [call_spec(datetime.now(UTC), "0.03")], "guarded-bot")
    span_id = format(span.context.span_id, "016x")
    wait_until(lambda: browser.execute_script(
        "return !!document.querySelector(`#recent tr[data-span-id='${arguments[0]}']`)",
        span_id))  # fmt: skip
    assert console_errors(browser) == []
    # Asked once: a reload in the same tab needs no token again.
    open_page(browser, guarded.api_url + "/")
    assert not browser.find_element("id", "auth").is_displayed()
    assert TOKEN not in guarded.log()
    browser.execute_script("sessionStorage.clear()")


def test_the_charts_draw_the_stored_tokens_and_costs_per_provider_and_operation(
    exporter: ExporterProcess, stored: Stored, browser: Any
) -> None:
    open_page(browser, exporter.api_url + "/?range=24h")
    now = datetime.now(UTC)
    day_ago = now - timedelta(hours=24)

    def chart(name: str) -> dict[str, list[float]]:
        return browser.execute_script(
            "const c = Chart.getChart(document.getElementById(arguments[0]));"
            "return Object.fromEntries(c.data.datasets.length > 1"
            " ? c.data.datasets.map(d => [d.label, d.data])"
            " : c.data.labels.map((l, i) => [l, c.data.datasets[0].data[i]]));",
            name,
        )

    tokens = {provider: sum(values) for provider, values in chart("chart-tokens").items()}
    providers = ("anthropic", "openai")
    assert tokens == {
        p: stored.totals(day_ago, now + timedelta(minutes=1), provider=p)["tokens"]
        for p in providers
    }
    costs = chart("chart-cost-provider")
    assert costs == {
        p: api_usd(stored.totals(day_ago, now + timedelta(minutes=1), provider=p)["cost"])
        for p in providers
    }
    operations = {
        spec["attributes"]["nexus.operation"]
        for _, spec in stored.calls
        if day_ago <= spec["start"]
    }
    assert chart("chart-cost-operation") == {
        o: api_usd(stored.totals(day_ago, now + timedelta(minutes=1), operation=o)["cost"])
        for o in operations
    }
    assert console_errors(browser) == []


def test_the_live_feed_refuses_a_wrong_token_in_its_subprotocol(guarded: ExporterProcess) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    def offered(token: str) -> list[Any]:
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        return ["nexus.live", f"nexus.bearer.{encoded}"]

    ws_url = guarded.api_url.replace("http://", "ws://") + "/ws/metrics"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, subprotocols=offered("wrong"), open_timeout=10)
    assert refused.value.response.status_code == 401
    with connect(ws_url, subprotocols=offered(TOKEN), open_timeout=10) as websocket:
        assert websocket.subprotocol == "nexus.live"
        assert json.loads(websocket.recv(timeout=10))["type"] == "hello"


def test_the_api_command_alone_serves_the_same_page(
    database_url: str, stored: Stored, browser: Any, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "exporter.cli", "api", "--database-url", database_url,
               "--api-port", str(port)]  # fmt: skip
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(base))
        open_page(browser, base + "/")
        expected = expected_cards(stored)
        wait_until(lambda: shown_cards(browser) == expected)
        assert console_errors(browser) == []
    finally:
        process.terminate()
        process.wait(10)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
