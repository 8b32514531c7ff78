"""Budget leases through a real `nexus-otel serve` on a real PostgreSQL: grants and refusals,
settlement as calls are stored, returns, scope matching, the `enforce` flag, periods in several
time zones, and the reserved amount in the status API and the gauges."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.api.conftest import call_spec
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, api_usd, metric_samples

SERVICE = "lease-bot"
# Share of the tightest budget's headroom one lease may take (exporter.usage.leases.LEASE_SHARE,
# as documented): restated here, not imported, so the test checks the documented rule.
SHARE = Decimal("0.25")


@pytest.fixture(scope="module")
def api(exporter: ExporterProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=exporter.api_url, timeout=30) as client:
        yield client


def budget(api: httpx.Client, name: str, amount: str, **fields: Any) -> int:
    body = {"name": name, "period": "daily", "amount_usd": amount, "timezone": "UTC", **fields}
    response = api.post("/api/budgets", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def lease(
    api: httpx.Client,
    model: str,
    amount: str,
    minimum: str,
    provider: str = "openai",
    operation: str = "",
    ttl: int = 120,
) -> httpx.Response:
    return api.post(
        "/api/budget/leases",
        json={
            "service": SERVICE, "provider": provider, "model": model, "operation": operation,
            "amount_usd": amount, "min_amount_usd": minimum, "ttl_seconds": ttl,
        },
    )  # fmt: skip


def store(exporter: ExporterProcess, specs: list[dict[str, Any]]) -> None:
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=protobuf_body(make_spans(specs, SERVICE)),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def status_of(api: httpx.Client, budget_id: int) -> dict[str, Any]:
    response = api.get(f"/api/budgets/{budget_id}/status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def spent_call(model: str, cost: str, lease_id: str, reserved: str, **kw: Any) -> dict[str, Any]:
    spec = call_spec(datetime.now(UTC) - timedelta(seconds=1), cost, model=model, **kw)
    spec["attributes"]["nexus.budget.lease_id"] = lease_id
    spec["attributes"]["nexus.budget.reserved_usd"] = reserved
    return spec


def test_lease_settles_with_the_stored_call_and_returns(
    api: httpx.Client, exporter: ExporterProcess
) -> None:
    budget_id = budget(api, "lease-basic", "1.00", model="lease-basic-model")
    response = lease(api, "lease-basic-model", "0.30", "0.10")
    assert response.status_code == 201, response.text
    granted = response.json()
    # A quarter of the $1.00 headroom, less than the $0.30 asked for.
    assert Decimal(granted["granted_usd"]) == Decimal("1.00") * SHARE
    assert granted["budget"] == "lease-basic"
    assert status_of(api, budget_id)["reserved_usd"] == api_usd(Decimal("0.25"))

    # A call that took $0.10 of the lease and cost $0.04 is stored: spend +0.04, held -0.10.
    store(exporter, [spent_call("lease-basic-model", "0.04", granted["lease_id"], "0.10",
                                operation="")])  # fmt: skip
    state = status_of(api, budget_id)
    assert (state["spend_usd"], state["reserved_usd"]) == (api_usd(Decimal("0.04")), 0.15)

    returned = api.post(f"/api/budget/leases/{granted['lease_id']}/return",
                        json={"unused_usd": "0.15"})  # fmt: skip
    assert returned.status_code == 204, returned.text
    assert status_of(api, budget_id)["reserved_usd"] == 0

    # $0.96 left: a lease of at least $0.97 is refused with the budget's numbers.
    refused = lease(api, "lease-basic-model", "0.97", "0.97")
    assert refused.status_code == 409, refused.text
    assert refused.json() == {
        "detail": "budget 'lease-basic' has too little left for this lease",
        "budget": "lease-basic", "budget_id": budget_id, "spend_usd": api_usd(Decimal("0.04")),
        "reserved_usd": 0, "amount_usd": 1,
    }  # fmt: skip
    assert lease(api, "lease-basic-model", "0.96", "0.96").status_code == 201


def test_a_replayed_span_settles_once(api: httpx.Client, exporter: ExporterProcess) -> None:
    budget_id = budget(api, "lease-replay", "1.00", model="lease-replay-model")
    lease_id = lease(api, "lease-replay-model", "0.20", "0.20").json()["lease_id"]
    spans = make_spans(
        [spent_call("lease-replay-model", "0.01", lease_id, "0.05", operation="")], SERVICE
    )
    for _ in range(2):
        response = httpx.post(
            f"{exporter.base_url}/v1/traces",
            content=protobuf_body(spans),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200
    state = status_of(api, budget_id)
    assert (state["spend_usd"], state["reserved_usd"]) == (0.01, 0.15)


def test_scope_matching_and_the_enforce_flag(api: httpx.Client) -> None:
    anthropic_only = budget(api, "scope-anthropic", "0.10", provider="anthropic")
    op_only = budget(api, "scope-op", "0.10", operation="summaries", model="scope-model")
    watched = budget(api, "scope-watched", "0.01", model="scope-model", enforce=False)
    # The anthropic budget does not hold back an openai call, and the watched one (not
    # enforced) never refuses; both show what they would have reserved.
    ok = lease(api, "scope-model", "0.50", "0.50", provider="openai")
    assert ok.status_code == 201, ok.text
    assert ok.json()["budget"] is None  # no enforced budget matches
    assert status_of(api, watched)["reserved_usd"] == 0.5
    assert status_of(api, anthropic_only)["reserved_usd"] == 0
    # The operation-scoped budget holds back only its operation.
    refused = lease(api, "scope-model", "0.11", "0.11", operation="summaries")
    assert (refused.status_code, refused.json()["budget"]) == (409, "scope-op")
    assert lease(api, "scope-model", "0.11", "0.11", operation="other").status_code == 201
    assert status_of(api, op_only)["reserved_usd"] == 0
    # An anthropic lease matches the provider-scoped budget: a quarter of its $0.10.
    granted = lease(api, "other-model", "0.10", "0.01", provider="anthropic")
    assert Decimal(granted.json()["granted_usd"]) == Decimal("0.025")
    assert status_of(api, anthropic_only)["reserved_usd"] == 0.025
    # Switched to enforcing, the watched budget refuses what is past its amount.
    assert api.patch(f"/api/budgets/{watched}", json={"enforce": True}).json()["enforce"]
    refused = lease(api, "scope-model", "0.001", "0.001")
    assert (refused.status_code, refused.json()["budget"]) == (409, "scope-watched")


ZONES = ("UTC", "Asia/Kolkata", "America/Sao_Paulo", "Pacific/Chatham", "America/St_Johns")


def test_periods_in_several_time_zones(api: httpx.Client, exporter: ExporterProcess) -> None:
    """A call a second before local midnight is yesterday's; one a second after, today's: each
    zone's budget counts only its own today, and leases follow."""
    now = datetime.now(UTC)
    for i, zone in enumerate(ZONES):
        model = f"zone-model-{i}"
        local_now = now.astimezone(ZoneInfo(zone))
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        midnight = midnight.astimezone(UTC)
        calls = [(midnight - timedelta(seconds=1), "0.30")]
        if midnight + timedelta(seconds=1) < now:
            calls.append((midnight + timedelta(seconds=1), "0.20"))
        store(exporter, [call_spec(t, cost, model=model, operation="") for t, cost in calls])
        today = sum(
            (Decimal(cost) for t, cost in calls if t.astimezone(ZoneInfo(zone)).date()
             == local_now.date()),
            Decimal(0),
        )  # fmt: skip
        budget_id = budget(api, f"zone-{i}", "1.00", timezone=zone, model=model)
        assert status_of(api, budget_id)["spend_usd"] == api_usd(today), zone
        headroom = Decimal("1.00") - today
        over = lease(api, model, str(headroom + Decimal("0.000001")), str(headroom))
        refused = lease(api, model, str(headroom + Decimal("0.000001")),
                        str(headroom + Decimal("0.000001")))  # fmt: skip
        assert (refused.status_code, refused.json()["spend_usd"]) == (409, api_usd(today)), zone
        assert over.status_code == 201, zone


