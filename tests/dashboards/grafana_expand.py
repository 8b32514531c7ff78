"""What Grafana does to a panel query before a datasource runs it, for Prometheus and PostgreSQL.

Followed from Grafana 11's sources: template variables are replaced in the browser (the SQL
datasource quotes each value of a multi-value or include-All variable, `'a','b'`; the Prometheus
datasource regex-escapes them, `(a|b)`; a custom All value is inserted as is); then
pkg/tsdb/grafana-postgresql-datasource/sqleng `Interpolate` replaces `$__interval`,
`$__interval_ms`, `$__unixEpochFrom()`, `$__unixEpochTo()` and its `macros.go` the `$__name(args)`
macros (`$__timeGroup` directly followed by a comma becomes `$__timeGroupAlias`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALL = "$__all"
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_PROM_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")
# Grafana's rangeutil.roundInterval steps, as (upper bound, rounded interval) in seconds.
_ROUNDING = (
    (0.015, 0.01), (0.035, 0.02), (0.075, 0.05), (0.15, 0.1), (0.35, 0.2), (0.75, 0.5),
    (1.5, 1), (3.5, 2), (7.5, 5), (12.5, 10), (17.5, 15), (25, 20), (45, 30), (90, 60),
    (210, 120), (450, 300), (750, 600), (1050, 900), (1500, 1200), (2700, 1800),
    (5400, 3600), (9000, 7200), (16200, 10800), (32400, 21600), (86400, 43200),
)  # fmt: skip


@dataclass(frozen=True)
class Variable:
    name: str
    options: Sequence[str]  # every value the variable's query returned
    selected: Sequence[str] | str = ALL  # ALL or the chosen values
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None  # a custom All value, inserted unformatted

    def values(self) -> list[str] | None:
        """The selected values, or None when a custom All value stands in for them."""
        if self.selected == ALL:
            return None if self.all_value is not None else list(self.options)
        return [self.selected] if isinstance(self.selected, str) else list(self.selected)


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval: timedelta  # Grafana's $__interval for the panel

    @classmethod
    def last(cls, span: timedelta, now: datetime, min_interval: timedelta) -> TimeRange:
        return cls(now - span, now, panel_interval(span, min_interval))


def panel_interval(span: timedelta, min_interval: timedelta, max_points: int = 1000) -> timedelta:
    """Range / max data points, rounded the way Grafana rounds it, never below the minimum."""
    raw = span.total_seconds() / max_points
    rounded = next((step for bound, step in _ROUNDING if raw < bound), 86400 * 7)
    return max(timedelta(seconds=rounded), min_interval)


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit."""
    ms = int(interval.total_seconds() * 1000)
    for unit, size in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000),
                       ("m", 60_000), ("s", 1000), ("ms", 1)):  # fmt: skip
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def parse_interval(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text.strip().strip("'"))
    if not match:
        raise ValueError(f"error parsing interval {text}")
    seconds = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return timedelta(seconds=int(match[1]) * seconds[match[2]])


def rfc3339nano(moment: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: fraction without trailing zeros, `Z`."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# --- template variables -----------------------------------------------------------------------


def _sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_format(variable: Variable) -> str:
    values = variable.values()
    if values is None:
        return variable.all_value or ""
    if not variable.multi and not variable.include_all:
        return values[0].replace("'", "''")
    return ",".join(_sql_quote(v) for v in values)


def _prom_escape(value: str) -> str:
    return _PROM_SPECIAL.sub(lambda m: "\\\\" + m[0], value.replace("\\", "\\\\\\\\"))


def _prom_format(variable: Variable) -> str:
    values = variable.values()
    if values is None:
        return variable.all_value or ""
    if not variable.multi and not variable.include_all:
        return values[0]
    escaped = [_prom_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _replace_variables(text: str, formatted: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return formatted.get(name, match[0])

    return _VARIABLE.sub(substitute, text)


# --- PromQL -----------------------------------------------------------------------------------


def expand_promql(
    expr: str, variables: Sequence[Variable], time_range: TimeRange, scrape_interval: timedelta
) -> str:
    """Grafana's Prometheus datasource: variables, then $__interval, $__rate_interval, $__range."""
    interval = max(time_range.interval, scrape_interval)
    rate_interval = max(interval + scrape_interval, 4 * scrape_interval)
    span = time_range.end - time_range.start
    builtins = {
        "__interval": format_interval(interval),
        "__interval_ms": str(int(interval.total_seconds() * 1000)),
        "__rate_interval": f"{int(rate_interval.total_seconds() * 1000)}ms",
        "__range": f"{int(span.total_seconds())}s",
        "__range_s": str(int(span.total_seconds())),
        "__range_ms": str(int(span.total_seconds() * 1000)),
    }
    formatted = {v.name: _prom_format(v) for v in variables}
    return _replace_variables(expr, {**builtins, **formatted})


def prometheus_step(time_range: TimeRange, scrape_interval: timedelta) -> float:
    return max(time_range.interval, scrape_interval).total_seconds()


# --- SQL --------------------------------------------------------------------------------------


def expand_sql(raw_sql: str, variables: Sequence[Variable], time_range: TimeRange) -> str:
    """The SQL Grafana's PostgreSQL datasource sends for a panel query."""
    interval = time_range.interval
    formatted = {v.name: _sql_format(v) for v in variables}
    builtins = {
        "__interval": format_interval(interval),
        "__interval_ms": str(int(interval.total_seconds() * 1000)),
    }
    text = _replace_variables(raw_sql, {**builtins, **formatted})
    text = text.replace("$__unixEpochFrom()", str(int(time_range.start.timestamp())))
    text = text.replace("$__unixEpochTo()", str(int(time_range.end.timestamp())))
    return _expand_macros(text, time_range)


def _expand_macros(text: str, time_range: TimeRange) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match[1]
        if name == "__timeGroup":
            after = text.find(match[0]) + len(match[0])
            if after < len(text) and text[after] == ",":
                name = "__timeGroupAlias"
        args = [arg.strip() for arg in match[2].split(",")]
        return _macro(name, args, time_range)

    return _MACRO.sub(substitute, text)


def _macro(name: str, args: list[str], time_range: TimeRange) -> str:
    start, end = time_range.start, time_range.end
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
    if name == "__timeFrom":
        return f"'{rfc3339nano(start)}'"
    if name == "__timeTo":
        return f"'{rfc3339nano(end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise ValueError(f"macro {name} needs time column and interval")
        seconds = _number(parse_interval(args[1]).total_seconds())
        group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        return (
            f"{args[0]} >= {math.floor(start.timestamp())} AND "
            f"{args[0]} <= {math.floor(end.timestamp())}"
        )
    raise ValueError(f"unknown macro {name!r}")
