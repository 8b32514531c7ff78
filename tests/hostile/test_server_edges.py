"""The server's edges against a real `nexus-otel serve`: API body limits, NaN and Infinity in
budgets, a client dropping mid-body, a burst of health checks, WebSocket clients that never
read, and an open API said aloud (or refused) at start-up."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.hostile.payloads import llm_attributes, new_span, post, request
from tests.hostile.test_slow_clients import WAIT_SECONDS, address
from tests.support import ExporterProcess, free_port, fresh_database, query, start_exporter

pytestmark = pytest.mark.e2e

API_LIMIT = 1024 * 1024  # the default NEXUS_API_MAX_BODY_BYTES
WEBHOOK_LIMIT = 4 * 1024 * 1024  # the default NEXUS_ALERT_WEBHOOK_MAX_BODY_BYTES
JSON_HEADERS = {"Content-Type": "application/json"}


def _budget(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "period": "daily", "amount_usd": "10", **fields}


def _padded_json(size: int) -> bytes:
    """A budget body of exactly `size` bytes (JSON whitespace makes up the rest)."""
    body = f'{{"name": "padded-{uuid.uuid4().hex}", "period": "daily", "amount_usd": "1"}}'
    body = body.encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


@pytest.mark.parametrize("chunked", [False, True])
def test_api_bodies_over_the_limit_are_413(exporter: ExporterProcess, chunked: bool) -> None:
    body = _padded_json(API_LIMIT + 1)
    content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = httpx.post(
        f"{exporter.api_url}/api/budgets", content=content, headers=JSON_HEADERS, timeout=30
    )
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"request body exceeds the {API_LIMIT}-byte limit of /api/budgets"
    }
    at_limit = httpx.post(
        f"{exporter.api_url}/api/budgets", content=_padded_json(API_LIMIT), headers=JSON_HEADERS
    )
    assert at_limit.status_code == 201, at_limit.text


def _webhook_payload(alerts: int, padding: int = 0) -> dict[str, object]:
    alert = {
        "status": "firing",
        "labels": {"alertname": "LargePayload", "pad": "x" * padding},
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
    }
    return {
        "status": "firing",
        "alerts": [{**alert, "fingerprint": f"fp-{i}"} for i in range(alerts)],
    }


def test_the_alert_webhook_refuses_a_huge_payload(exporter: ExporterProcess) -> None:
    url = f"{exporter.api_url}/api/alerts/webhook"
    huge = httpx.post(url, json=_webhook_payload(250, padding=20_000), timeout=30)
    assert huge.status_code == 413
    assert huge.json() == {
        "detail": f"request body exceeds the {WEBHOOK_LIMIT}-byte limit of /api/alerts/webhook"
    }
    # Past the bound of other routes, within the webhook's: recorded.
    large = httpx.post(url, json=_webhook_payload(100, padding=20_000), timeout=30)
    assert large.status_code == 200, large.text
    assert large.json() == {"received": 100, "recorded": 100}


@pytest.mark.parametrize(
    "field, value",
    [
        ("amount_usd", "NaN"),
        ("amount_usd", "Infinity"),
        ("amount_usd", "-Infinity"),
        ("warning_threshold_pct", "NaN"),
        ("warning_threshold_pct", "Infinity"),
        ("amount_usd", '"NaN"'),
    ],
)
def test_nan_and_infinity_in_a_budget_are_422(
    exporter: ExporterProcess, field: str, value: str
) -> None:
    name = f"non-finite-{uuid.uuid4().hex}"
    body = f'{{"name": "{name}", "period": "daily", "amount_usd": "5", "{field}": {value}}}'
    created = httpx.post(f"{exporter.api_url}/api/budgets", content=body, headers=JSON_HEADERS)
    assert created.status_code == 422, created.text
    [error] = created.json()["detail"]
    assert (error["loc"], error["msg"]) == (["body", field], "Input should be a finite number")
    budget = httpx.post(f"{exporter.api_url}/api/budgets", json=_budget(name))
    assert budget.status_code == 201, budget.text
    patch = f'{{"{field}": {value}}}'
    url = f"{exporter.api_url}/api/budgets/{budget.json()['id']}"
    patched = httpx.patch(url, content=patch, headers=JSON_HEADERS)
    assert patched.status_code == 422, patched.text
    [error] = patched.json()["detail"]
    assert (error["loc"], error["msg"]) == (["body", field], "Input should be a finite number")
    assert httpx.get(url).json()["amount_usd"] == 10.0


def test_a_client_dropping_mid_body_logs_one_line(exporter: ExporterProcess) -> None:
    body = request([new_span(llm_attributes())], "dropping-client").SerializeToString()
    head = (
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {len(body) + 100_000}\r\n\r\n"
    ).encode()
    with socket.create_connection(address(exporter)) as sock:
        sock.sendall(head + body)
    line = f"went away after {len(body)} of {len(body) + 100_000} body bytes: nothing stored"
    deadline = time.monotonic() + WAIT_SECONDS
    while line not in exporter.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = exporter.log()
    assert [entry for entry in log.splitlines() if "went away" in entry] == [
        next(entry for entry in log.splitlines() if line in entry)
    ]
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log


def _sessions(database_url: str) -> int:
    """Connections ever opened to this database (PostgreSQL's own count)."""
    [(sessions,)] = query(
        database_url,
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
    )
    return int(sessions)


def test_a_burst_of_health_checks_costs_one_connection(
    exporter: ExporterProcess, database_url: str
) -> None:
    def health(_: int) -> tuple[int, dict[str, str]]:
        response = httpx.get(f"{exporter.base_url}/health", timeout=30)
        return response.status_code, response.json()

    before = _sessions(database_url)
    with ThreadPoolExecutor(max_workers=300) as pool:
        answers = list(pool.map(health, range(300)))
    assert answers == [(200, {"status": "ok", "database": "up"})] * 300
    # One probe answers them all, on the connection the first check opened: no connection is
    # opened but (perhaps, as its statistics arrive) the one that read the count before.
    assert _sessions(database_url) - before <= 1


def test_health_reports_a_database_that_goes_away(postgres_server: str, tmp_path: Path) -> None:
    with fresh_database(postgres_server) as url:
        name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        exporter = start_exporter(url, tmp_path)
        try:
            with psycopg.connect(postgres_server, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            deadline = time.monotonic() + WAIT_SECONDS
            answer = httpx.get(f"{exporter.base_url}/health", timeout=10)
            while answer.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = httpx.get(f"{exporter.base_url}/health", timeout=10)
            assert (answer.status_code, answer.json()) == (
                503,
                {"status": "degraded", "database": "down"},
            )
        finally:
            exporter.stop()
            with psycopg.connect(postgres_server, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def _websocket_handshake(exporter: ExporterProcess, *, reads: bool = False) -> socket.socket:
    return _websocket_handshake_head(exporter, reads=reads)[0]


def _websocket_handshake_head(
    exporter: ExporterProcess, *, reads: bool = False, extensions: str = ""
) -> tuple[socket.socket, bytes]:
    """A client that completes the handshake and then never reads: its receive buffer is kept
    small, so what the server sends fills it after a few kilobytes. With `reads`, a client with
    an ordinary receive buffer, for a test that reads."""
    host, _ = address(exporter)
    sock = socket.socket()
    if not reads:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(exporter.api_url.rsplit(":", 1)[1])))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws/metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n"
        ).encode()
    )
    sock.settimeout(WAIT_SECONDS)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: not one byte past the handshake is read
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, head


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed or reset this connection (without reading from it)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state != 1  # TCP_ESTABLISHED


