"""`nexus-otel demo`: the stack on the embedded PostgreSQL, fed by a carousel-generation workload.

The workload calls local servers that speak the Groq, OpenAI, Gemini and Anthropic wire formats
through the official SDKs, instrumented by `nexus_otel` as any app would be; the exporter stores
the spans and a live view shows what it stored. At the end, what the provider servers reported is
compared with what the database holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

import nexus_otel
from exporter.core.settings import Settings
from exporter.demo.view import (
    View,
    output_console,
    simulator_totals,
    stored_totals,
    summary_table,
)
from exporter.demo.workload import SERVICE_NAME, CarouselWorkload, WorkloadStats
from exporter.ingest.storage import NOTIFY_CHANNEL
from exporter.service import Database, open_database
from exporter.simulator import ProviderSimulator
from exporter.usage.budgets import DEFAULT_BUDGET_NAME

DEFAULT_BUDGET_USD = Decimal(5)
# The view redraws as soon as the exporter announces stored calls (NOTIFY); without any, this
# often, for the countdown. A call thus shows as soon as it is stored, not on a timer's tick.
REFRESH_SECONDS = 0.5
# Redraws at most this often however fast calls are announced: a terminal cannot show more,
# and each redraw reads the database.
MIN_REDRAW_SECONDS = 0.1
FLUSH_TIMEOUT_SECONDS = 20.0
# How long the calls in flight may take to end once the demo is asked to stop.
FINISH_SECONDS = 15.0


class DemoError(RuntimeError):
    """Set-up failed; the message says what to do."""


@dataclass
class Stack:
    database: Database
    otlp_url: str
    api_url: str | None
    api_token: str | None
    simulator: ProviderSimulator
    log_path: Path

    def log(self) -> str:
        return _tail(self.log_path) or "(nothing)"


def run_demo(settings: Settings, duration: float | None) -> int:
    console = output_console()
    _quiet_libraries()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_logs_through(console))
        try:
            stack = _start_stack(settings, console, cleanup)
        except DemoError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}")
            return 1
        _print_endpoints(console, stack, duration)
        return _run_workload(console, stack, duration)
    return 1  # unreachable; keeps type checkers content with the ExitStack


@contextlib.contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """Log records printed by the console that draws the spinners and the live view, above
    them, instead of by a stream handler of their own that writes into the spinner's line."""
    root = logging.getLogger()
    previous = root.handlers[:]
    handler = RichHandler(console=console, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # warnings too: they wrote to stderr past the console
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = previous


def _start_stack(settings: Settings, console: Console, cleanup: contextlib.ExitStack) -> Stack:
    with console.status("starting PostgreSQL (embedded unless --database-url is given)"):
        try:
            database = open_database(settings)
        except psycopg.OperationalError:
            raise  # cannot connect: one line naming the database, exit 2, like every command
        except psycopg.Error as exc:
            raise DemoError(f"cannot use the database: {exc}") from exc
        cleanup.callback(database.close)
    otlp_port = _usable_port(settings.host, settings.otlp_port, "--otlp-port", console)
    api_port = _usable_port(settings.host, settings.api_port, "--api-port", console)
    with console.status("starting the exporter (nexus-otel serve)"):
        log_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="nexus-demo-")))
        server = _start_exporter(settings, database.url, otlp_port, api_port, log_dir)
        cleanup.callback(_stop_process, server)
    otlp_url = f"http://{settings.host}:{otlp_port}"
    api_url = f"http://{settings.host}:{api_port}"
    simulator = ProviderSimulator(
        latency_seconds=0.3, chunk_delay_seconds=0.04, seed=int(time.time())
    )
    cleanup.enter_context(simulator)
    nexus_otel.instrument(service_name=SERVICE_NAME, endpoint=otlp_url)
    cleanup.callback(nexus_otel.shutdown)
    api = api_url if _wait_until_answers(f"{api_url}/health", seconds=10) else None
    log_path = log_dir / "exporter.log"
    return Stack(database, otlp_url, api, settings.api_token, simulator, log_path)


