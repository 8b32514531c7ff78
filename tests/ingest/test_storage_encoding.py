"""Rows are encoded for COPY byte for byte as psycopg's own `Copy.write_row` encodes them, by
its C row encoder (private, so pinned and checked here) and by the public path beside it, and
PostgreSQL reads them back as they were written."""

from __future__ import annotations

import ast
import io
import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from packaging.requirements import Requirement
from psycopg.copy import Copy, FileWriter
from psycopg.rows import dict_row

from exporter.ingest import rows as call_rows
from exporter.ingest.model import LLMCall
from exporter.ingest.rows import COLUMN_TYPES, COLUMNS, call_row, encode_row, encode_row_public

ROOT = Path(__file__).resolve().parents[2]
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # PostgreSQL's COPY BINARY header
_TRAILER = b"\xff\xff"


def _call(span: int, **changes: Any) -> LLMCall:
    call = LLMCall(
        trace_id="ab" * 16,
        span_id=f"{span:016x}",
        parent_span_id=None,
        timestamp=datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
        service_name="svc",
        provider="groq",
        model="llama-3.3-70b-versatile",
        response_model=None,
        gen_ai_operation="chat",
        operation="",
        correlation_id=None,
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        total_tokens=15,
        duration_ms=12.5,
        success=True,
        error_type=None,
        error_message=None,
        usage_source="response",
        server_address=None,
        span_name="chat llama",
        time_to_first_chunk_ms=None,
        reported_cost_usd=None,
    )
    for name, value in changes.items():
        setattr(call, name, value)
    return call


ATTRIBUTES = {"gen_ai.response.id": "r-1", "n": 2**70, "list": [1, "two", None]}
CALLS = [
    _call(1),  # NULLs in every nullable column
    _call(
        2,
        parent_span_id="cd" * 8,
        response_model="llama-3.3-70b-versatile-2",
        operation="op",
        correlation_id="c-1",
        input_tokens=10**8,
        output_tokens=2**40,
        cache_read_tokens=7,
        cache_write_tokens=3,
        cache_write_1h_tokens=2,
        service_tier="flex",
        reasoning_tokens=1,
        total_tokens=10**8 + 2**40,
        cost_usd=Decimal("0.000123456789"),
        cost_source="genai-prices",
        duration_ms=0.0,
        time_to_first_chunk_ms=1e-3,
        success=False,
        error_type="TimeoutError",
        error_message="read timed out — é ✓",
        server_address="api.groq.com",
        attributes=ATTRIBUTES,
    ),
]


def test_each_row_is_what_copy_write_row_sends(database_url: str) -> None:
    """psycopg's public COPY object, writing into a buffer, produces the same stream."""
    buffer = io.BytesIO()
    with (
        psycopg.connect(database_url) as conn,
        Copy(conn.cursor(), binary=True, writer=FileWriter(buffer)) as copy,
    ):
        copy.set_types(list(COLUMN_TYPES))
        for call in CALLS:
            copy.write_row(call_row(call))
    written = buffer.getvalue()
    assert written == _SIGNATURE + b"".join(encode_row(call) for call in CALLS) + _TRAILER
    assert written == _SIGNATURE + b"".join(encode_row_public(call) for call in CALLS) + _TRAILER


def test_the_private_row_encoder_is_there_and_psycopg_is_pinned_below_the_next_minor() -> None:
    """psycopg._copy_base.format_row_binary is private: an upgrade may move it. The pin keeps
    installs on the versions tested; this test says so when an upgrade lost it."""
    assert call_rows._format_row_binary is not None
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["server"]]
    (psycopg_pin,) = [r for r in pins if r.name == "psycopg"]
    assert str(psycopg_pin.specifier) == "<3.4,>=3.2"
    assert psycopg.__version__ in psycopg_pin.specifier


def test_encoded_rows_read_back_as_written(database_url: str) -> None:
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.execute(f"CREATE TEMP TABLE encoded AS SELECT {columns} FROM api_calls LIMIT 0")
        with conn.cursor().copy("COPY encoded FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_SIGNATURE + b"".join(encode_row(c) for c in CALLS) + _TRAILER)
        rows = conn.execute("SELECT * FROM encoded ORDER BY span_id").fetchall()
    second = rows[1]
    assert len(rows) == 2
    assert rows[0]["parent_span_id"] is None and rows[0]["cost_usd"] is None
    assert rows[0]["attributes"] == {}
    assert second["timestamp"] == datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    assert second["output_tokens"] == 2**40
    assert (rows[0]["cache_write_1h_tokens"], second["cache_write_1h_tokens"]) == (0, 2)
    assert (rows[0]["service_tier"], second["service_tier"]) == (None, "flex")
    assert second["cost_usd"] == Decimal("0.000123456789")
    assert second["time_to_first_chunk_ms"] == 1e-3
    assert second["success"] is False
    assert second["error_message"] == "read timed out — é ✓"
    assert second["attributes"] == ATTRIBUTES


# The private hooks the exporter relies on, each pinned and tested.
PINNED_PRIVATE = {"psycopg._copy_base.format_row_binary"}


def _private_imports(path: Path) -> list[str]:
    """Imports of a dependency's private module or name (one whose dotted part starts with _)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if (
                parts[0] not in {"exporter", "nexus_otel", "__future__"}
                and any(part.startswith("_") for part in parts)
                and name not in PINNED_PRIVATE
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    return found


@pytest.mark.parametrize("package", ["exporter"])
def test_no_other_private_module_of_a_dependency_is_imported(package: str) -> None:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert [hit for path in paths for hit in _private_imports(path)] == []
