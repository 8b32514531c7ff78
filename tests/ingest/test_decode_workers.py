"""Decoding runs in worker processes (or on a thread): the same rows either way, errors keep
their status on the way back, and the workers never outlive the exporter."""

from __future__ import annotations

import gzip
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.payloads import llm_attributes, new_span, post, request
from tests.support import child_pids, decode_workers, query, start_exporter

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> list[int]:
    return [d for child in child_pids(pid) for d in (child, *_descendants(child))]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("processes", ["2", "0"])
def test_the_same_rows_whether_decoded_in_processes_or_on_a_thread(
    database_url: str, tmp_path: Path, processes: str
) -> None:
    exporter = start_exporter(database_url, tmp_path, {"NEXUS_DECODE_PROCESSES": processes})
    try:
        helpers = [p for p in _descendants(exporter.process.pid) if _running(p)]
        # Two workers, the fork server they are forked from and multiprocessing's resource
        # tracker; none when decoding on a thread.
        assert len(helpers) == (4 if processes == "2" else 0)
        if processes == "2":
            assert len(decode_workers(exporter.process.pid)) == 2
        spans = [new_span(llm_attributes(input_tokens=100 + i, output_tokens=i)) for i in range(50)]
        body = request(spans, f"svc-{processes}").SerializeToString()
        assert post(exporter.base_url, body).status_code == 200
        bomb = gzip.compress(b"\x00" * (40 * 1024 * 1024))  # inflates past the 32 MiB limit
        refused = post(exporter.base_url, bomb, **{"Content-Encoding": "gzip"})
        assert refused.status_code == 413 and b"inflates past" in refused.content
    finally:
        exporter.stop()
    [(rows, input_tokens, output_tokens)] = query(
        database_url,
        "SELECT count(*), sum(input_tokens), sum(output_tokens) FROM api_calls "
        "WHERE service_name = %s",
        (f"svc-{processes}",),
    )
    assert (rows, input_tokens, output_tokens) == (50, sum(range(100, 150)), sum(range(50)))


def test_workers_end_when_the_exporter_is_killed(database_url: str, tmp_path: Path) -> None:
    exporter = start_exporter(database_url, tmp_path, {"NEXUS_DECODE_PROCESSES": "2"})
    children = _descendants(exporter.process.pid)
    assert len(children) == 4 and len(decode_workers(exporter.process.pid)) == 2
    os.kill(exporter.process.pid, signal.SIGKILL)  # no chance to shut its workers down
    deadline = time.monotonic() + 10
    while any(_running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _running(c)]
    exporter.process.wait()


async def test_a_full_decode_queue_is_a_503_before_the_body_is_read(database_url: str) -> None:
    """More requests waiting to be decoded than the workers need: refused at once, with
    Retry-After, so waiting bodies cannot pile up in memory."""
    import httpx

    from exporter.core.settings import Settings
    from exporter.ingest.app import create_ingest_app

    settings = Settings(database_url=database_url, decode_processes=0, retry_after_seconds=3)
    app = create_ingest_app(settings, database_url)
    decoder = app.state.ingestor.decoder
    body = request([new_span(llm_attributes())], "svc-queue").SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            decoder.pending = decoder.max_pending  # as if that many were being decoded
            refused = await client.post("/v1/traces", content=body, headers=headers)
            decoder.pending = 0
            accepted = await client.post("/v1/traces", content=body, headers=headers)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert b"4 requests are already waiting to be decoded" in refused.content
    assert accepted.status_code == 200 and decoder.pending == 0


