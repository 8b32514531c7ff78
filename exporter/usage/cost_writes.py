"""Writing repriced costs into api_calls: in place, or by rewriting a partition.

The calls to change are in the temporary table nexus_reprice_changed (`part`: the partition's
oid, `row_id`: the row's ctid, `new_cost`, `new_source`, `price_ref`), chosen while the reprice
holds api_calls in SHARE mode, so no row moves or arrives until it commits.

An UPDATE of a call's cost is never a HOT update (cost_usd is indexed, and a full page has no
room for the new version), so each changed row is written again with an entry in each of the
partition's indexes, and B-tree's bottom-up deletion looks for dead versions that are not dead
yet. On this project's reference machine that is about 110 µs a row; copying a partition's rows
into a new table and building its indexes by sorting costs about 16 µs a row of the partition.
So a partition where at least REWRITE_SHARE of the rows change is rewritten: a new table with
the new costs, indexed and analysed, swapped in for the old one under the same name, index
names and bounds, in the reprice's transaction. Readers see the old rows or the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# A partition rewritten costs about a seventh of updating all its rows in place (see above):
# from a fifth of its rows changed, rewriting is the faster way, with room for error.
REWRITE_SHARE = 0.2
# Partitions smaller than this are updated in place: the swap's catalogue work and its brief
# exclusive lock on api_calls are not worth it for a few thousand rows.
REWRITE_MIN_ROWS = 50_000

_BY_PARTITION = """
SELECT c.part, count(*), greatest(p.reltuples, 0)::bigint
FROM nexus_reprice_changed c JOIN pg_class p ON p.oid = c.part
GROUP BY c.part, p.reltuples
"""
_UPDATE_IN_PLACE = """
UPDATE {part} a SET cost_usd = c.new_cost, cost_source = c.new_source, price_ref = c.price_ref
FROM nexus_reprice_changed c
WHERE c.part = %(part)s AND a.ctid = c.row_id
"""
_PARTITION = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid),
       c.relkind <> 'r'
       OR EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
       OR EXISTS (SELECT FROM pg_policy y WHERE y.polrelid = c.oid)
       OR EXISTS (SELECT FROM pg_constraint f WHERE f.confrelid = c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = %(part)s
"""
_COLUMNS = """
SELECT attname FROM pg_attribute
WHERE attrelid = %(part)s AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
_INDEXES = """
SELECT i.relname, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = %(part)s ORDER BY i.relname
"""
# Everything of the old table's definition that a partition carries, but its indexes (built
# after the rows are in, by sorting) and its bounds (given when it is attached).
_LIKE = (
    "CREATE TABLE {new} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
    " INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS)"
)
_COPY_ROWS = """
INSERT INTO {new} SELECT {columns}
FROM {old} a LEFT JOIN nexus_reprice_changed c ON c.part = %(part)s AND c.row_id = a.ctid
"""
_REPRICED_COLUMNS = {
    "cost_usd": "CASE WHEN c.row_id IS NULL THEN a.cost_usd ELSE c.new_cost END",
    "cost_source": "CASE WHEN c.row_id IS NULL THEN a.cost_source ELSE c.new_source END",
    "price_ref": "CASE WHEN c.row_id IS NULL THEN a.price_ref ELSE c.price_ref END",
}


@dataclass(frozen=True)
class _Partition:
    oid: int
    schema: str
    name: str
    bound: str
    swappable: bool

    def table(self, name: str | None = None) -> sql.Composed:
        return sql.SQL("{}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(name or self.name)
        )


def write_changed_costs(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Writes nexus_reprice_changed's costs into api_calls. Returns the rows written in place
    and the partitions rewritten, for the record of how."""
    done = {"updated in place": 0, "partitions rewritten": 0}
    for part, changed, estimated in conn.execute(_BY_PARTITION).fetchall():
        partition = _partition(conn, part)
        if partition.swappable and _worth_rewriting(conn, partition, changed, estimated):
            _rewrite(conn, partition)
            done["partitions rewritten"] += 1
            continue
        statement = sql.SQL(_UPDATE_IN_PLACE).format(part=partition.table())
        done["updated in place"] += conn.execute(statement, {"part": part}).rowcount
    return done


def _partition(conn: psycopg.Connection[Any], part: int) -> _Partition:
    """The partition; not swappable when a copy of its rows would lack something it has
    (partitions of its own, triggers, row security policies, references from other tables)."""
    row = conn.execute(_PARTITION, {"part": part}).fetchone()
    assert row is not None  # api_calls is held in SHARE mode: no partition comes or goes
    return _Partition(part, row[0], row[1], row[2], swappable=not row[3])


def _worth_rewriting(
    conn: psycopg.Connection[Any], partition: _Partition, changed: int, estimated: int
) -> bool:
    rows = estimated
    if rows <= 0:  # never analysed: count
        counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(partition.table()))
        rows = int((counted.fetchone() or (0,))[0])
    return rows >= REWRITE_MIN_ROWS and changed >= REWRITE_SHARE * rows


def _rewrite(conn: psycopg.Connection[Any], partition: _Partition) -> None:
    """The partition's rows with their new costs in a new table, indexed as the old one was,
    then swapped in under the old names and bounds."""
    params = {"part": partition.oid}
    columns = [r[0] for r in conn.execute(_COLUMNS, params).fetchall()]
    indexes = conn.execute(_INDEXES, params).fetchall()
    new_name = f"nexus_repriced_{partition.oid}"
    old, new = partition.table(), partition.table(new_name)
    conn.execute(sql.SQL(_LIKE).format(new=new, old=old))
    selected = sql.SQL(", ").join(
        sql.SQL(_REPRICED_COLUMNS[c])
        if c in _REPRICED_COLUMNS
        else sql.SQL("a.{}").format(sql.Identifier(c))
        for c in columns
    )
    conn.execute(sql.SQL(_COPY_ROWS).format(new=new, old=old, columns=selected), params)
    built = []
    for number, (index_name, definition) in enumerate(indexes):
        temporary = f"{new_name}_{number}"
        conn.execute(_index_on(definition, temporary, new))
        built.append((temporary, index_name))
    conn.execute(sql.SQL("ANALYZE {}").format(new))
    parent = sql.Identifier("api_calls")
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, old))
    conn.execute(sql.SQL("DROP TABLE {}").format(old))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(partition.name)))
    for temporary, index_name in built:
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(partition.schema, temporary), sql.Identifier(index_name)
            )
        )
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent,
            old,
            sql.SQL(partition.bound),  # the catalogue's own bound text
        )
    )


def _index_on(definition: str, name: str, table: sql.Composed) -> sql.Composed:
    """The index `definition` (pg_get_indexdef's text) under another name on another table:
    its method, columns and predicate are everything from " USING " on."""
    unique = "UNIQUE " if definition.startswith("CREATE UNIQUE INDEX ") else ""
    _, rest = definition.split(" USING ", 1)
    return sql.SQL(
        "CREATE " + unique + "INDEX {} ON {} USING " + rest.replace("{", "{{").replace("}", "}}")
    ).format(sql.Identifier(name), table)
