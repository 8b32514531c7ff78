"""A PostgreSQL query for the foundation SDK, which ships no builder for SQL datasources.

Registered as a dataquery variant, so dashboards holding it round-trip through the SDK's models.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder, variants
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.models.dashboard import DataSourceRef

POSTGRES_TYPE = "grafana-postgresql-datasource"
SQLFormat = Literal["table", "time_series"]


class SQLQuery(variants.Dataquery):
    """The JSON Grafana's PostgreSQL datasource stores for a query written as code."""

    def __init__(
        self,
        raw_sql: str = "",
        format: SQLFormat = "table",
        ref_id: str | None = None,
        datasource: DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format = format
        self.ref_id = ref_id
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }
        if self.ref_id is not None:
            payload["refId"] = self.ref_id
        if self.datasource is not None:
            payload["datasource"] = self.datasource.to_json()
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        source = data.get("datasource")
        return cls(
            raw_sql=data.get("rawSql", ""),
            format=data.get("format", "table"),
            ref_id=data.get("refId"),
            datasource=DataSourceRef.from_json(source) if source else None,
            hide=data.get("hide"),
        )


class SQLQueryBuilder(builder.Builder[SQLQuery]):
    def __init__(self, raw_sql: str, format: SQLFormat = "table") -> None:
        self._query = SQLQuery(raw_sql=raw_sql, format=format)

    def build(self) -> SQLQuery:
        return self._query

    def ref_id(self, ref_id: str) -> Self:
        self._query.ref_id = ref_id
        return self

    def datasource(self, datasource: DataSourceRef) -> Self:
        self._query.datasource = datasource
        return self


def register_sql_variant() -> None:
    """Lets the SDK's `from_json` decode PostgreSQL targets (both spellings of the plugin id)."""
    runtime = cogruntime.Runtime()
    for identifier in (POSTGRES_TYPE, "postgres"):
        runtime.register_dataquery_variant(
            cogruntime.DataqueryConfig(identifier=identifier, from_json_hook=SQLQuery.from_json)
        )