async def test_a_burst_never_has_more_waiting_to_be_decoded_than_the_bound(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that all arrive at once pass the check made before their bodies are read; the
    bound holds all the same once their bodies are in: the excess is a 503, and nothing of it is
    stored."""
    import asyncio
    from collections.abc import AsyncIterator

    import httpx

    from exporter.core.settings import Settings
    from exporter.ingest import decode
    from exporter.ingest.app import create_ingest_app

    settings = Settings(database_url=database_url, decode_processes=0, retry_after_seconds=2)
    app = create_ingest_app(settings, database_url)
    decoder = app.state.ingestor.decoder
    seen: list[int] = []
    decode_body = decode.decode_body

    def counting(*args: object) -> decode.Conversion:
        seen.append(decoder.pending)  # requests handed to the decoder, this one included
        return decode_body(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(decode, "decode_body", counting)
    bodies = [
        request([new_span(llm_attributes()) for _ in range(200)], "svc-burst").SerializeToString()
        for _ in range(12)
    ]

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):  # arrives in pieces, as over a network
            await asyncio.sleep(0)
            yield body[start : start + 4096]

    headers = {"Content-Type": "application/x-protobuf"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            answers = await asyncio.gather(
                *(client.post("/v1/traces", content=chunked(b), headers=headers) for b in bodies)
            )
    refused = [a for a in answers if a.status_code == 503]
    assert max(seen) <= decoder.max_pending == 4
    assert refused and all(b"waiting to be decoded" in a.content for a in refused)
    assert all(a.headers["retry-after"] == "2" for a in refused)
    accepted = sum(a.status_code == 200 for a in answers)
    assert accepted + len(refused) == len(bodies) and decoder.pending == 0
    [(rows,)] = query(
        database_url, "SELECT count(*) FROM api_calls WHERE service_name = 'svc-burst'"
    )
    assert rows == 200 * accepted


def test_a_span_that_normalizing_fails_on_is_refused_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug met on one odd span costs that span, not its batch (a 500 lost them all)."""
    from exporter.ingest import decode, otlp

    read = decode.to_llm_call

    def failing(raw: Any, **kwargs: Any) -> Any:
        if raw.name == "odd":
            raise ValueError("unexpected https://x.example/?key=sk-live-SECRET")
        return read(raw, **kwargs)

    monkeypatch.setattr(decode, "to_llm_call", failing)
    good, odd = new_span(llm_attributes()), new_span(llm_attributes(), name="odd")
    body = request([good, odd]).SerializeToString()
    conversion = decode.decode_body(body, otlp.PROTOBUF, None, decode.DecodeOptions(1 << 20))
    assert conversion.received == 2 and conversion.batch and len(conversion.batch) == 1
    assert conversion.rejections == [
        f"span {odd.span_id.hex()}: could not be read: "
        "ValueError: unexpected https://x.example/?key=[REDACTED]"
    ]
    assert "could not be read" in caplog.text and "SECRET" not in caplog.text


def test_a_worker_that_dies_is_replaced_and_costs_at_most_a_retry(
    database_url: str, tmp_path: Path
) -> None:
    exporter = start_exporter(database_url, tmp_path, {"NEXUS_DECODE_PROCESSES": "2"})
    try:
        os.kill(decode_workers(exporter.process.pid)[0], signal.SIGKILL)  # out of memory, say
        spans = [new_span(llm_attributes()) for _ in range(20)]
        body = request(spans, "svc-worker-died").SerializeToString()
        answers = [post(exporter.base_url, body).status_code for _ in range(3)]
    finally:
        exporter.stop()
    assert "a decode worker ended unexpectedly; starting new workers" in exporter.log()
    # The request the dead worker held is a 503 (retried); then new workers decode as before.
    assert answers[-1] == 200 and answers.count(503) <= 1 and 500 not in answers
    [(rows,)] = query(
        database_url, "SELECT count(*) FROM api_calls WHERE service_name = 'svc-worker-died'"
    )
    assert rows == 20


_WATCH_WITHOUT_PIDFD = """
import os, sys
from exporter.ingest import decode
del os.pidfd_open  # as on a system without pidfds (macOS): the worker polls instead
decode._PARENT_CHECK_SECONDS = 0.05
decode._exit_with(int(sys.argv[1]))
"""


def test_without_pidfds_a_worker_ends_once_the_exporter_is_gone(tmp_path: Path) -> None:
    """Where the system has no pidfds a worker polls for the exporter (`decode._exists`): it
    stays while the exporter lives, and ends once it is gone."""
    import subprocess
    import sys

    exporter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    root = Path(__file__).resolve().parents[2]
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCH_WITHOUT_PIDFD, str(exporter.pid)],
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            watcher.wait(timeout=1.0)  # the exporter lives: the worker stays
        exporter.kill()
        exporter.wait()  # reaped, as the exporter's own parent does
        assert watcher.wait(timeout=10) == 0
    finally:
        for process in (exporter, watcher):
            if process.poll() is None:
                process.kill()
                process.wait()
