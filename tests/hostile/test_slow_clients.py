"""Slow and stalled clients against a real `nexus-otel serve`, over raw sockets: uploads that
stop one byte short, heads that never end, more connections than the cap. None of them holds up
a normal sender, and the server closes each of them itself.

Deadlines are set short through the environment; the tests wait for states (the server has read
what was sent, the socket was closed by the server), never for a time to pass."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exporter.core.settings import Settings
from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import llm_attributes, new_span, post, request
from tests.support import ExporterProcess, start_exporter

pytestmark = pytest.mark.e2e

LARGEST_BODY = 32 * 1024 * 1024  # the default NEXUS_MAX_BODY_BYTES
# Guards against a hang, not timing assertions: far longer than any deadline set here.
WAIT_SECONDS = 60.0
RETRY_AFTER_SECONDS = Settings().retry_after_seconds  # the default, as senders are told


def address(exporter: ExporterProcess) -> tuple[str, int]:
    host, port = exporter.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _queued_bytes(client_ports: set[int], server_port: int) -> int:
    """Bytes these clients sent that the server's process has not read yet (IPv4 TCP): those
    unacknowledged on the clients' side plus those unread on the server's."""
    queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
        unacknowledged, unread = (int(n, 16) for n in fields[4].split(":"))
        if local in client_ports:
            queued += unacknowledged
        elif local == server_port and remote in client_ports:
            queued += unread
    return queued


def wait_until_read(sockets: list[socket.socket], server_port: int) -> None:
    """Until every byte these sockets sent is acknowledged and read by the server's process."""
    deadline = time.monotonic() + WAIT_SECONDS
    ports = {s.getsockname()[1] for s in sockets}
    while _queued_bytes(ports, server_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _queued_bytes(ports, server_port) == 0, "the server did not read what was sent"


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(WAIT_SECONDS)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def raw_connection(exporter: ExporterProcess, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address(exporter))
    if data:
        sock.sendall(data)
    return sock


def upload_head(declared: int) -> bytes:
    return (
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def short_deadlines(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    env = {
        "NEXUS_HEADER_TIMEOUT_SECONDS": "2",
        "NEXUS_BODY_TIMEOUT_SECONDS": "2",
        "NEXUS_BODY_MIN_BYTES_PER_SECOND": "1024",
    }
    process = start_exporter(database_url, tmp_path_factory.mktemp("slow"), env)
    try:
        yield process
    finally:
        process.stop()


def _send_normal_batch(exporter: ExporterProcess, database_url: str) -> None:
    spans = [new_span(llm_attributes(input_tokens=300, output_tokens=30)) for _ in range(2)]
    response = post(exporter.base_url, request(spans, "normal-sender").SerializeToString())
    assert response.status_code == 200, response.content
    assert len(stored_span_ids(database_url, spans)) == 2


def test_two_stalled_uploads_of_the_largest_body_do_not_block_a_normal_sender(
    short_deadlines: ExporterProcess, database_url: str
) -> None:
    stalled = [
        raw_connection(short_deadlines, upload_head(LARGEST_BODY) + b"\x00" * (LARGEST_BODY - 1))
        for _ in range(2)
    ]
    try:
        wait_until_read(stalled, address(short_deadlines)[1])
        _send_normal_batch(short_deadlines, database_url)
        # Each stalled upload is answered and closed by the server: the one past its share of
        # the bytes in flight at once with a 503, the other when its body stops arriving.
        answers = sorted(read_until_closed(sock).split(b"\r\n", 1)[0] for sock in stalled)
        assert answers == [b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 503 Service Unavailable"]
    finally:
        for sock in stalled:
            sock.close()
    _send_normal_batch(short_deadlines, database_url)
    log = short_deadlines.log()
    assert "closed connections too slow to send their request" in log
    assert "Traceback" not in log


def test_a_trickled_body_is_closed_with_408(short_deadlines: ExporterProcess) -> None:
    """Bytes that keep coming, but slower than the minimum rate, do not hold the connection."""
    sock = raw_connection(short_deadlines, upload_head(1_000_000))
    try:
        sock.setblocking(False)
        deadline = time.monotonic() + WAIT_SECONDS
        received = b""
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.send(b"\x00")  # one byte every 50 ms: 20 bytes/s, under 1024
            with contextlib.suppress(BlockingIOError):
                received = sock.recv(65536)
            time.sleep(0.05)  # the trickle's pace, not a synchronization
        assert received.startswith(b"HTTP/1.1 408 Request Timeout")
        assert b"request body too slow" in received
    finally:
        sock.close()


def test_heads_that_never_end_are_closed_and_others_are_served(
    short_deadlines: ExporterProcess, database_url: str
) -> None:
    partial = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
    heads = [raw_connection(short_deadlines, partial) for _ in range(200)]
    silent = [raw_connection(short_deadlines) for _ in range(20)]
    try:
        _send_normal_batch(short_deadlines, database_url)
        for sock in heads:
            answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
            assert answer.endswith(b"request head not received within 2 s\n")
        for sock in silent:  # never said anything: closed without a word
            assert read_until_closed(sock) == b""
    finally:
        for sock in heads + silent:
            sock.close()
    _send_normal_batch(short_deadlines, database_url)


def test_the_api_port_closes_heads_that_never_end(short_deadlines: ExporterProcess) -> None:
    host, _ = address(short_deadlines)
    api_port = int(short_deadlines.api_url.rsplit(":", 1)[1])
    with socket.create_connection((host, api_port)) as sock:
        sock.sendall(b"GET /api/budgets HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout")


def test_connections_beyond_the_cap_are_refused(database_url: str, tmp_path: Path) -> None:
    env = {"NEXUS_MAX_CONNECTIONS": "20", "NEXUS_HEADER_TIMEOUT_SECONDS": "600"}
    exporter = start_exporter(database_url, tmp_path, env)
    held: list[socket.socket] = []
    try:
        held = [raw_connection(exporter) for _ in range(20)]
        with raw_connection(exporter) as over:
            answer = read_until_closed(over)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1\r\n" in answer
        assert answer.endswith(b"over the cap of 20 open connections\n")
        for sock in held:
            sock.close()
        held = []
        _wait_for_health(exporter)
        assert "refused connections over the connection cap" in exporter.log()
    finally:
        for sock in held:
            sock.close()
        exporter.stop()


def _wait_for_health(exporter: ExporterProcess) -> None:
    """Once the closed connections are gone from the server's count, it answers again."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{exporter.base_url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the exporter did not answer after the held connections closed")


def _response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body); b"" when the server closed."""
    received = b""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = (
            next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if head
            else 0
        )
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
        return head + b"\r\n\r\n" + body if head else b""
    return b""


def test_a_sender_waiting_out_retry_after_finds_its_connection_open(
    exporter: ExporterProcess,
) -> None:
    """A 503 says Retry-After: 5 (the default); a sender that waits that long and sends its next
    request on the same connection must find it open, not closed under it by the server's
    idle timeout at the same moment (uvicorn's is 5 s: the request was lost to the race)."""
    request_head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with raw_connection(exporter, request_head) as sock:
        sock.settimeout(WAIT_SECONDS)
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(RETRY_AFTER_SECONDS + 0.5)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request_head)
        assert _response(sock).startswith(b"HTTP/1.1 200"), "the idle connection was closed"
