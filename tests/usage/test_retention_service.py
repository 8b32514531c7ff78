"""The service applies retention by itself: a while after start-up, then daily."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from exporter import service
from tests.support import query


async def test_service_drops_old_partitions_on_its_schedule(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query(database_url, "SELECT nexus_ensure_partition(%s)", (date(2020, 3, 1),))
    monkeypatch.setattr(service, "RETENTION_FIRST_DELAY_SECONDS", 0.1)
    monkeypatch.setattr(service, "RETENTION_CHECK_SECONDS", 3600)
    task = asyncio.create_task(service._apply_retention_daily(database_url, 90))
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            if not query(database_url, "SELECT to_regclass('api_calls_2020_03')")[0][0]:
                break
        assert query(database_url, "SELECT to_regclass('api_calls_2020_03')") == [(None,)]
        assert not task.done()  # and it keeps running, for the next day
    finally:
        task.cancel()
    current = query(database_url, "SELECT count(*) FROM pg_inherits"
                    " WHERE inhparent = 'api_calls'::regclass")  # fmt: skip
    assert current[0][0] >= 3  # this month's and the months ahead stay
