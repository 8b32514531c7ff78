"""One check of a time zone name: the settings and the budget API refuse a bad name with the
same message naming it; a name Python knows but the database's (older) time zone rules lack is
refused where it would be used, by the API and at start-up, in one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
import zoneinfo
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from exporter.core.settings import Settings
from tests.support import ExporterProcess

BAD = "Mars/Olympus_Mons"
MESSAGE = "unknown time zone 'Mars/Olympus_Mons' (use an IANA name)"


@pytest.fixture(scope="module")
def newer_zone(database_url: str) -> Iterator[str]:
    """A zone Python's tz database has and the database's does not (America/Coyhaique, added
    in 2025, against PostgreSQL 16.2's bundled rules)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        known = {row[0] for row in conn.execute("SELECT name FROM pg_timezone_names")}
        for zone in sorted(zoneinfo.available_timezones() - known):
            try:
                conn.execute("SELECT now() AT TIME ZONE %s", (zone,))
            except psycopg.errors.InvalidParameterValue:
                yield zone
                return
    pytest.skip("this database knows every zone Python knows")


def test_the_settings_and_the_api_refuse_a_bad_zone_alike(exporter: ExporterProcess) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(timezone=BAD)
    assert raised.value.errors()[0]["msg"] == f"Value error, {MESSAGE}"
    body = {"name": "mars", "period": "daily", "amount_usd": "1", "timezone": BAD}
    response = httpx.post(f"{exporter.api_url}/api/budgets", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == f"Value error, {MESSAGE}"


def test_the_api_refuses_a_zone_the_database_lacks(
    exporter: ExporterProcess, newer_zone: str
) -> None:
    body = {"name": "newer", "period": "weekly", "amount_usd": "1", "timezone": newer_zone}
    response = httpx.post(f"{exporter.api_url}/api/budgets", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == (
        f"Value error, time zone {newer_zone!r} is unknown to the database (its time zone "
        "rules are older than this name; use another IANA name)"
    )
    created = httpx.post(f"{exporter.api_url}/api/budgets", json={**body, "timezone": "UTC"})
    assert created.status_code == 201
    budget = created.json()["id"]
    update = httpx.patch(f"{exporter.api_url}/api/budgets/{budget}", json={"timezone": newer_zone})
    assert update.status_code == 422
    assert httpx.get(f"{exporter.api_url}/api/budgets/{budget}").json()["timezone"] == "UTC"


def test_start_up_refuses_a_default_zone_the_database_lacks(
    database_url: str, newer_zone: str
) -> None:
    env = {**os.environ, "COLUMNS": "1000", "NEXUS_TIMEZONE": newer_zone}
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "report", "--database-url", database_url],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: NEXUS_TIMEZONE: time zone {newer_zone!r} is unknown to the database (its "
        "time zone rules are older than this name; use another IANA name)"
    ]