def _run_workload(console: Console, stack: Stack, duration: float | None) -> int:
    with psycopg.connect(stack.database.url) as conn:
        first = _last_carousel_number(conn) + 1  # ids stay unique across runs on one database
    workload = CarouselWorkload(stack.simulator, workers=3, seed=int(time.time()), first=first)
    if stack.api_url:
        workload.on_carousel = ContentRegistrar(stack.api_url, stack.api_token, workload.stats)
    started = datetime.now(UTC)
    midnight = started.replace(hour=0, minute=0, second=0, microsecond=0)
    view = View(SERVICE_NAME, started, midnight, DEFAULT_BUDGET_NAME)
    stop = threading.Event()
    deadline = None if duration is None else time.monotonic() + duration
    with (
        psycopg.connect(stack.database.url, autocommit=True) as conn,
        psycopg.connect(stack.database.url, autocommit=True) as listener,
        Live(console=console, auto_refresh=False) as live,
    ):
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        workload.start(stop)
        with _stop_on_signals(stop):
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                view.status = "Ctrl-C to stop" if deadline is None else _left(deadline)
                _redraw(live, view, conn, workload)
                _wait_for_calls(listener, stop)
            stop.set()
            view.status = "stopping: finishing the calls in flight, flushing spans"
            _finish(live, view, (conn, listener), workload)
            _wait_for_rows(conn, started, workload.stats.calls)
            view.status = "done"
            _redraw(live, view, conn, workload)
    if not console.is_terminal:  # rich ends the live view's last line only on a terminal
        console.line()
    with psycopg.connect(stack.database.url, autocommit=True) as conn:
        return _summarize(console, conn, stack, started, workload)


def _finish(
    live: Live,
    view: View,
    connections: tuple[psycopg.Connection[object], psycopg.Connection[object]],
    workload: CarouselWorkload,
) -> None:
    """The calls in flight end (for at most FINISH_SECONDS), shown as they are stored; then
    the spans still waiting in the app are sent."""
    conn, listener = connections
    deadline = time.monotonic() + FINISH_SECONDS
    pause = threading.Event()  # never set: the pauses between redraws are not cut short
    while workload.running() and time.monotonic() < deadline:
        _redraw(live, view, conn, workload)
        _wait_for_calls(listener, pause)
    nexus_otel.force_flush()


def _wait_for_calls(listener: psycopg.Connection[object], stop: threading.Event) -> None:
    """A short pause that caps the redraws (MIN_REDRAW_SECONDS), then until the exporter
    announces stored calls (at once if it did meanwhile), or REFRESH_SECONDS."""
    if stop.wait(MIN_REDRAW_SECONDS):
        return
    try:
        for _ in listener.notifies(timeout=REFRESH_SECONDS, stop_after=1):
            pass
        for _ in listener.notifies(timeout=0):  # the rest: one redraw shows them all
            pass
    except psycopg.Error:  # the database went away: the redraw says so
        stop.wait(REFRESH_SECONDS)


def _redraw(
    live: Live, view: View, conn: psycopg.Connection[object], workload: CarouselWorkload
) -> None:
    try:
        frame: object = view.render(conn, workload.stats)  # type: ignore[arg-type]
    except psycopg.Error as exc:  # shown, and the demo carries on: the database may come back
        frame = Text(f"reading the database failed: {exc}", style="red")
    live.update(frame, refresh=True)  # type: ignore[arg-type]


def _summarize(
    console: Console,
    conn: psycopg.Connection[object],
    stack: Stack,
    started: datetime,
    workload: CarouselWorkload,
) -> int:
    simulated = simulator_totals(list(stack.simulator.responses))
    stored = stored_totals(conn, started, SERVICE_NAME)  # type: ignore[arg-type]
    console.print(summary_table(simulated, stored, workload.stats.carousels_finished))
    console.print(f"summary: providers reported {simulated.line()}", soft_wrap=True)
    console.print(f"summary: stored {stored.line()} cost_usd={stored.cost_usd:.6f}", soft_wrap=True)
    if stored.calls == 0:
        console.print(
            f"[red]error:[/] no calls were stored; the exporter said:\n{escape(stack.log())}"
        )
        return 1
    if simulated.line() != stored.line():
        console.print("[yellow]warning:[/] stored totals differ from what the providers reported")
    else:
        console.print("[green]every call stored exactly once, tokens match to the unit[/]")
    return 0


_LAST_CAROUSEL = """
SELECT greatest(
    (SELECT max(substring(correlation_id FROM '^carousel-([0-9]{1,12})$')::bigint) FROM api_calls
     WHERE correlation_id LIKE 'carousel-%'),
    (SELECT max(substring(correlation_id FROM '^carousel-([0-9]{1,12})$')::bigint)
     FROM carousel_performance WHERE correlation_id LIKE 'carousel-%'))"""


def _last_carousel_number(conn: psycopg.Connection[object]) -> int:
    row = conn.execute(_LAST_CAROUSEL).fetchone()
    return int(row[0] or 0) if row else 0  # type: ignore[index]


