"""The built-in dashboard's first render in a real Chromium, data included, at 1 million calls.

A real `nexus-otel serve` on a database grown as `bench.api` grows it (calls over 30 days, their
summaries, and a content item for each correlation id with its engagement); the page is loaded
afresh several times and each load reports, from the browser's own clock, the milliseconds from
navigation to the moment every section holds its data."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from bench.api import grown_tables
from bench.common import Result
from tests.browser import chromium
from tests.support import start_exporter

TARGET_MS = 1000.0
LOADS = 7  # fresh page loads measured (the median is reported), after one warm-up load
LOAD_TIMEOUT_SECONDS = 60
# One content item per correlation id the generated calls carry (`carousel-0` .. `-4999`).
_CONTENT = """
INSERT INTO carousel_performance (correlation_id, title, platform, likes, comments, shares, saves,
    measured_at)
SELECT 'carousel-' || g, 'Carousel ' || g, 'instagram', g % 500, g % 40, g % 20, g % 30, now()
FROM generate_series(0, 4999) AS g ON CONFLICT DO NOTHING
"""


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    sizes = [200_000] if args.quick else [1_000_000]
    results = []
    for url, size in grown_tables(console, sizes, datetime.now(UTC)):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_CONTENT)
        results.extend(_measure(console, url, size))
    return results


def _render_ms(driver: Any, page: str) -> tuple[float, float]:
    """(first render with data, and with the content ranking too), in the browser's clock."""
    driver.get(page)
    deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = driver.execute_script(
            "const d = document.body.dataset; return d.contentRenderMs && d.firstRenderMs"
            " && [Number(d.firstRenderMs), Number(d.contentRenderMs)]"
        )
        if found:
            return float(found[0]), float(found[1])
        time.sleep(0.02)
    raise RuntimeError(f"the page did not render within {LOAD_TIMEOUT_SECONDS} s")


def _measure(console: Console, url: str, size: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-page-") as tmp:
        served = start_exporter(url, Path(tmp))
        try:
            with chromium() as driver:
                page = served.api_url + "/"
                _render_ms(driver, page)  # warm: plans, caches, the browser's own start
                timings = [_render_ms(driver, page) for _ in range(LOADS)]
        finally:
            served.stop()
    first = statistics.median(t[0] for t in timings)
    content = statistics.median(t[1] for t in timings)
    console.print(
        f"dashboard page at {size:,} calls: first render {first:.0f} ms median"
        f" (fastest {min(t[0] for t in timings):.0f}, slowest {max(t[0] for t in timings):.0f});"
        f" with the content ranking {content:.0f} ms"
    )
    return [
        Result(
            name=f"dashboard page first render, {size:,} calls",
            result=f"{first:.0f} ms median",
            baseline="-",
            ratio=TARGET_MS / first,
            target=f"< {TARGET_MS:.0f} ms",
            ok=first < TARGET_MS,
        ),
        # The content ranking (GET /api/analytics/carousel-performance) aggregates every call
        # with a correlation id: it arrives after the rest, and is reported, not held to the target.
        Result(
            name=f"dashboard page with top content, {size:,} calls",
            result=f"{content:.0f} ms median",
            baseline="-",
            ratio=TARGET_MS / content,
            target="report",
            ok=None,
        ),
    ]
