"""SQL injection on every parameter of every API route, driven by the API's own OpenAPI schema
(so a new route is covered the day it appears): a crafted value is an ordinary value. It never
causes a 5xx or a slow answer, a GET answers exactly as for any unknown value, a stored string
comes back verbatim, and no table is harmed: every table keeps its exact rows. The attacks go
to resources that exist (a budget and a content item created through the API first, a price
revision made by repricing the stored calls); unknown ids answer 404. Also: the API token is
compared in constant time."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from exporter.api.app import create_api_app
from exporter.core.settings import Settings
from exporter.ingest.pricing import PriceBook
from exporter.usage.reprice import RepriceRequest, reprice
from tests.hostile.payloads import (
    SQL_INJECTIONS,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
)
from tests.support import ExporterProcess, query, table_counts

pytestmark = pytest.mark.e2e

_MIDNIGHT = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# The API's pinned "now"; the calls are stored a second before it, on the same day, so the
# daily budgets' spend (counted up to now) includes them.
NOW = max(datetime.now(UTC).replace(microsecond=0), _MIDNIGHT + timedelta(seconds=2))
CALLS_AT = NOW - timedelta(seconds=1)
HARMLESS = "zz-no-such-value"
SLOW_SECONDS = 8.0  # the pg_sleep(10) payloads would take longer
CANARY_ROWS = 3
SERVICE = "api-app"
CALLS = 5
CAROUSEL = "carousel-1"
# A budget scoped on every scope field, so an injected scope value that matched more than itself
# would show up as spend.
TARGET_BUDGET = {
    "name": "injection-target",
    "period": "daily",
    "amount_usd": 12.5,
    "warning_threshold_pct": 75,
    "timezone": "UTC",
    "service_name": SERVICE,
    "provider": "groq",
    "model": "llama-3.3-70b-versatile",
    "operation": "fact",
}
SCOPE_FIELDS = ("service_name", "provider", "model", "operation")
BUDGET_ROW = (
    "SELECT id, name, period_type, budget_usd, warning_threshold_pct, timezone, service_name,"
    " provider, model, operation, start_date, end_date, enabled, created_at FROM cost_budgets"
)


@dataclass
class Api:
    client: TestClient
    budget_id: int
    lease_id: str
    revision_id: int


def create_budget(client: TestClient, **fields: Any) -> dict[str, Any]:
    """Creates a budget with the API's own fields and checks it was created as asked."""
    response = client.post("/api/budgets", json=fields)
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created["id"], int)
    assert {k: created[k] for k in fields} == fields
    return created


def make_revision(database_url: str, prices: Path) -> int:
    """Reprices the stored calls at another price: a revision with calls to list."""
    prices.write_text("models:\n  - model: '*'\n    input_mtok: 1\n    output_mtok: 2\n")
    request = RepriceRequest(since=CALLS_AT - timedelta(days=1), until=NOW + timedelta(days=1))
    with psycopg.connect(database_url) as conn:
        plan = reprice(conn, PriceBook(prices), request)
    assert plan.revision_id is not None and plan.calls_changed == CALLS
    return plan.revision_id


