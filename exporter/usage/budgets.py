"""Budgets: their state and forecast as the database defines them (`nexus_budget_status`),
and their Prometheus gauges."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

State = Literal["ok", "warning", "exceeded"]
DEFAULT_BUDGET_NAME = "default-daily"
FAILURE_PAUSE_SECONDS = 30.0
# Scrapes within this many seconds share one read of the budgets: a budget's spend moves with
# calls, but an alert waits minutes (`for:`), so seconds of staleness cost nothing.
GAUGES_TTL_SECONDS = 5.0
# Budgets with gauges of their own (NEXUS_METRICS_MAX_BUDGETS): 6 series each.
DEFAULT_MAX_BUDGETS = 2000
BUDGET_COLUMNS = (
    "id, name, period_type, budget_usd, warning_threshold_pct, timezone, service_name, provider, "
    "model, operation, enabled, enforce, created_at, updated_at"
)
SCOPE_LABELS = {
    "service_name": "service_name",
    "provider": "gen_ai_provider_name",
    "model": "gen_ai_request_model",
    "operation": "nexus_operation",
}


def statuses(conn: psycopg.Connection[Any], now: datetime) -> list[dict[str, Any]]:
    """Every enabled budget in its current period, by id: `nexus_budget_status`, the one
    definition of spend, usage, state and forecast."""
    return _read(conn, now, "ORDER BY id", None, with_exceeded_at=True)


def highest_usage(conn: psycopg.Connection[Any], now: datetime, limit: int) -> list[dict[str, Any]]:
    """The `limit` enabled budgets of highest usage, as `statuses` but without `exceeded_at`
    (the gauges have none); each row also says how many budgets are enabled
    (`enabled_budgets`)."""
    return _read(conn, now, "ORDER BY usage_pct DESC, id", limit, with_exceeded_at=False)


def _read(
    conn: psycopg.Connection[Any],
    now: datetime,
    order: str,
    limit: int | None,
    with_exceeded_at: bool,
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            "SELECT *, count(*) OVER () AS enabled_budgets"  # type: ignore[arg-type]
            f" FROM nexus_budget_status(%s, NULL, %s) {_RESERVED} {order} LIMIT %s",
            (now, with_exceeded_at, now, limit),
        ).fetchall()
    return [_in_utc(row) for row in rows]


def status(conn: psycopg.Connection[Any], budget_id: int, now: datetime) -> dict[str, Any] | None:
    """One budget, enabled or not, in its current period; None if there is no such budget."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT * FROM nexus_budget_status(%s, %s) {_RESERVED}",  # type: ignore[arg-type]
            (now, budget_id, now),
        ).fetchone()
    return None if row is None else _in_utc(row)


# What unexpired leases hold (migration 010), beside the spend, and whether the budget enforces.
_RESERVED = (
    "JOIN (SELECT budget_id AS id, reserved_usd, b.enforce FROM nexus_budget_reservations(%s)"
    " JOIN cost_budgets b ON b.id = budget_id) reserved USING (id)"
)


def named_status(conn: psycopg.Connection[Any], name: str, now: datetime) -> dict[str, Any] | None:
    """The enabled budget called `name` in its current period, as `statuses`; None if none.
    Reads that budget alone, however many others there are."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            "SELECT s.*, reserved.reserved_usd, reserved.enforce FROM cost_budgets b"
            " CROSS JOIN LATERAL nexus_budget_status(%s, b.id) s"
            f" {_RESERVED.replace('USING (id)', 'ON reserved.id = s.id')}"
            " WHERE b.name = %s AND b.enabled",
            (now, now, name),
        ).fetchone()
    return None if row is None else _in_utc(row)


_TIMES = ("period_start", "period_end", "forecast_window_start", "projected_exhaustion_at",
          "exceeded_at")  # fmt: skip


def _in_utc(row: dict[str, Any]) -> dict[str, Any]:
    """Times in UTC, whatever the session's zone."""
    return {**row, **{k: row[k].astimezone(UTC) for k in _TIMES if row[k] is not None}}


def list_budgets(conn: psycopg.Connection[Any], enabled_only: bool = False) -> list[dict[str, Any]]:
    where = " WHERE enabled" if enabled_only else ""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            f"SELECT {BUDGET_COLUMNS} FROM cost_budgets{where} ORDER BY id"  # type: ignore[arg-type]
        ).fetchall()


def ensure_default_budget(
    conn: psycopg.Connection[Any], amount: Decimal | None, warning_pct: Decimal, zone: str
) -> None:
    """DAILY_BUDGET_USD owns the budget named `default-daily`: created, or updated to match."""
    if amount is None:
        return
    conn.execute(
        "INSERT INTO cost_budgets (name, period_type, budget_usd, warning_threshold_pct, timezone)"
        " VALUES (%s, 'daily', %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
        " budget_usd = EXCLUDED.budget_usd,"
        " warning_threshold_pct = EXCLUDED.warning_threshold_pct,"
        " timezone = EXCLUDED.timezone, updated_at = now()",
        (DEFAULT_BUDGET_NAME, amount, warning_pct, zone),
    )


