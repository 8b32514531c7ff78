"""API test machinery: known calls stored through the real ingest path, and API clients with a
pinned clock, both on the module's real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from starlette.testclient import TestClient

from exporter.api import create_api_app
from exporter.core.settings import Settings
from exporter.ingest.app import create_ingest_app
from tests.ingest.otlp_helpers import make_spans, protobuf_body

# Unknown to genai-prices, so a call's cost is exactly the `nexus.cost.usd` the span reports.
MODEL_A = "nexus-test-alpha"
MODEL_B = "nexus-test-beta"


def call_spec(
    start: datetime,
    cost: str | None,
    *,
    provider: str = "openai",
    model: str = MODEL_A,
    operation: str = "fact_generation",
    input_tokens: int = 100,
    output_tokens: int = 50,
    correlation_id: str | None = None,
    error: str | None = None,
    duration_ms: float = 200,
) -> dict[str, Any]:
    """One LLM call as a span spec; `cost` None makes it unpriced."""
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "nexus.operation": operation,
    }
    if cost is not None:
        attributes["nexus.cost.usd"] = float(Decimal(cost))
    if correlation_id:
        attributes["nexus.correlation_id"] = correlation_id
    spec: dict[str, Any] = {"start": start, "attributes": attributes, "duration_ms": duration_ms}
    if error:
        spec["error"] = error
        attributes["error.type"] = error
    return spec


@contextmanager
def sending_to(database_url: str) -> Iterator[Callable[..., None]]:
    """Sends span specs through the real ingest app (OTLP protobuf) and checks they are stored."""
    # Calls dated months back are accepted only inside the retention window: keep it wide.
    settings = Settings(retention_days=3650)
    with TestClient(create_ingest_app(settings, database_url)) as client:

        def send(
            specs: Sequence[Mapping[str, Any]] | Sequence[ReadableSpan],
            service_name: str = "carousel-bot",
        ) -> None:
            """Specs become new spans; spans (already made) are sent as they are: a replay."""
            spans = [s for s in specs if isinstance(s, ReadableSpan)]
            if len(spans) < len(specs):
                spans = make_spans(specs, service_name)  # type: ignore[arg-type]
            response = client.post(
                "/v1/traces",
                content=protobuf_body(spans),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200, response.text

        yield send


@pytest.fixture(scope="module")
def ingest(database_url: str) -> Iterator[Callable[..., None]]:
    """`sending_to` the module's database."""
    with sending_to(database_url) as send:
        yield send


@pytest.fixture(scope="module")
def api_client(database_url: str) -> Iterator[Callable[..., TestClient]]:
    """Builds an API client whose "now" is pinned; closed at the end of the module."""
    opened: list[TestClient] = []

    def build(now: datetime, **settings: Any) -> TestClient:
        app = create_api_app(Settings(**settings), database_url, clock=lambda: now)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)
