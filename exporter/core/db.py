"""Where the database comes from (embedded or configured), and its schema migrations."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from exporter.core.files import bundled_dir

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_ID = 0x6E657875  # advisory lock: one migrator at a time
PARTITION_MONTHS_BEHIND = 1
PARTITION_MONTHS_AHEAD = 2
# Ids and row numbers are bigint: an id past this matches no row, and is refused as such.
BIGINT_MAX = 2**63 - 1


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL did not start; the message names its data directory."""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    directory = directory or bundled_dir("migrations")
    for path in sorted(directory.glob("*.sql")):
        number, _, rest = path.stem.partition("_")
        if not number.isdigit():
            raise MigrationError(f"migration file {path.name} must start with a number")
        found.append(Migration(int(number), rest, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return found


def migrate(url: str, directory: Path | None = None) -> list[Migration]:
    """Applies every migration not yet recorded, each in its own transaction. Idempotent."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            done: dict[int, str] = dict(rows)
            for migration in load_migrations(directory):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        log.warning("migration %s changed after it was applied", migration.version)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s,%s,%s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration)
                log.info("applied migration %03d_%s", migration.version, migration.name)
            ensure_partitions_around(conn, datetime.now(UTC).date())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK_ID,))
    return applied_now


def month_offset(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def ensure_partitions_around(conn: psycopg.Connection[Any], today: date) -> None:
    """Creates the monthly partitions from last month to two months ahead."""
    for offset in range(-PARTITION_MONTHS_BEHIND, PARTITION_MONTHS_AHEAD + 1):
        conn.execute("SELECT nexus_ensure_partition(%s)", (month_offset(today, offset),))


class EmbeddedPostgres:
    """A real PostgreSQL from the `pgserver` wheel, kept under `data_dir` and reused."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime directory when imported, which warns
            # wherever XDG_RUNTIME_DIR is unset (containers, CI, cron) and then uses /tmp.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import pgserver  # imported here: only the embedded mode needs it

        self.pgdata = data_dir / "pgdata"
        try:
            self.pgdata.mkdir(parents=True, exist_ok=True)
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            reason = _start_failure(exc, self.pgdata / "log")
            message = f"the embedded PostgreSQL in {self.pgdata} did not start: {reason}"
            raise EmbeddedDatabaseError(message) from exc

    @property
    def url(self) -> str:
        return str(self._server.get_uri())

    def stop(self) -> None:
        self._server.cleanup()


def _start_failure(exc: Exception, log_file: Path) -> str:
    """pgserver's failure in one line: for a command (pg_ctl, initdb) that failed, the last
    line of the server's log (pgserver keeps it in the data directory), which holds why."""
    if not isinstance(exc, subprocess.CalledProcessError):
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no log")
    return f"{Path(str(exc.cmd[0])).name} exited with status {exc.returncode}: {last} ({log_file})"


def resolve_database(
    database_url: str | None, data_dir: Path
) -> tuple[str, EmbeddedPostgres | None]:
    """The configured server when a URL is given, else the embedded one."""
    if database_url:
        return database_url, None
    embedded = EmbeddedPostgres(data_dir)
    return embedded.url, embedded


def masked_conninfo(conninfo: str) -> str:
    """The connection string as it may be shown: its password (in a URL's user part, a URL's
    `password` parameter or a `password=` key) replaced by ***."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", conninfo):  # a URL, of any scheme (a mistyped
        # mysql:// one is shown in the error that refuses it)
        masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):[^/?#]*@", r"\1:***@", conninfo)
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", masked)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", conninfo)
