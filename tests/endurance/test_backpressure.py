"""The write queue is bounded: when the database cannot keep up, ingest answers 503 with
Retry-After at once, without reading the body, instead of queueing more."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.hostile.payloads import llm_attributes, new_span, request
from tests.support import metric_value, query, start_exporter

pytestmark = pytest.mark.e2e

ENV = {
    "NEXUS_QUEUE_MAX_ROWS": "3000",
    "NEXUS_WRITE_TIMEOUT_SECONDS": "30",
    "NEXUS_RETRY_AFTER_SECONDS": "2",
}


def _batch(service: str) -> bytes:
    spans = [new_span(llm_attributes()) for _ in range(1000)]
    return request(spans, service).SerializeToString()


def _post(base_url: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/x-protobuf"}
    return httpx.post(f"{base_url}/v1/traces", content=body, headers=headers, timeout=60)


def test_a_full_queue_answers_503_with_retry_after_and_does_not_grow(
    database_url: str, tmp_path: Path
) -> None:
    exporter = start_exporter(database_url, tmp_path, ENV)
    blocker = psycopg.connect(database_url)
    try:
        blocker.execute("LOCK TABLE api_calls IN ACCESS EXCLUSIVE MODE")  # the database stalls
        with ThreadPoolExecutor(3) as pool:
            waiting = [
                pool.submit(_post, exporter.base_url, _batch(f"queued-{i}")) for i in range(3)
            ]
            deadline = time.monotonic() + 20
            depth = 0.0
            while depth < 3000 and time.monotonic() < deadline:
                metrics = httpx.get(f"{exporter.base_url}/metrics").text
                depth = metric_value(metrics, "nexus_exporter_queue_depth_rows")
                time.sleep(0.1)
            assert depth == 3000
            started = time.monotonic()
            refused = _post(exporter.base_url, _batch("refused") * 20)  # 20 MB unread
            assert time.monotonic() - started < 2
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "2"
            assert b"already waiting for the database" in refused.content
            metrics = httpx.get(f"{exporter.base_url}/metrics").text
            assert metric_value(metrics, "nexus_exporter_queue_depth_rows") == 3000
            blocker.rollback()  # the database catches up
            assert [f.result().status_code for f in waiting] == [200, 200, 200]
    finally:
        blocker.close()
        exporter.stop()
    counts = dict(
        query(
            database_url,
            "SELECT service_name, count(*) FROM api_calls "
            "WHERE service_name LIKE 'queued-%' OR service_name = 'refused' GROUP BY 1",
        )
    )
    assert counts == {"queued-0": 1000, "queued-1": 1000, "queued-2": 1000}


def _slow_upload(base_url: str, declared: int, sent: int) -> socket.socket:
    """A request that announces `declared` bytes of body, sends `sent` of them, and stalls."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\x00" * sent)
    return sock


def test_bodies_being_received_are_bounded_too(database_url: str, tmp_path: Path) -> None:
    """Huge batches arriving at once meet a 503 + Retry-After instead of piling up in memory;
    senders that announce a large body and send nothing hold nothing."""
    env = {"NEXUS_MAX_BODY_BYTES": "10000000", "NEXUS_RETRY_AFTER_SECONDS": "2"}
    exporter = start_exporter(database_url, tmp_path, env)  # 2 x 10 MB may be in flight
    big = b"\x00" * 5_000_000
    stalled: list[socket.socket] = []
    try:
        stalled += [_slow_upload(exporter.base_url, 9_000_000, 2) for _ in range(4)]
        time.sleep(1)
        assert _post(exporter.base_url, big).status_code == 400  # admitted (and malformed)

        stalled += [_slow_upload(exporter.base_url, 9_000_000, 8_900_000) for _ in range(2)]
        time.sleep(1)
        # Past its share (a quarter of the 20 MB), a body waits for a share to be free: the
        # second stalled upload was refused, and so is another large body. A smaller one,
        # within its share, would still be admitted.
        refused = _post(exporter.base_url, b"\x00" * 9_000_000)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert b"bytes of other requests are being received" in refused.content
        for sock in stalled:
            sock.close()
        time.sleep(1)
        assert _post(exporter.base_url, big).status_code == 400
        assert _post(exporter.base_url, _batch("after-burst")).status_code == 200
    finally:
        for sock in stalled:
            sock.close()
        exporter.stop()
