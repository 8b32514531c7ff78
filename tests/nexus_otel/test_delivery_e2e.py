"""An app instrumented as the README shows, calling Groq through its official SDK (against the
provider simulator) and sending straight to a real `nexus-otel serve`: every call it made is
stored exactly once, through an exporter outage of a minute and through the app being killed
with SIGKILL while the exporter was away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.simulator import ProviderSimulator
from tests.support import free_port, fresh_database, query, start_exporter

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 60  # the acceptance's minute: four times the SDK's own ~15 s of retries
WAIT_SECONDS = 120  # until the spool has been sent; ends as soon as it has

APP = """
import pathlib, sys, time
import groq
import nexus_otel

endpoint, spool, groq_url, stop_file, prefix = sys.argv[1:6]
nexus_otel.instrument(service_name="durable-app", endpoint=endpoint, spool=spool)
client = groq.Groq(api_key="gsk_test_durable", base_url=groq_url, max_retries=0)
number = 0
while not pathlib.Path(stop_file).exists():
    call_id = f"{prefix}-{number:04d}"
    with nexus_otel.operation("durable_delivery", correlation_id=call_id):
        client.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": "hi"}]
        )
    print(call_id, flush=True)  # the call has returned: its span has ended
    number += 1
    time.sleep(0.25)  # four calls a second, as in the report that found the loss
nexus_otel.shutdown()
"""


class App:
    """The app as its own process; `calls` are the ids of the calls it finished."""

    def __init__(self, endpoint: str, spool: Path, sim: ProviderSimulator, prefix: str) -> None:
        self.stop_file = spool.parent / f"stop-{prefix}"
        # stderr goes to a file so that only the reader thread reads stdout: communicate()
        # would race it for the last ids printed and lose one.
        self.stderr_file = spool.parent / f"stderr-{prefix}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.stderr_file.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(APP), endpoint, str(spool),
                 sim.groq_base_url, str(self.stop_file), prefix],
                env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        self.calls: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.calls.append(line.strip())

    def wait_for_calls(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while len(self.calls) < count:
            assert self.process.poll() is None, self.stderr_file.read_text()
            assert time.monotonic() < deadline, f"only {len(self.calls)} calls"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.returncode is not None:
            return
        self.stop_file.touch()
        self.process.wait(timeout=WAIT_SECONDS)
        self._reader.join(10)
        assert not self._reader.is_alive()
        assert self.process.returncode == 0, self.stderr_file.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)


@pytest.fixture(scope="module")
def database(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def stored(database: str, prefix: str) -> dict[str, int]:
    rows = query(
        database,
        "SELECT correlation_id, count(*) FROM api_calls WHERE correlation_id LIKE %s "
        "GROUP BY correlation_id",
        (prefix + "-%",),
    )
    return {call_id: count for call_id, count in rows}


def wait_until_stored(database: str, prefix: str, calls: list[str]) -> dict[str, int]:
    deadline = time.monotonic() + WAIT_SECONDS
    while set(rows := stored(database, prefix)) < set(calls) and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def test_every_call_is_stored_once_through_a_minute_without_the_exporter(
    database: str, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    port = free_port()
    exporter = start_exporter(database, tmp_path, port=port)
    app = App(f"http://127.0.0.1:{port}", tmp_path / "spool", simulator, "outage")
    try:
        app.wait_for_calls(8)
        exporter.stop()
        before_outage = len(app.calls)
        time.sleep(OUTAGE_SECONDS)
        during_outage = len(app.calls) - before_outage
        exporter = start_exporter(database, tmp_path, port=port)
        app.wait_for_calls(len(app.calls) + 8)
        made = list(app.calls)  # the app goes on calling meanwhile
        rows = wait_until_stored(database, "outage", made)
        app.stop()
        after_stop = stored(database, "outage")
    finally:
        app.stop()
        exporter.stop()
    assert during_outage >= 4 * OUTAGE_SECONDS // 2  # the app kept calling all along
    # Delivered while the app ran, each once ...
    assert {call: rows.get(call) for call in made} == dict.fromkeys(made, 1)
    assert set(rows.values()) == {1}
    # ... and, after its shutdown(), every call it made.
    assert after_stop == dict.fromkeys(app.calls, 1)


def test_calls_made_before_a_sigkill_during_an_outage_are_stored_once_by_the_next_run(
    database: str, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    port = free_port()
    endpoint, spool = f"http://127.0.0.1:{port}", tmp_path / "spool"
    first = App(endpoint, spool, simulator, "killed")  # nothing listens on the port yet
    first.wait_for_calls(12)
    first.kill()
    assert len(first.calls) >= 12 and list(spool.glob("*.otlp"))
    exporter = start_exporter(database, tmp_path, port=port)
    second = App(endpoint, spool, simulator, "restarted")
    try:
        killed = wait_until_stored(database, "killed", first.calls)
        second.wait_for_calls(4)
    finally:
        second.stop()
        exporter.stop()
    # SIGKILL may land between a call's span ending and its id being printed: that one call,
    # the next id, may be stored too, once. Every call printed is stored exactly once.
    unprinted = f"killed-{len(first.calls):04d}"
    assert {call: killed.get(call) for call in first.calls} == dict.fromkeys(first.calls, 1)
    assert set(killed) <= {*first.calls, unprinted} and set(killed.values()) == {1}
    assert stored(database, "restarted") == dict.fromkeys(second.calls, 1)