@pytest.fixture(scope="module")
def api(
    exporter: ExporterProcess, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE injection_canary (x int)")
        conn.execute("INSERT INTO injection_canary SELECT generate_series(1, %s)", (CANARY_ROWS,))
    spans = [
        new_span(llm_attributes(**{"nexus.correlation_id": CAROUSEL, "nexus.operation": "fact"}))
        for _ in range(CALLS)
    ]
    for span in spans:
        span.start_time_unix_nano = int(CALLS_AT.timestamp()) * 10**9
        span.end_time_unix_nano = span.start_time_unix_nano + 250_000_000
    response = post(exporter.base_url, request(spans, SERVICE).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0, response.text
    stored = query(
        database_url, "SELECT count(*) FROM api_calls WHERE service_name = %s", (SERVICE,)
    )
    assert stored == [(CALLS,)]
    revision_id = make_revision(database_url, tmp_path_factory.mktemp("prices") / "prices.yaml")
    with TestClient(create_api_app(Settings(), database_url, clock=lambda: NOW)) as client:
        budget = create_budget(client, **TARGET_BUDGET)
        carousel = client.post("/api/carousels", json={"correlation_id": CAROUSEL})
        assert carousel.status_code == 201, carousel.text
        assert carousel.json()["correlation_id"] == CAROUSEL
        scope = {"service": SERVICE, "provider": "openai", "model": "m", "operation": ""}
        lease = client.post("/api/budget/leases", json={
            **scope, "amount_usd": "0.01", "min_amount_usd": "0.01"})  # fmt: skip
        assert lease.status_code == 201, lease.text
        yield Api(client, budget["id"], lease.json()["lease_id"], revision_id)


def budget_row(database_url: str, budget_id: int) -> tuple[Any, ...]:
    [row] = query(database_url, f"{BUDGET_ROW} WHERE id = %s", (budget_id,))
    return row


def missing_budget_id(database_url: str) -> int:
    [(highest,)] = query(database_url, "SELECT coalesce(max(id), 0) FROM cost_budgets")
    return int(highest) + 1000


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
    """Every route: reads first; then writes to an existing item (before a collection POST can
    create an item named like a later probe); deletes last, so they cannot remove a target."""
    spec = client.app.openapi()  # type: ignore[attr-defined]
    found = [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]
    return sorted(found, key=lambda o: (o[0] == "DELETE", o[0] != "GET", "{" not in o[1], o[1]))


def _path_defaults(api: Api) -> dict[str, str]:
    return {
        "budget_id": str(api.budget_id), "correlation_id": CAROUSEL, "period": "daily",
        "lease_id": api.lease_id, "revision_id": str(api.revision_id),
    }  # fmt: skip


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


def _body(spec: dict[str, Any], op: dict[str, Any]) -> Any:
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    return _sample(spec, body_schema["schema"]) if body_schema else None


def _path_params(op: dict[str, Any], defaults: dict[str, str]) -> dict[str, str]:
    return {p["name"]: defaults[p["name"]] for p in op.get("parameters", []) if p["in"] == "path"}


def test_unknown_ids_answer_404_on_every_route(api: Api, database_url: str) -> None:
    client = api.client
    spec = client.app.openapi()  # type: ignore[attr-defined]
    missing = {
        "budget_id": str(missing_budget_id(database_url)), "correlation_id": HARMLESS,
        "lease_id": str(uuid.uuid4()), "revision_id": str(api.revision_id + 1000),
    }  # fmt: skip
    counts_before = table_counts(database_url)
    tried: set[str] = set()
    for method, path, op in _operations(client):
        path_params = _path_params(op, {**_path_defaults(api), **missing})
        if not set(path_params) & set(missing):
            continue
        response, _ = _call(client, method, path, path_params, _body(spec, op))
        assert response.status_code == 404, f"{method} {path}: {response.text}"
        tried.add(f"{method} {path}")
    # get, patch, delete and status of a budget; get and engage an item; a revision's calls
    assert len(tried) >= 7 and "GET /api/prices/revisions/{revision_id}/calls" in tried
    assert table_counts(database_url) == counts_before


def test_injected_budget_fields_are_stored_verbatim_and_match_only_themselves(
    api: Api, database_url: str
) -> None:
    """Each string field of an existing budget set to each payload: the database holds exactly
    the payload, the neighbour budget is untouched, and the budget's spend counts no call (the
    payload, taken as SQL, would match the calls of the scope it replaced)."""
    client = api.client
    # Names are unique: budgets an earlier test named after a payload would refuse the rename.
    for other in client.get("/api/budgets").json():
        if other["name"] in SQL_INJECTIONS:
            assert client.delete(f"/api/budgets/{other['id']}").status_code == 204
    fields = {**TARGET_BUDGET, "name": "injection-patched"}
    budget = create_budget(client, **fields)
    status = client.get(f"/api/budgets/{budget['id']}/status").json()
    assert status["calls"] == CALLS  # the scope matches the calls stored for it
    neighbour = budget_row(database_url, api.budget_id)
    counts = table_counts(database_url)
    for field in ("name", *SCOPE_FIELDS):
        for payload in SQL_INJECTIONS:
            where = f"{field}={payload!r}"
            before = budget_row(database_url, budget["id"])
            patched = client.patch(f"/api/budgets/{budget['id']}", json={field: payload})
            assert patched.status_code == 200, f"{where}: {patched.text}"
            [(stored,)] = query(
                database_url, f"SELECT {field} FROM cost_budgets WHERE id = %s", (budget["id"],)
            )
            assert stored == payload, where
            status = client.get(f"/api/budgets/{budget['id']}/status")
            assert status.status_code == 200, f"{where}: {status.text}"
            expected_calls = CALLS if field == "name" else 0
            assert status.json()["calls"] == expected_calls, where
            undo = client.patch(f"/api/budgets/{budget['id']}", json={field: fields[field]})
            assert undo.status_code == 200, undo.text
            assert budget_row(database_url, budget["id"]) == before, where
            assert budget_row(database_url, api.budget_id) == neighbour, where
            assert table_counts(database_url) == counts, where
    deleted = client.delete(f"/api/budgets/{budget['id']}")
    assert deleted.status_code == 204
    assert query(database_url, f"{BUDGET_ROW} WHERE id = %s", (budget["id"],)) == []
    assert client.delete(f"/api/budgets/{budget['id']}").status_code == 404


def test_every_api_parameter_shrugs_off_sql_injection(api: Api, database_url: str) -> None:
    client = api.client
    spec = client.app.openapi()  # type: ignore[attr-defined]
    defaults = _path_defaults(api)
    counts_before = table_counts(database_url)
    target_before = budget_row(database_url, api.budget_id)
    created: Counter[str] = Counter()
    tried = 0
    operations = _operations(client)
    for method, path, op in [o for o in operations if o[0] != "DELETE"]:
        body = _body(spec, op)
        path_params = _path_params(op, defaults)
        # The same request without an injection reaches an item that exists and succeeds.
        baseline, _ = _call(client, method, path, path_params, body)
        assert 200 <= baseline.status_code < 300, f"{method} {path}: {baseline.text}"
        created[path] += method == "POST" and not path_params
        tried += _inject_parameters(client, method, path, op, path_params, body)
        tried += _inject_body(client, spec, method, path, path_params, body, created)
        assert budget_row(database_url, api.budget_id) == target_before, f"{method} {path}"
    assert tried > 100
    expected = {
        **counts_before,
        "cost_budgets": counts_before["cost_budgets"] + created["/api/budgets"],
        "carousel_performance": counts_before["carousel_performance"] + created["/api/carousels"],
        "content_engagement": counts_before["content_engagement"] + 1,  # one measurement at NOW
        "budget_leases": counts_before["budget_leases"] + created["/api/budget/leases"],
    }
    assert table_counts(database_url) == expected
    assert query(database_url, "SELECT count(*) FROM injection_canary") == [(CANARY_ROWS,)]
    _read_back(client, operations, defaults, database_url)
    for method, path, op in [o for o in operations if o[0] == "DELETE"]:
        path_params = _path_params(op, defaults)
        _inject_parameters(client, method, path, op, path_params, None)
        assert table_counts(database_url) == expected, f"{method} {path} deleted something"


def _read_back(
    client: TestClient,
    operations: list[tuple[str, str, dict[str, Any]]],
    defaults: dict[str, str],
    database_url: str,
) -> None:
    """Every read again, now over the items the attacks stored (budgets whose scope is a payload
    included): each answers, and no budget scoped by a payload counts a call."""
    for method, path, op in [o for o in operations if o[0] == "GET"]:
        response, _ = _call(client, method, path, _path_params(op, defaults), None)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
    statuses = {s["id"]: s for s in client.get("/api/budget/status").json()}
    payloads = set(SQL_INJECTIONS)
    for budget_id, service, provider, model, operation in query(
        database_url, "SELECT id, service_name, provider, model, operation FROM cost_budgets"
    ):
        if payloads & {service, provider, model, operation}:
            assert statuses[budget_id]["calls"] == 0, (service, provider, model, operation)


def _inject_parameters(
    client: TestClient,
    method: str,
    path: str,
    op: dict[str, Any],
    path_params: dict[str, str],
    body: Any,
) -> int:
    """Each query and path parameter in turn: answered exactly as an unknown harmless value."""
    tried = 0
    for parameter in op.get("parameters", []):
        if parameter["in"] not in ("query", "path"):
            continue
        name = parameter["name"]
        harmless, _ = _call(client, method, path, {**path_params, name: HARMLESS}, body)
        assert harmless.status_code < 500, f"{method} {path} {name}: {harmless.text}"
        for payload in SQL_INJECTIONS:
            response, elapsed = _call(client, method, path, {**path_params, name: payload}, body)
            where = f"{method} {path} {name}={payload!r}"
            tried += 1
            assert elapsed < SLOW_SECONDS, where
            assert response.status_code == harmless.status_code, f"{where}: {response.text}"
            if method == "GET" and response.status_code == 200:
                assert response.json() == harmless.json(), f"{where} changed the answer"
    return tried


def _inject_body(
    client: TestClient,
    spec: dict[str, Any],
    method: str,
    path: str,
    path_params: dict[str, str],
    body: Any,
    created: Counter[str],
) -> int:
    """Each string field of a JSON body in turn: stored verbatim, or refused with a 422 naming
    the field. The body's other strings are made unique per attempt, so a write is never refused
    as a duplicate of an earlier one; a write to an existing item is undone after it."""
    if not isinstance(body, dict):
        return 0
    op = spec["paths"][path][method.lower()]
    schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    fields = [
        field
        for field, field_schema in schema.get("properties", {}).items()
        if (resolved := _resolve(spec, field_schema)).get("type") == "string"
        and "enum" not in resolved
        and "format" not in resolved
    ]
    original = _call(client, "GET", path, path_params, None)[0].json() if path_params else {}
    tried = 0
    for field in fields:
        for number, payload in enumerate(SQL_INJECTIONS):
            unique = {k: f"{v}-{field}-{number}" for k, v in body.items() if k in fields}
            attempt = {**unique, **{k: v for k, v in body.items() if k not in fields}}
            response, elapsed = _call(
                client, method, path, path_params, {**attempt, field: payload}
            )
            where = f"{method} {path} body.{field}={payload!r}"
            tried += 1
            assert elapsed < SLOW_SECONDS, where
            if response.status_code == 422:
                assert response.json()["detail"][0]["loc"] == ["body", field], where
                continue
            assert 200 <= response.status_code < 300, f"{where}: {response.text}"
            created[path] += method == "POST" and not path_params
            answer = response.json() if response.content else None
            if isinstance(answer, dict) and field in answer:
                assert answer[field] == payload, f"{where} was not stored verbatim"
            if method == "PATCH":
                undo, _ = _call(client, method, path, path_params, {field: original[field]})
                assert undo.status_code == 200, undo.text
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
