from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support import ExporterProcess, query


@pytest.fixture(autouse=True)
def service_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every hostile test the exporter still runs and answers."""
    yield
    if "exporter" not in request.fixturenames:
        return
    exporter: ExporterProcess = request.getfixturevalue("exporter")
    assert exporter.process.poll() is None, exporter.log()
    assert httpx.get(f"{exporter.base_url}/health", timeout=10).status_code == 200


@pytest.fixture
def compared_digests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every pair hmac.compare_digest is asked to compare, so a test sees a token check used it."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return compared


def stored_span_ids(database_url: str, spans: Sequence[Span]) -> set[str]:
    ids = [s.span_id.hex() for s in spans]
    rows = query(database_url, "SELECT span_id FROM api_calls WHERE span_id = ANY(%s)", (ids,))
    return {r[0] for r in rows}