def test_reserved_amount_on_the_gauges(api: httpx.Client, exporter: ExporterProcess) -> None:
    budget(api, "gauge-lease", "2.00", model="gauge-model")
    assert lease(api, "gauge-model", "0.40", "0.40").status_code == 201
    text = httpx.get(f"{exporter.base_url}/metrics").text
    deadline = datetime.now(UTC) + timedelta(seconds=30)  # the gauges are read every 5 s
    while True:
        found = [v for labels, v in metric_samples(text, "nexus_budget_reserved_usd")
                 if labels["budget"] == "gauge-lease"]  # fmt: skip
        if found == [0.4] or datetime.now(UTC) > deadline:
            break
        text = httpx.get(f"{exporter.base_url}/metrics").text
    assert found == [0.4]


def test_bad_lease_requests_are_refused_clearly(api: httpx.Client) -> None:
    too_little = lease(api, "m", "0.10", "0.20")
    assert too_little.status_code == 422
    (error,) = too_little.json()["detail"]  # FastAPI's validation error list, as documented
    assert error["msg"] == "Value error, min_amount_usd is more than amount_usd"
    assert lease(api, "m", "-1", "0").status_code == 422
    assert lease(api, "m", "1", "0", ttl=0).status_code == 422
    missing = api.post(f"/api/budget/leases/{uuid.uuid4()}/return", json={"unused_usd": "1"})
    assert missing.status_code == 404
    assert (
        api.post("/api/budget/leases/not-a-uuid/return", json={"unused_usd": "1"}).status_code
        == 422
    )