class BudgetCollector(Collector):
    """The budget gauges, read from the database in one statement (`statuses`).

    /metrics (`exposition`) waits for the database only the first time: later it answers from
    the last read at once, and starts a new read in the background once that is `ttl` old.
    `collect` (a prometheus_client registry) reads in place when the last read is older.
    At most `max_budgets` budgets get gauges, those of highest usage (the ones alerts are
    about); how many were left out is a gauge of its own."""

    def __init__(
        self,
        database_url: str,
        ttl: float = GAUGES_TTL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_budgets: int = DEFAULT_MAX_BUDGETS,
        read_now: bool = False,
    ) -> None:
        """`read_now` starts the first read at once, in the background, so that even the first
        scrape answers without waiting for the database."""
        self._url = database_url
        self._ttl = ttl
        self._clock = clock
        self._max_budgets = max_budgets
        self._lock = threading.Lock()  # the values below
        self._read_lock = threading.Lock()  # one read at a time
        self._statuses: list[dict[str, Any]] = []
        self._left_out = 0
        self._text = _render(_families([], 0))
        self._read_at = float("-inf")
        self._attempted = False
        self._reading = read_now
        if read_now:
            threading.Thread(target=self._read, name="budget-gauges", daemon=True).start()

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # values come from the database: never read at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._stale():
            self._read()
        with self._lock:
            return iter(_families(self._statuses, self._left_out))

    def exposition(self) -> bytes:
        """The gauges in the text format, rendered once per read. Blocking the first time."""
        if not self._attempted:
            self._read(first=True)  # or waits for the first read in flight
        elif self._stale():
            with self._lock:
                start, self._reading = not self._reading, True
            if start:
                threading.Thread(target=self._read, name="budget-gauges", daemon=True).start()
        with self._lock:
            return self._text

    def _stale(self) -> bool:
        return time.monotonic() - self._read_at > self._ttl

    def _read(self, first: bool = False) -> None:
        with self._read_lock:
            if first and self._attempted:
                return
            try:
                with psycopg.connect(self._url, connect_timeout=1, autocommit=True) as conn:
                    shown = highest_usage(conn, self._clock(), self._max_budgets)
            except psycopg.Error as exc:
                # With the database down, try again only after a pause, serving the last values.
                log.warning("reading budgets for /metrics failed: %s", exc)
                with self._lock:
                    self._read_at = time.monotonic() + FAILURE_PAUSE_SECONDS
                    self._attempted, self._reading = True, False
                return
            enabled = int(shown[0]["enabled_budgets"]) if shown else 0
            left_out = enabled - len(shown)
            text = _render(_families(shown, left_out))
            with self._lock:
                self._statuses, self._left_out, self._text = shown, left_out, text
                self._read_at = time.monotonic()
                self._attempted, self._reading = True, False


def _families(statuses: list[dict[str, Any]], left_out: int) -> list[GaugeMetricFamily]:
    labels = ["budget", "period", *SCOPE_LABELS.values()]
    families = {k: GaugeMetricFamily(n, h, labels=labels) for k, (n, h) in _GAUGES.items()}
    for s in statuses:
        values = [s["name"], s["period"], *(s[c] or "" for c in SCOPE_LABELS)]
        limit = float(s["amount_usd"])
        families["limit"].add_metric(values, limit)
        families["spend"].add_metric(values, float(s["spend_usd"]))
        families["reserved"].add_metric(values, float(s["reserved_usd"]))
        families["usage"].add_metric(values, float(s["usage_pct"] / 100))
        # Divided as the usage is (in Decimal, then to float): at the threshold exactly the two
        # gauges are equal, so the alert's usage >= warning fires when the state says warning.
        families["warning"].add_metric(values, float(s["warning_threshold_pct"] / 100))
        families["forecast"].add_metric(values, float(s["forecast_usd"]))
        families["end"].add_metric(values, s["period_end"].timestamp())
    without = GaugeMetricFamily(
        "nexus_budgets_without_gauges",
        "Enabled budgets left out of the budget gauges: past NEXUS_METRICS_MAX_BUDGETS, "
        "those of lowest usage.",
        value=left_out,
    )
    return [*families.values(), without]


_GAUGES = {
    "limit": ("nexus_budget_limit_usd", "Budget amount in US dollars."),
    "spend": ("nexus_budget_spend_usd", "Spend in the budget's current period."),
    "reserved": ("nexus_budget_reserved_usd", "What unexpired leases still hold, beside spend."),
    "usage": ("nexus_budget_usage_ratio", "Spend divided by the budget amount."),
    "warning": ("nexus_budget_warning_ratio", "Warning threshold as a ratio."),
    "forecast": (
        "nexus_budget_forecast_usd",
        "Projected spend at period end at the pace of the last hour.",
    ),
    "end": ("nexus_budget_period_end_timestamp_seconds", "End of the current period."),
}


def _render(families: list[GaugeMetricFamily]) -> bytes:
    """Gauge families in the text format, as generate_latest writes them but without its
    per-sample overhead (12,000 samples in a few milliseconds instead of a third of a second)."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.documentation}\n# TYPE {family.name} gauge\n")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            labels = f"{{{labels}}}" if labels else ""
            out.append(f"{sample.name}{labels} {floatToGoString(sample.value)}\n")
    return "".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
