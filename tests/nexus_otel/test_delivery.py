"""Spans reach the exporter whatever it does meanwhile: refuse connections, answer 503 with a
Retry-After, refuse a batch for good, hang; and the spool on disk keeps its bound and its policy,
shared by several processes.

The exporter here is `OtlpSink`, which answers as each test scripts; the end-to-end tests with the
real `nexus-otel serve` are in `test_delivery_e2e.py`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace

import nexus_otel
from nexus_otel._spool import count_spans
from tests.nexus_otel.otlp_sink import Answer, OtlpSink
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60  # generous: a loaded machine is slow, and every wait ends as soon as it can


def wait_until(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def emit(*names: str) -> None:
    """Ends one span per name through the global provider `instrument()` set."""
    tracer = trace.get_tracer("tests.delivery")
    for name in names:
        tracer.start_span(name).end()


def spooled_spans(directory: Path) -> int:
    """Counted from the files' contents, not their names (an open segment's name says 0)."""
    return sum(count_spans(path.read_bytes()) for path in directory.glob("*.otlp"))


@pytest.fixture
def instrumented(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """`instrumented(port)`: instruments with a spool of its own sending to that port."""

    def start(port: int, **options: object) -> Path:
        spool = tmp_path / "spool"
        nexus_otel.instrument(
            service_name="delivery", endpoint=f"http://127.0.0.1:{port}", spool=spool, **options
        )
        return spool

    yield start
    nexus_otel.uninstrument()


def test_spans_wait_in_the_spool_while_nothing_listens_and_arrive_once(
    instrumented: Callable[..., Path],
) -> None:
    port = free_port()
    spool = instrumented(port)
    names = [f"call-{n:02d}" for n in range(20)]
    emit(*names[:5])
    nexus_otel.force_flush()  # connection refused: the batch goes to disk
    emit(*names[5:])  # each written to disk as it ends, while the exporter is away
    status = nexus_otel.delivery_status()
    assert not status.exporter_reachable and "ConnectionError" in status.last_error
    assert status.spool_directory == str(spool)
    assert status.spooled_spans == spooled_spans(spool) == 20
    with OtlpSink(port) as sink:
        wait_until(lambda: sum(sink.stored().values()) >= 20, "the spool is sent")
        wait_until(lambda: nexus_otel.delivery_status().pending_batches == 0, "the spool is empty")
    assert sink.stored() == dict.fromkeys(names, 1)
    status = nexus_otel.delivery_status()
    assert status.exporter_reachable and status.delivered_spans == 20
    assert list(spool.glob("*")) == []


def test_a_503_retry_after_is_honoured_before_the_batch_is_sent_again(
    instrumented: Callable[..., Path],
) -> None:
    with OtlpSink() as sink:
        sink.answer = lambda number, names: (
            Answer(503, {"Retry-After": "2"}) if number == 0 else Answer()
        )
        instrumented(sink.port)
        emit("first")
        nexus_otel.force_flush()
        wait_until(lambda: sink.stored() == {"first": 1}, "the batch is sent again")
    refused, accepted = sink.requests
    assert (refused.status, accepted.status) == (503, 200)
    assert accepted.at - refused.at >= 2.0


def test_a_batch_refused_for_good_is_dropped_alone_counted_and_logged(
    instrumented: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    instrumented(port)
    emit("probe")
    nexus_otel.force_flush()
    emit("before", "poison", "after")  # appended to one spool file as they end
    with OtlpSink(port) as sink, caplog.at_level(logging.WARNING, "nexus_otel"):
        sink.answer = lambda number, names: Answer(400 if "poison" in names else 200)
        wait_until(lambda: nexus_otel.delivery_status().pending_batches == 0, "the spool is sent")
    assert sink.stored() == {"probe": 1, "before": 1, "after": 1}
    assert nexus_otel.delivery_status().refused_spans == 1
    assert any("refused 1 spans: HTTP 400" in r.getMessage() for r in caplog.records)


def test_a_span_the_exporter_refuses_does_not_take_its_batch_with_it(
    instrumented: Callable[..., Path],
) -> None:
    with OtlpSink() as sink:
        sink.answer = lambda number, names: Answer(400 if "poison" in names else 200)
        instrumented(sink.port)
        names = [f"call-{n}" for n in range(7)]
        emit(*names[:3], "poison", *names[3:])  # one batch
        nexus_otel.force_flush()
    assert sink.stored() == dict.fromkeys(names, 1)
    status = nexus_otel.delivery_status()
    assert (status.refused_spans, status.delivered_spans, status.spooled_spans) == (1, 7, 0)


def test_a_full_spool_drops_its_oldest_batches_counts_them_and_says_so_once(
    instrumented: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("NEXUS_OTEL_SPOOL_MAX_BYTES", "3000")
    spool = instrumented(port)
    emit("probe")
    nexus_otel.force_flush()
    names = [f"call-{n:02d}" for n in range(40)]
    with caplog.at_level(logging.WARNING, "nexus_otel"):
        emit(*names)
    files = list(spool.glob("*.otlp"))
    kept = sum(count_spans(path.read_bytes()) for path in files)
    status = nexus_otel.delivery_status()
    assert status.pending_bytes == sum(path.stat().st_size for path in files) <= 3000
    assert 0 < kept < 40 and status.dropped_spans == 41 - kept
    warnings = [r for r in caplog.records if "dropped from the spool" in r.getMessage()]
    assert len(warnings) == 1 and "3000 bytes" in warnings[0].getMessage()
    with OtlpSink(port) as sink:
        wait_until(lambda: nexus_otel.delivery_status().pending_batches == 0, "the spool is sent")
    # The newest were kept, all of them, and nothing else was lost.
    assert sink.stored() == dict.fromkeys(names[-kept:], 1)


def test_shutdown_stops_waiting_for_an_exporter_that_does_not_answer(
    instrumented: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_OTEL_SHUTDOWN_SECONDS", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    with OtlpSink() as sink:
        sink.answer = lambda number, names: Answer(hang=True)
        spool = instrumented(sink.port)
        emit("queued-1", "queued-2")
        started = time.monotonic()
        nexus_otel.shutdown()
        elapsed = time.monotonic() - started
        # Without the bound, the SDK would wait out the 60 s timeout of each request.
        assert elapsed < 10, f"shutdown took {elapsed:.1f} s"
        assert spooled_spans(spool) == 2
    with OtlpSink(sink.port) as back:
        instrumented(back.port)  # the next run sends what the last one left
        wait_until(lambda: back.stored() == {"queued-1": 1, "queued-2": 1}, "the spool is sent")


SPOOLER = """
import sys, nexus_otel
from opentelemetry import trace
nexus_otel.instrument(service_name="shared", endpoint=sys.argv[1], spool=sys.argv[2])
tracer = trace.get_tracer("tests.delivery")
for n in range(int(sys.argv[4])):
    tracer.start_span(f"{sys.argv[3]}-{n:03d}").end()
