"""The exporter's API, as the budget guard and `budget_status()` use it: leases and status.

Plain `urllib` (standard library), so these requests are never taken for LLM calls nor traced
by the httpx instrumentation.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8000"
# An API that does not answer within this many seconds counts as unreachable: the guard then
# applies its fail policy rather than hold the app's call longer.
API_TIMEOUT_SECONDS = 5.0


class ApiUnreachable(RuntimeError):
    """The API did not answer, or answered with an error that is not about the budget."""


@dataclass(frozen=True)
class Refusal:
    """A 409: the tightest enforced budget has too little left."""

    budget: str
    spend_usd: Decimal
    reserved_usd: Decimal
    limit_usd: Decimal


@dataclass(frozen=True)
class Lease:
    lease_id: str
    granted_usd: Decimal


@dataclass(frozen=True)
class BudgetStatus:
    """One budget in its current period, as the original design's `check_budget` told it."""

    name: str
    period: str
    state: str  # ok | warning | exceeded
    spend_usd: Decimal
    reserved_usd: Decimal  # what unexpired leases still hold
    limit_usd: Decimal
    usage_pct: Decimal
    remaining_usd: Decimal
    forecast_usd: Decimal
    period_start: datetime
    period_end: datetime


class BudgetApi:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        url = url or os.environ.get("NEXUS_API_URL", "").strip() or DEFAULT_API_URL
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.token = token or os.environ.get("NEXUS_API_TOKEN", "").strip() or None
        self.round_trips = 0  # requests made: the guard's cost, for the benchmark and tests

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        # The scheme is checked to be http(s) when the URL is given.
        request = urllib.request.Request(self.url + path, data, headers, method=method)  # noqa: S310
        self.round_trips += 1
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_SECONDS) as response:  # noqa: S310
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (OSError, ValueError) as error:  # refused, timed out, a bad URL
            raise ApiUnreachable(f"{self.url}: {error}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise ApiUnreachable(f"{self.url}{path}: answered {status}, not JSON") from None

    def lease(
        self,
        scope: tuple[str, str, str, str],
        amount: Decimal,
        minimum: Decimal,
        ttl_seconds: int,
        returning: tuple[str, Decimal] | None = None,
    ) -> Lease | Refusal:
        """A lease of up to `amount` (at least `minimum`) for `scope`, giving back `returning`
        (a lease id and what it still holds) in the same request."""
        service, provider, model, operation = scope
        body: dict[str, Any] = {
            "service": service, "provider": provider, "model": model, "operation": operation,
            "amount_usd": str(amount), "min_amount_usd": str(minimum), "ttl_seconds": ttl_seconds,
        }  # fmt: skip
        if returning is not None:
            body["return_lease_id"], body["return_unused_usd"] = returning[0], str(returning[1])
        status, answer = self._request("POST", "/api/budget/leases", body)
        if status == 201:
            return Lease(answer["lease_id"], Decimal(answer["granted_usd"]))
        if status == 409:
            return Refusal(
                answer["budget"],
                _money(answer["spend_usd"]),
                _money(answer["reserved_usd"]),
                _money(answer["amount_usd"]),
            )
        raise ApiUnreachable(f"{self.url}/api/budget/leases answered {status}: {answer}")

    def give_back(self, lease_id: str, unused: Decimal) -> None:
        status, answer = self._request(
            "POST", f"/api/budget/leases/{lease_id}/return", {"unused_usd": str(unused)}
        )
        if status not in (204, 404):  # 404: deleted after expiry, nothing to give back
            raise ApiUnreachable(f"returning lease {lease_id} answered {status}: {answer}")

    def statuses(self) -> list[BudgetStatus]:
        status, answer = self._request("GET", "/api/budget/status")
        if status != 200 or not isinstance(answer, list):
            raise ApiUnreachable(f"{self.url}/api/budget/status answered {status}: {answer}")
        return [_status(row) for row in answer]


def _money(value: Any) -> Decimal:
    return Decimal(str(value))


def _status(row: dict[str, Any]) -> BudgetStatus:
    return BudgetStatus(
        name=row["name"],
        period=row["period"],
        state=row["state"],
        spend_usd=_money(row["spend_usd"]),
        reserved_usd=_money(row.get("reserved_usd", 0)),
        limit_usd=_money(row["amount_usd"]),
        usage_pct=_money(row["usage_pct"]),
        remaining_usd=_money(row["remaining_usd"]),
        forecast_usd=_money(row["forecast_usd"]),
        period_start=datetime.fromisoformat(row["period_start"]),
        period_end=datetime.fromisoformat(row["period_end"]),
    )
