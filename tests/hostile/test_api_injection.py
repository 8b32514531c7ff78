"""SQL injection on every parameter of every API route, driven by the API's own OpenAPI schema
(so a new route is covered the day it appears): a crafted value is an ordinary value. It never
causes a 5xx or a slow answer, a GET answers exactly as for any unknown value, a stored string
comes back verbatim, and no table is harmed. Also: the API token is compared in constant time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from exporter.api.app import create_api_app
from exporter.settings import Settings
from tests.hostile.payloads import SQL_INJECTIONS, llm_attributes, new_span, post, request
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e

NOW = datetime.now(UTC).replace(microsecond=0)
HARMLESS = "zz-no-such-value"
SLOW_SECONDS = 8.0  # the pg_sleep(10) payloads would take longer


@pytest.fixture(scope="module")
def api(exporter: ExporterProcess, database_url: str) -> Iterator[TestClient]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS injection_canary (x int)")
    spans = [
        new_span(
            llm_attributes(**{"nexus.correlation_id": "carousel-1", "nexus.operation": "fact"})
        )
        for _ in range(5)
    ]
    assert post(exporter.base_url, request(spans, "api-app").SerializeToString()).is_success
    with TestClient(create_api_app(Settings(), database_url, clock=lambda: NOW)) as client:
        yield client


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _resolve(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    for choice in schema.get("anyOf", []):
        if choice.get("type") != "null":
            return _resolve(spec, choice)
    return schema


def _sample(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A valid value for a schema: required fields only, the first enum member, small numbers."""
    schema = _resolve(spec, schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object":
        required = schema.get("required", [])
        return {
            k: _sample(spec, v) for k, v in schema.get("properties", {}).items() if k in required
        }
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "boolean":
        return True
    if schema.get("format") == "date-time":
        return (NOW - timedelta(days=1)).isoformat()
    if schema.get("format") == "date":
        return NOW.date().isoformat()
    return "sample"


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    """Every route, reads first: a write may create an item named like a later probe."""
    spec = client.app.openapi()  # type: ignore[attr-defined]
    found = [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]
    return sorted(found, key=lambda o: (o[0] != "GET", o[1]))


def _path_defaults(client: TestClient) -> dict[str, str]:
    created = client.post("/api/budgets", json={"name": "injection-test", "budget_usd": 10})
    budget_id = created.json()["id"] if created.status_code == 201 else 1
    return {"budget_id": str(budget_id), "correlation_id": "carousel-1", "period": "daily"}


def _call(client: TestClient, method: str, path: str, params: dict[str, str], body: Any) -> Any:
    for name, value in params.items():
        path = path.replace("{" + name + "}", value.replace("/", "%2F").replace("?", "%3F"))
    query_params = {k: v for k, v in params.items() if "{" + k + "}" not in path}
    started = time.monotonic()
    kwargs: dict[str, Any] = {"params": query_params}
    if body is not None:
        kwargs["json"] = body
    response = client.request(method, path, **kwargs)
    return response, time.monotonic() - started


def test_every_api_parameter_shrugs_off_sql_injection(api: TestClient, database_url: str) -> None:
    spec = api.app.openapi()  # type: ignore[attr-defined]
    defaults = _path_defaults(api)
    [(calls_before,)] = query(database_url, "SELECT count(*) FROM api_calls")
    tried = 0
    for method, path, op in _operations(api):
        body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        body = _sample(spec, body_schema["schema"]) if body_schema else None
        path_params = {p["name"]: defaults.get(p["name"], "1") for p in op.get("parameters", [])
                       if p["in"] == "path"}  # fmt: skip
        for parameter in op.get("parameters", []):
            if parameter["in"] not in ("query", "path"):
                continue
            name = parameter["name"]
            harmless, _ = _call(api, method, path, {**path_params, name: HARMLESS}, body)
            for payload in SQL_INJECTIONS:
                response, elapsed = _call(api, method, path, {**path_params, name: payload}, body)
                where = f"{method} {path} {name}={payload!r}"
                tried += 1
                assert response.status_code < 500, f"{where}: {response.text}"
                assert elapsed < SLOW_SECONDS, where
                if method == "GET" and response.status_code == 200:
                    assert harmless.status_code == 200, where
                    assert response.json() == harmless.json(), f"{where} changed the answer"
                elif method == "GET":
                    assert response.status_code == harmless.status_code, where
        tried += _inject_body(api, spec, method, path, path_params, body)
    assert tried > 100
    assert query(database_url, "SELECT to_regclass('injection_canary') IS NOT NULL") == [(True,)]
    [(calls_after,)] = query(database_url, "SELECT count(*) FROM api_calls")
    assert calls_after == calls_before


def _inject_body(
    api: TestClient,
    spec: dict[str, Any],
    method: str,
    path: str,
    path_params: dict[str, str],
    body: Any,
) -> int:
    """Each string field of a JSON body in turn: stored verbatim, or refused with a 4xx."""
    if not isinstance(body, dict):
        return 0
    op = spec["paths"][path][method.lower()]
    schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    tried = 0
    for field, field_schema in schema.get("properties", {}).items():
        resolved = _resolve(spec, field_schema)
        if resolved.get("type") != "string" or "enum" in resolved or "format" in resolved:
            continue
        for payload in SQL_INJECTIONS:
            response, elapsed = _call(api, method, path, path_params, {**body, field: payload})
            where = f"{method} {path} body.{field}={payload!r}"
            tried += 1
            assert response.status_code < 500, f"{where}: {response.text}"
            assert elapsed < SLOW_SECONDS, where
            answer = response.json() if response.status_code < 300 and response.content else None
            if isinstance(answer, dict) and field in answer:
                assert answer[field] == payload, f"{where} was not stored verbatim"
    return tried


def test_the_api_token_is_checked_in_constant_time(
    database_url: str, compared_digests: list[tuple[bytes, bytes]]
) -> None:
    compared = compared_digests
    app = create_api_app(Settings(api_token="api-secret"), database_url)
    with TestClient(app) as client:
        assert client.get("/api/budgets").status_code == 401
        wrong = {"Authorization": "Bearer api-secreT"}
        assert client.get("/api/budgets", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer api-secret"}
        assert client.get("/api/budgets", headers=right).status_code == 200
    assert (b"api-secreT", b"api-secret") in compared
    assert (b"api-secret", b"api-secret") in compared
