from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ExporterProcess, fresh_database, start_exporter

os.environ.setdefault("NEXUS_OTEL_RAISE_INTERNAL_ERRORS", "1")
# Apps under test keep their spools (one per exporter URL) here, not in the user's home; each
# test exporter listens on a port of its own, so no test drains another's spool.
os.environ["XDG_STATE_HOME"] = _STATE_HOME = tempfile.mkdtemp(prefix="nexus-test-state-")
atexit.register(shutil.rmtree, _STATE_HOME, ignore_errors=True)  # each run leaves none behind


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server: NEXUS_DATABASE_URL if set, else an embedded one."""
    configured = os.environ.get("NEXUS_DATABASE_URL")
    if configured:
        yield configured
        return
    from exporter.core.db import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="nexus-pg-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir))
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="module")
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, migrated database per test module."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def exporter(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    """A running `nexus-otel serve` on the module's database."""
    process = start_exporter(database_url, tmp_path_factory.mktemp("exporter"))
    try:
        yield process
    finally:
        process.stop()
