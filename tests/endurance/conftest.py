from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


class StoppablePostgres:
    """A PostgreSQL server of its own (pgserver's binaries), so stopping it harms no other test."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver

        self._server = pgserver.get_server(data_dir, cleanup_mode="stop")
        self.url = str(self._server.get_uri())

    def stop(self) -> None:
        from pgserver import _commands

        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        # Same data directory and socket: the URL the exporter holds stays valid.
        self._server.ensure_postgres_running()

    def close(self) -> None:
        self._server.cleanup()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[StoppablePostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="nexus-pg-own-"))
    server = StoppablePostgres(data_dir / "pgdata")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)