# Two ways a client that never reads is dropped: its backlog passes the queue bound first (the
# feed closes it with 1008), or the server's write buffer stays full past the send timeout
# first (the connection is cut); the log says which.
DROPS = {
    "backlog": ({"NEXUS_WS_QUEUE_MAX_BYTES": "65536"}, "dropped a live-feed client: not reading"),
    "unread": (
        {"NEXUS_WS_SEND_TIMEOUT_SECONDS": "2"},
        "dropped WebSocket clients that did not read",
    ),
}


@pytest.fixture(params=sorted(DROPS))
def live_exporter(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ExporterProcess]:
    env, expected_log = DROPS[request.param]
    process = start_exporter(database_url, tmp_path, env)
    process.expected_drop_log = expected_log  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.stop()


def test_websocket_clients_that_never_read_are_dropped(live_exporter: ExporterProcess) -> None:
    stalled = [_websocket_handshake(live_exporter) for _ in range(100)]
    try:
        durations = []
        deadline = time.monotonic() + WAIT_SECONDS
        while not all(_closed_by_server(s) for s in stalled) and time.monotonic() < deadline:
            spans = [new_span(llm_attributes()) for _ in range(500)]
            started = time.monotonic()
            response = post(live_exporter.base_url, request(spans, "live").SerializeToString())
            durations.append(time.monotonic() - started)
            assert response.status_code == 200
        assert all(_closed_by_server(s) for s in stalled), (
            sum(map(_closed_by_server, stalled)),
            durations,
        )
        # Generous on purpose (a busy machine): the point is that ingest keeps being answered.
        assert sorted(durations)[len(durations) // 2] < 2.0, durations
    finally:
        for sock in stalled:
            sock.close()
    assert live_exporter.expected_drop_log in live_exporter.log()  # type: ignore[attr-defined]
    # A client that reads still gets the feed.
    # Calls of the flood still being stored reach it too: it must keep reading, or it would be
    # dropped like the others.
    with contextlib.closing(_websocket_handshake(live_exporter, reads=True)) as reader:
        post(
            live_exporter.base_url,
            request([new_span(llm_attributes())], "live").SerializeToString(),
        )
        received = b""
        while b'"type":"hello"' not in received:
            chunk = reader.recv(65536)
            assert chunk, received[-200:]
            received += chunk


def _server_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next frame the server sends (unmasked): its opcode and payload."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        return data

    first, length = exactly(2)
    length &= 0x7F
    if length >= 126:
        length = int.from_bytes(exactly(2 if length == 126 else 8))
    return first & 0x0F, exactly(length)


def test_a_websocket_message_over_the_bound_is_refused_before_it_is_read(
    exporter: ExporterProcess,
) -> None:
    """The live feed reads nothing from its clients: a frame announcing 1 MiB is refused at its
    header (1009, message too big) and the connection closed. The bound was uvicorn's 16 MiB,
    held in memory per connection until the frame was complete: a few hundred connections each
    sending all but the last byte of such a frame held gigabytes of the exporter's memory."""
    with contextlib.closing(_websocket_handshake(exporter, reads=True)) as sock:
        opcode, hello = _server_frame(sock)
        assert (opcode, hello) == (1, b'{"type":"hello","listening":true}')
        size = 1024 * 1024
        sock.sendall(bytes([0x82, 0x80 | 127]) + size.to_bytes(8) + os.urandom(4) + b"x" * 1024)
        sock.settimeout(10)
        opcode, payload = _server_frame(sock)
        reason = b"frame with 1048576 bytes exceeds limit of 4096 bytes"
        assert (opcode, payload) == (8, (1009).to_bytes(2) + reason)
        assert sock.recv(1) == b""  # closed, the rest of the frame never read


def test_the_live_feed_is_sent_uncompressed_to_a_browser_that_offers_deflate(
    exporter: ExporterProcess,
) -> None:
    """Every browser offers permessage-deflate: accepted, each client deflated every call on its
    own (the feed encodes a call once for all), on the loop that also takes ingest. With 200
    such clients the server spent 2.3 times the CPU and a 500-call OTLP request took 1 s, not
    0.12 s. The server declines the extension, and the feed arrives as plain text frames."""
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    sock, head = _websocket_handshake_head(exporter, reads=True, extensions=offer)
    with contextlib.closing(sock):
        assert b"sec-websocket-extensions" not in head.lower()
        assert _server_frame(sock) == (1, b'{"type":"hello","listening":true}')


def _serve(
    database_url: str, tmp_path: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "exporter.cli", "serve", "--database-url", database_url,
        "--otlp-port", str(free_port()), "--api-port", str(free_port()), *args,
    ]  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
    )


