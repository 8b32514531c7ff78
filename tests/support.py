"""Shared test machinery: real PostgreSQL databases and a real `nexus-otel serve` process."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from genai_prices import Usage, calc_price
from psycopg import sql

from exporter.core.db import migrate

# Ports tests listen on come from below the system's ephemeral range (32768 and up on Linux),
# which outgoing connections draw from, so a port picked and closed is not taken meanwhile by a
# client socket; and each pytest-xdist worker has a block of its own, so no two workers pick one.
_PORT_BASE = 20_000
_PORTS_PER_WORKER = 1_000
_port_picks = itertools.count()


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... under -n
    return int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0


def free_port() -> int:
    """A port free now and never given before in this run (the system would hand a just-closed
    port straight back, so an OTLP and an API port picked in a row could otherwise be equal)."""
    first = _PORT_BASE + _worker_index() * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = first + next(_port_picks) % _PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # something else listens there: the next one
                continue
        return port
    raise RuntimeError(f"no free port in {first}..{first + _PORTS_PER_WORKER - 1}")


def with_database(server_url: str, name: str) -> str:
    """The URL of database `name` on the server that `server_url` points at."""
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if v is not None})


@contextlib.contextmanager
def database_before(server_url: str, migration: int, scratch: Path) -> Iterator[str]:
    """A new database migrated up to, not including, migration number `migration` (copies of
    the earlier files go to `scratch`): for a test of that migration on existing rows."""
    from exporter.core.files import bundled_dir

    scratch.mkdir(parents=True, exist_ok=True)
    for path in sorted(bundled_dir("migrations").glob("*.sql")):
        if int(path.name.split("_")[0]) < migration:
            shutil.copy(path, scratch / path.name)
    with fresh_database(server_url) as url:  # migrated to the newest: start over before it
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        migrate(url, scratch)
        yield url


def store_one_and_set_one_aside(
    url: str, insert: str, at: datetime, set_aside_at: datetime
) -> None:
    """With `insert` (trace id, span id, timestamp): a call ("s1") stored then set aside as a
    duplicate at `set_aside_at`, and one ("s2", a minute later) stored, as an older database
    held them before a migration."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("t1", "s1", at))
        conn.execute(
            "WITH gone AS (DELETE FROM api_calls RETURNING *)"
            " INSERT INTO api_call_duplicates SELECT *, %s FROM gone",
            (set_aside_at,),
        )
        conn.execute(insert, ("t2", "s2", at + timedelta(minutes=1)))


