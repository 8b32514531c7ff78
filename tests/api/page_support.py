"""What the dashboard's browser tests share: the calls they stored (expected values are computed
from these, never from the code under test), and reading the page."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx

from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, api_usd

# How long the page may take to load or to follow a filter: a first render is well under a second,
# this only bounds a hung test on a busy machine.
RENDER_SECONDS = 20


@dataclass
class Stored:
    """The calls this module stored, as (service, spec): expected values are computed from them."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def cost(self, spec: dict[str, Any]) -> Decimal:
        value = spec["attributes"].get("nexus.cost.usd")
        return Decimal(repr(value)) if value is not None else Decimal(0)

    def totals(self, start: datetime, end: datetime, **scope: str) -> dict[str, Any]:
        chosen = [
            spec
            for service, spec in self.calls
            if start <= spec["start"] < end
            and scope.get("service", service) == service
            and scope.get("provider", spec["attributes"]["gen_ai.provider.name"])
            == spec["attributes"]["gen_ai.provider.name"]
            and scope.get("operation", spec["attributes"]["nexus.operation"])
            == spec["attributes"]["nexus.operation"]
        ]
        return {
            "calls": len(chosen),
            "tokens": sum(
                s["attributes"]["gen_ai.usage.input_tokens"]
                + s["attributes"]["gen_ai.usage.output_tokens"]
                for s in chosen
            ),
            "cost": sum((self.cost(s) for s in chosen), Decimal(0)),
        }


def send(served: ExporterProcess, stored: Stored, specs: list[dict[str, Any]], service: str) -> Any:
    spans = make_spans(specs, service)
    response = httpx.post(
        served.base_url + "/v1/traces",
        content=protobuf_body(spans),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    stored.calls.extend((service, spec) for spec in specs)
    return spans


def usd_text(value: Decimal) -> str:
    """How the page writes an amount: cents from a dollar up, else four decimals, a tie rounded
    away from zero (JavaScript's Intl.NumberFormat default)."""
    places = Decimal("0.01") if abs(value) >= 1 else Decimal("0.0001")
    return f"${value.quantize(places, rounding=ROUND_HALF_UP):,}"


def start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def wait_until(check: Callable[[], Any], seconds: float = RENDER_SECONDS) -> Any:
    """Polls the page until `check` holds (a render is asynchronous); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"the page did not get there in {seconds} s (last: {last!r})")


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_until(lambda: driver.execute_script("return document.body.dataset.renders"))


def card(driver: Any, name: str) -> dict[str, str]:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const v = c.querySelector('.value'), t = c.querySelector('.trend');"
        "return {text: v.textContent, value: v.dataset.value, trend: t.textContent,"
        " pct: t.dataset.value};",
        f"card-{name}",
    )


def expected_cards(stored: Stored, **scope: str) -> dict[str, tuple[str, str]]:
    now = datetime.now(UTC)
    today = stored.totals(start_of_day(now), now + timedelta(days=1), **scope)
    return {
        "tokens": (f"{today['tokens']:,}", str(today["tokens"])),
        "cost": (usd_text(today["cost"]), repr(api_usd(today["cost"]))),
        "calls": (f"{today['calls']:,}", str(today["calls"])),
    }


def shown_cards(driver: Any) -> dict[str, tuple[str, str]]:
    return {name: (c["text"], c["value"]) for name in ("tokens", "cost", "calls")
            if (c := card(driver, name))}  # fmt: skip


def api_requests(driver: Any) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/api/') || n.includes('/ws/'))"
    )
