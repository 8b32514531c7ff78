"""Schemathesis against the API's own OpenAPI schema: whatever the input, never a 500, and
every answer matches the schema. Bounded: a fixed number of examples per operation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from starlette.testclient import TestClient

from exporter.api.app import create_api_app
from exporter.core.settings import Settings

MAX_EXAMPLES = 40
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def app(database_url: str) -> Iterator[FastAPI]:
    application = create_api_app(Settings(api_token=TOKEN, timezone="Asia/Kolkata"), database_url)
    with TestClient(application):  # runs the lifespan: the database pool opens
        yield application


def test_no_input_gets_a_server_error(app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=AUTH)
            try:
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )
            except Exception as exc:  # schemathesis reports a group of failures
                failures.append(f"{case.operation.label}: {exc}"[:2000])

        check()
    assert not failures, "\n\n".join(failures[:5])