def column_names(url: str, table: str) -> list[str]:
    """`table`'s columns in their order."""
    return [
        name
        for (name,) in query(
            url,
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, migrated database for one test module; dropped afterwards."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def table_counts(database_url: str) -> dict[str, int]:
    """Rows in every table of the schema (a partitioned table counts its partitions' rows)."""
    tables = query(
        database_url,
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY relname",
    )
    return {name: query(database_url, f'SELECT count(*) FROM "{name}"')[0][0] for (name,) in tables}


@dataclass
class ExporterProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    api_url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post_traces(self, body: bytes, timeout: float = 30) -> None:
        """Posts an OTLP protobuf request body and checks it is taken (200)."""
        response = httpx.post(
            f"{self.base_url}/v1/traces",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=timeout,
        )
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# Start-up is a few seconds (decode workers, migrations, the first budget read); a machine busy
# with other work has been seen to need over 30. A hung start fails all the same, only later.
START_SECONDS = 90


def start_exporter(
    database_url: str,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    *args: str,
    port: int | None = None,
) -> ExporterProcess:
    """Starts `nexus-otel serve` as its own process and waits until /health answers.
    `port` restarts an exporter where its senders already point."""
    port = port or free_port()
    api_port = free_port()
    env = {**os.environ, **(extra_env or {})}
    log_path = log_dir / f"exporter-{port}-{time.monotonic_ns()}.log"
    command = [
        sys.executable, "-m", "exporter.cli", "serve",
        "--database-url", database_url, "--otlp-port", str(port), "--api-port", str(api_port),
        *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    exporter = ExporterProcess(
        process, f"http://127.0.0.1:{port}", log_path, f"http://127.0.0.1:{api_port}"
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nexus-otel serve exited early:\n{exporter.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{exporter.base_url}/health", timeout=1).status_code == 200:
                return exporter
        time.sleep(0.1)
    exporter.stop()
    raise RuntimeError(f"nexus-otel serve did not become healthy:\n{exporter.log()}")


def write_prices_file(factory: pytest.TempPathFactory, text: str) -> Path:
    """A price overrides file holding `text`, in a directory of its own."""
    path = factory.mktemp("prices") / "prices.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def exporter_pricing_with(
    database_url: str, prices: Path, factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    """A running `nexus-otel serve` that prices with the overrides file `prices`."""
    process = start_exporter(
        database_url, factory.mktemp("exporter"), {"NEXUS_PRICES_FILE": str(prices)}
    )
    try:
        yield process
    finally:
        process.stop()


def metric_samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) of every sample named `name`."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for found, value in metric_samples(metrics_text, name)
        if all(found.get(k) == v for k, v in labels.items())
    )


# A cost under this is "a cheap call": a bug that dropped such calls (or rounded them to zero)
# must show in every cost comparison, so tests that allow any slack check it is smaller than
# what those calls add up to.
CHEAP_CALL_USD = Decimal("0.001")
# genai-prices ids of the semconv provider names the tests send.
PRICE_PROVIDER_IDS = {"anthropic": "anthropic", "groq": "groq", "openai": "openai"}


def list_price(attributes: Mapping[str, Any], at: datetime) -> Decimal:
    """What genai-prices says a call with these span attributes costs at `at`: computed apart
    from the exporter's own price book, so that a pricing or counting bug shows as a difference."""
    usage = Usage(
        input_tokens=int(attributes["gen_ai.usage.input_tokens"]),
        output_tokens=int(attributes["gen_ai.usage.output_tokens"]),
    )
    provider = PRICE_PROVIDER_IDS[str(attributes["gen_ai.provider.name"])]
    model = str(attributes["gen_ai.request.model"])
    return calc_price(usage, model, provider_id=provider, genai_request_timestamp=at).total_price


def float_sum_slack(exact_total: Decimal, roundings: int) -> Decimal:
    """How far a float sum of positive amounts may stray from their exact Decimal total, for a
    float counter or a float API field that cannot be exact: each of `roundings` float roundings
    (a Decimal turned into a float, a float added to a running sum) is at most half an ulp, 2**-53
    relative, of a value no larger than the total."""
    return exact_total * roundings / Decimal(2**53)


def cheap_calls_cost(costs: Iterable[Decimal]) -> Decimal:
    """What calls under CHEAP_CALL_USD add up to: what a bug dropping them would lose."""
    return sum((c for c in costs if c < CHEAP_CALL_USD), Decimal(0))


def api_usd(exact: Decimal) -> float:
    """What the API answers for an exact amount: the API writes money as JSON numbers, and each
    amount is the nearest float to the database's exact numeric value, so a test compares with
    the float of the exact Decimal it derives, with ==."""
    return float(exact)


# Ratios the API computes in floats from amounts (a share of cost, a percent change, a cost per
# call or per 1,000 tokens) cannot be compared with ==: each float operation rounds by up to half
# an ulp (1.1e-16 relative) and a difference can magnify that. 1e-12 leaves room for a few such
# steps while a one-call error in these tests (a cent of a dollar, 1e-2) is ten orders beyond it.
RATIO_REL = 1e-12


def api_ratio(exact: Decimal | int) -> Any:
    """Matches a ratio the API computed in floats, against the exact Decimal ratio."""
    return pytest.approx(float(exact), rel=RATIO_REL, abs=0)


class QuietHandler(BaseHTTPRequestHandler):
    """The request handler of a fake server: answers in one call and logs nothing (a test's
    output shows what it asserts, not every request a fake saw)."""

    def answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server (the fakes of Telegram, Slack, webhooks, scrape targets, OTLP
    endpoints) on 127.0.0.1, answering on a thread of its own until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def child_pids(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def decode_workers(exporter_pid: int) -> list[int]:
    """An exporter's decode workers: children of the fork server, the exporter's child that
    forks them (none when it decodes on a thread)."""
    servers = [
        pid
        for pid in child_pids(exporter_pid)
        if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return [worker for server in servers for worker in child_pids(server)]