class ContentRegistrar:
    """Registers each finished carousel with the API and posts its (made-up) engagement, as a
    publishing step would, so the content ROI views have something to rank."""

    def __init__(self, api_url: str, token: str | None, stats: WorkloadStats) -> None:
        self.api_url, self.token, self.stats = api_url, token, stats
        self.rng = random.Random()

    def __call__(self, correlation_id: str, topic: str) -> None:
        now = datetime.now(UTC).isoformat()
        reach = self.rng.randint(800, 20_000)
        engagement = {
            "likes": reach * self.rng.randint(2, 9) // 100,
            "comments": reach // 400,
            "shares": reach * self.rng.randint(1, 4) // 1000,
            "saves": reach // 150,
            "reach": reach,
            "impressions": reach * self.rng.randint(11, 16) // 10,
        }
        try:
            self._post(
                "/api/carousels",
                {
                    "correlation_id": correlation_id,
                    "published_at": now,
                    "title": f"Five facts about {topic}",
                },
            )
            self._post(f"/api/carousels/{correlation_id}/engagement", engagement)
        except (OSError, ValueError) as exc:
            self.stats.problems.appendleft(f"registering {correlation_id} with the API: {exc}")

    def _post(self, path: str, body: Mapping[str, object]) -> None:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310 (our own http URL)
            self.api_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass


def _wait_for_rows(conn: psycopg.Connection[object], since: datetime, expected: int) -> None:
    deadline = time.monotonic() + FLUSH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if stored_totals(conn, since, SERVICE_NAME).calls >= expected:  # type: ignore[arg-type]
            return
        time.sleep(0.2)


def _print_endpoints(console: Console, stack: Stack, duration: float | None) -> None:
    console.print(f"[bold]OTLP/HTTP ingest[/] {stack.otlp_url}/v1/traces")
    console.print(f"[bold]metrics[/]          {stack.otlp_url}/metrics")
    if stack.api_url:
        console.print(f"[bold]dashboard[/]        {stack.api_url}/")
        console.print(f"[bold]API[/]              {stack.api_url}  (docs: {stack.api_url}/docs)")
    console.print(f"[bold]database[/]         {_redacted(stack.database.url)}")
    how = "until Ctrl-C" if duration is None else f"for {duration:g} s"
    console.print(f"generating carousels {how} through the Groq, OpenAI, Gemini and Anthropic SDKs")


def _left(deadline: float) -> str:
    return f"{max(0, deadline - time.monotonic()):.0f} s left"


def _redacted(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items() if v)


def _usable_port(host: str, port: int, flag: str, console: Console) -> int:
    """The configured port, or a free one when something (another stack?) already holds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((host, port))
            return port
        except OSError:
            sock.bind((host, 0))
            free = int(sock.getsockname()[1])
    console.print(f"[yellow]port {port} is in use[/] ({flag}); using {free} for this demo")
    return free


def _start_exporter(
    settings: Settings, database_url: str, otlp_port: int, api_port: int, log_dir: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "exporter.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--database-url",
        database_url,
        "--host",
        settings.host,
        "--otlp-port",
        str(otlp_port),
        "--api-port",
        str(api_port),
    ]
    # The demo's daily budget, as a user sets one: the server creates (or updates) the budget
    # named default-daily at start, so the API, the gauges, Grafana and the view all show it.
    env = {**os.environ, "DAILY_BUDGET_USD": str(settings.daily_budget_usd or DEFAULT_BUDGET_USD)}
    log_path = log_dir / "exporter.log"
    with log_path.open("wb") as log:
        # its own session: Ctrl-C reaches only the demo, which flushes before stopping it
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://{settings.host}:{otlp_port}/health"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError(f"the exporter exited with {server.returncode}:\n{_tail(log_path)}")
        if _answers(url):
            return server
        time.sleep(0.2)
    _stop_process(server)
    raise DemoError(f"the exporter did not become healthy at {url}:\n{_tail(log_path)}")


def _wait_until_answers(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _answers(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (our own http URL)
            return bool(response.status < 500)
    except OSError:
        return False


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM asks the workload to stop (the demo then flushes, summarises and stops
    its children); a second one interrupts at once. A flag, not an exception, so the first never
    lands in the middle of a database query."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_libraries() -> None:
    """Per-request INFO lines and model-deprecation notices would scroll the live view away."""
    for name in ("httpx", "httpx2", "google_genai", "anthropic", "groq"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"The model .* is deprecated")
