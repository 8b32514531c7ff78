"""Secrets never land in the database or the logs; the ingest token is compared in constant
time; the embedded PostgreSQL is reachable only through a local socket."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import pytest
from starlette.testclient import TestClient

from exporter.core.settings import Settings
from exporter.ingest.app import create_ingest_app
from tests.hostile.payloads import llm_attributes, new_span, post, rejected_spans, request
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e

SECRETS = [f"sk-live-SECRET{i}x" for i in range(10)]


def test_secrets_in_headers_urls_and_errors_are_never_stored_or_logged(
    exporter: ExporterProcess, database_url: str
) -> None:
    s = SECRETS
    span = new_span(
        llm_attributes(**{
            "http.request.header.authorization": [f"Bearer {s[0]}"],
            "http.request.header.x-api-key": [s[1]],
            "http.request.header.x-goog-api-key": [s[2]],
            "url.full": f"https://generativelanguage.googleapis.com/v1beta/models/m:x?key={s[3]}",
            "http.url": f"https://user:{s[4]}@api.groq.com/openai/v1/chat/completions",
            "gen_ai.request.api_key": s[5],
            "llm.headers": f"{{'Authorization': 'Bearer {s[6]}'}}",
            "error.type": "HTTPStatusError",
        })
    )  # fmt: skip
    span.status.code = 2
    span.status.message = (
        f"Client error '429' for url 'https://generativelanguage.googleapis.com/v1beta/"
        f"models/m:generateContent?key={s[7]}&alt=sse'"
    )
    response = post(exporter.base_url, request([span]).SerializeToString(), **{
        "X-Api-Key": s[8], "Authorization": f"Bearer {s[9]}",
    })  # fmt: skip
    assert response.status_code == 200 and rejected_spans(response) == 0
    [(row,)] = query(
        database_url, "SELECT a::text FROM api_calls a WHERE span_id = %s", (span.span_id.hex(),)
    )
    assert "generativelanguage.googleapis.com" in row  # the URL itself is kept, scrubbed
    leaked = [secret for secret in SECRETS if secret in row or secret in exporter.log()]
    assert leaked == []


def test_a_span_with_a_malformed_url_is_stored_scrubbed_with_its_batch(
    exporter: ExporterProcess, database_url: str
) -> None:
    good = new_span(llm_attributes())
    odd = new_span(
        llm_attributes(**{
            "url.full": f"https://[generativelanguage.googleapis.com/v1beta?key={SECRETS[0]}",
            "http.url": f"http://user:{SECRETS[1]}@[::1/v1/chat/completions",
        })
    )  # fmt: skip
    response = post(exporter.base_url, request([good, odd]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    rows = query(
        database_url,
        "SELECT a::text FROM api_calls a WHERE span_id IN (%s, %s)",
        (good.span_id.hex(), odd.span_id.hex()),
    )
    assert len(rows) == 2
    stored = " ".join(row for (row,) in rows)
    assert "generativelanguage.googleapis.com" in stored  # kept, without its key
    assert not [secret for secret in SECRETS[:2] if secret in stored or secret in exporter.log()]


def test_the_ingest_token_is_checked_in_constant_time(
    database_url: str, compared_digests: list[tuple[bytes, bytes]]
) -> None:
    compared = compared_digests
    settings = Settings(ingest_token="the-right-token")
    app = create_ingest_app(settings, database_url)
    body = request([new_span(llm_attributes())]).SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    with TestClient(app) as client:
        for supplied, status in [
            ("Bearer the-wrong-token", 401),
            ("Bearer the-right-tokeN", 401),
            ("Basic the-right-token", 401),
            ("", 401),
            ("Bearer the-right-token", 200),
        ]:
            answer = client.post(
                "/v1/traces", content=body, headers={**headers, "Authorization": supplied}
            )
            assert answer.status_code == status, supplied
    assert (b"the-wrong-token", b"the-right-token") in compared
    assert (b"the-right-tokeN", b"the-right-token") in compared
    assert (b"the-right-token", b"the-right-token") in compared


def test_the_embedded_postgres_listens_only_on_a_local_socket() -> None:
    from exporter.core.db import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="nexus-pg-listen-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir))
        try:
            [(addresses,)] = query(server.url, "SHOW listen_addresses")
            [(sockets,)] = query(server.url, "SHOW unix_socket_directories")
            # The postmaster's pid from its own pid file: a backend's parent may be gone by now.
            pid = int((server.pgdata / "postmaster.pid").read_text().split()[0])
            postmaster = psutil.Process(pid)
            listening = [
                c for c in postmaster.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            ]
        finally:
            server.stop()
    assert addresses == ""  # no TCP at all
    assert sockets.startswith(data_dir) or Path(sockets).is_relative_to("/tmp")
    assert listening == []