nexus_otel.shutdown()
"""

DRAINER = """
import sys, time, nexus_otel
nexus_otel.instrument(service_name="shared", endpoint=sys.argv[1], spool=sys.argv[2])
deadline = time.monotonic() + 120
while nexus_otel.delivery_status().pending_batches and time.monotonic() < deadline:
    time.sleep(0.05)
nexus_otel.shutdown()
"""


def _run_together(script: str, argument_lists: list[list[str]]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEXUS_OTEL_SHUTDOWN_SECONDS": "5"}
    code = textwrap.dedent(script)
    processes = [
        subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE)
        for args in argument_lists
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr.decode()


def test_processes_sharing_a_spool_send_each_batch_once(tmp_path: Path) -> None:
    port, spool = free_port(), tmp_path / "shared"
    url = f"http://127.0.0.1:{port}"
    _run_together(SPOOLER, [[url, str(spool), f"app{i}", "60"] for i in range(3)])
    assert spooled_spans(spool) == 180
    with OtlpSink(port) as sink:
        _run_together(DRAINER, [[url, str(spool)] for _ in range(3)])
    expected = {f"app{i}-{n:03d}": 1 for i in range(3) for n in range(60)}
    assert sink.stored() == expected  # every span, and none sent twice
    assert list(spool.glob("*")) == []


def test_a_bad_bound_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEXUS_OTEL_SPOOL_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="NEXUS_OTEL_SPOOL_MAX_BYTES='lots'"):
        nexus_otel.instrument(endpoint="http://127.0.0.1:9", spool=tmp_path)
    assert nexus_otel.delivery_status().spool_directory is None


def test_the_spool_defaults_to_one_directory_per_endpoint_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    directories = []
    for port in (4318, 4319):
        nexus_otel.instrument(endpoint=f"http://127.0.0.1:{port}")
        directories.append(nexus_otel.delivery_status().spool_directory)
        nexus_otel.uninstrument()
    assert len(set(directories)) == 2
    assert all(d and d.startswith(f"{tmp_path}/nexus-otel/spool/") for d in directories)
    monkeypatch.setenv("NEXUS_OTEL_SPOOL_DIR", "off")
    nexus_otel.instrument(endpoint="http://127.0.0.1:4318")
    try:
        assert nexus_otel.delivery_status().spool_directory is None
    finally:
        nexus_otel.uninstrument()


def test_an_app_with_its_own_provider_gets_the_spool_from_nexus_otel_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `opentelemetry-instrument` apps do: the distro made the provider, and
    `NEXUS_OTEL_ENDPOINT` (with `OTEL_TRACES_EXPORTER=none`) adds the spooling exporter to it."""
    from opentelemetry.sdk.trace import TracerProvider

    port = free_port()
    monkeypatch.setenv("NEXUS_OTEL_ENDPOINT", f"http://127.0.0.1:{port}")
    provider = TracerProvider()
    nexus_otel.instrument(tracer_provider=provider, spool=tmp_path / "spool")
    try:
        provider.get_tracer("tests.delivery").start_span("own-provider").end()
        nexus_otel.force_flush()
        assert spooled_spans(tmp_path / "spool") == 1
        with OtlpSink(port) as sink:
            wait_until(lambda: sink.stored() == {"own-provider": 1}, "the spool is sent")
    finally:
        nexus_otel.uninstrument()