def test_an_open_api_on_a_public_address_is_refused(database_url: str, tmp_path: Path) -> None:
    process = _serve(database_url, tmp_path, {}, "--host", "0.0.0.0")
    assert process.wait(WAIT_SECONDS) == 2
    output = (tmp_path / "serve.log").read_text()
    assert (
        "no API token (NEXUS_API_TOKEN) and no ingest token (NEXUS_INGEST_TOKEN), and 0.0.0.0 is"
        " not a loopback address: the API and OTLP ingest would be open"
    ) in " ".join(output.split())
    assert "NEXUS_ALLOW_UNAUTHENTICATED=true" in output


def test_an_open_ingest_port_on_a_public_address_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    """Anyone who reaches an open ingest port can add spend and trip budget alerts."""
    process = _serve(database_url, tmp_path, {"NEXUS_API_TOKEN": "t0ken"}, "--host", "0.0.0.0")
    assert process.wait(WAIT_SECONDS) == 2
    output = " ".join((tmp_path / "serve.log").read_text().split())
    assert "no ingest token (NEXUS_INGEST_TOKEN), and 0.0.0.0 is not a loopback address" in output
    assert "OTLP ingest would be open" in output


def test_an_open_api_on_a_public_address_starts_when_meant(
    database_url: str, tmp_path: Path
) -> None:
    env = {"NEXUS_ALLOW_UNAUTHENTICATED": "true"}
    exporter = start_exporter(database_url, tmp_path, env, "--host", "0.0.0.0")
    try:
        for token in ("no API token", "no ingest token"):
            warnings = [line for line in exporter.log().splitlines() if token in line]
            assert len(warnings) == 1 and "open to anyone who reaches it" in warnings[0]
    finally:
        exporter.stop()


def test_an_open_api_on_loopback_is_said_once(exporter: ExporterProcess) -> None:
    warnings = [line for line in exporter.log().splitlines() if "no API token" in line]
    assert len(warnings) == 1
    assert f"the API on 127.0.0.1:{exporter.api_url.rsplit(':', 1)[1]} is open" in warnings[0]


def test_a_token_silences_the_warning(database_url: str, tmp_path: Path) -> None:
    tokens = {"NEXUS_API_TOKEN": "t0ken", "NEXUS_INGEST_TOKEN": "1ngest"}
    exporter = start_exporter(database_url, tmp_path, tokens, "--host", "0.0.0.0")
    try:
        assert "no API token" not in exporter.log()
        assert "no ingest token" not in exporter.log()
    finally:
        exporter.stop()
