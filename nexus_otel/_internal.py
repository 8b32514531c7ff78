"""Telemetry never breaks the caller: internal errors are logged and swallowed.

Set NEXUS_OTEL_RAISE_INTERNAL_ERRORS=1 (the test suite does) to have them raised instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

log = logging.getLogger("nexus_otel")
_T = TypeVar("_T")


def raise_internal_errors() -> bool:
    return os.environ.get("NEXUS_OTEL_RAISE_INTERNAL_ERRORS", "").strip().lower() in {"1", "true"}


def guarded(function: Callable[..., _T], *args: Any, default: Any = None) -> _T:
    """`function(*args)`, or `default` after logging when it fails inside the instrumentation."""
    try:
        return function(*args)
    except Exception:
        internal_error(function)
        return default  # type: ignore[no-any-return]


def internal_error(function: Callable[..., Any]) -> None:
    """Called while handling an exception `function` raised inside the instrumentation: logs it,
    or re-raises it under NEXUS_OTEL_RAISE_INTERNAL_ERRORS. Where a call site runs on every LLM
    call, it catches inline and calls this, which costs nothing until something fails."""
    if raise_internal_errors():
        raise  # the exception our caller is handling
    log.exception(
        "nexus_otel: internal error in %s (ignored)", getattr(function, "__name__", function)
    )


def loads_json(data: bytes | str) -> object:
    """JSON from a body or an event: orjson (about four times faster than json on the small
    bodies of LLM calls), else json for what orjson refuses (NaN, Infinity, lone surrogates,
    UTF-16). Integers beyond 64 bits come as floats, which no token count reaches. Raises
    ValueError when neither can read it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