FORKING = """
import os, sys, time, nexus_otel
from opentelemetry import trace
nexus_otel.instrument(service_name="forked", endpoint=sys.argv[1], spool=sys.argv[2])
tracer = trace.get_tracer("tests.delivery")
tracer.start_span("parent").end()
nexus_otel.force_flush()  # refused: the parent knows the exporter is away, and spools
pid = os.fork()
if pid == 0:  # a worker: its spans and its own sending, after the parent has gone
    for n in range(5):
        tracer.start_span(f"child-{n}").end()
    deadline = time.monotonic() + 60
    while nexus_otel.delivery_status().pending_batches and time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(0 if nexus_otel.delivery_status().pending_batches == 0 else 3)
nexus_otel.shutdown()  # the parent stops sending; only the child can deliver now
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_worker_sends_the_spool_itself(tmp_path: Path) -> None:
    with OtlpSink() as sink:
        sink.answer = lambda number, names: Answer(503) if number == 0 else Answer()
        url, spool = sink.base_url, tmp_path / "spool"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FORKING), url, str(spool)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        expected = {"parent": 1, **{f"child-{n}": 1 for n in range(5)}}
        assert sink.stored() == expected


DISK_FULL = """
import os, resource, signal, sys
from pathlib import Path
from opentelemetry import trace
import nexus_otel

url, spool = sys.argv[1], Path(sys.argv[2])
nexus_otel.instrument(service_name="delivery", endpoint=url, spool=spool)
tracer = trace.get_tracer("tests.delivery")
tracer.start_span("probe").end()
nexus_otel.force_flush()  # refused: the exporter is away, spans now go one by one to a segment
for n in range(3):
    tracer.start_span(f"before-{n}").end()
[segment] = [path for path in spool.glob("*-0.otlp")]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the bound, write() fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + 40, hard))
tracer.start_span("cut-" + "x" * 200).end()  # written in part: the disk is full
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
for n in range(3):
    tracer.start_span(f"after-{n}").end()
print(nexus_otel.delivery_status().dropped_spans)
nexus_otel.shutdown()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="a file size limit stands for a full disk")
def test_a_write_the_full_disk_cut_short_loses_only_its_own_span(
    instrumented: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEXUS_OTEL_SHUTDOWN_SECONDS": "0.2"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DISK_FULL), f"http://127.0.0.1:{port}",
         str(tmp_path / "spool")], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]  # the span cut short, counted as dropped
    with OtlpSink(port) as sink:
        instrumented(port)  # the next run sends the spool
        wait_until(lambda: nexus_otel.delivery_status().pending_batches == 0, "the spool is sent")
    expected = ["probe", *(f"before-{n}" for n in range(3)), *(f"after-{n}" for n in range(3))]
    assert sink.stored() == dict.fromkeys(expected, 1)


@pytest.mark.usefixtures("instrumented")  # for its uninstrument()
def test_a_key_in_the_endpoints_query_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens: the error names the URL
    url = f"http://127.0.0.1:{port}/v1/traces?api_key=otlp-secret-31d7"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
    nexus_otel.instrument(service_name="delivery", spool=tmp_path / "spool")
    with caplog.at_level(logging.WARNING, "nexus_otel"):
        emit("probe")
        nexus_otel.force_flush()
    last_error = nexus_otel.delivery_status().last_error
    assert "/v1/traces?api_key=[REDACTED]" in last_error and "ConnectionError" in last_error
    assert "otlp-secret-31d7" not in caplog.text + last_error
    assert "api_key=[REDACTED]" in caplog.text
