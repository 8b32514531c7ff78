"""Where spans are sent and kept: the endpoint, the spool and its bound, from arguments and
environment variables, checked once when `instrument()` runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from nexus_otel._delivery import (
    DeliveringSpanProcessor,
    SpoolingSpanExporter,
    spool_directory_for,
)
from nexus_otel._internal import log
from nexus_otel._secrets import scrub_text
from nexus_otel._sender import OtlpSender
from nexus_otel._spool import Spool

SPOOL_DIR = "NEXUS_OTEL_SPOOL_DIR"
SPOOL_MAX_BYTES = "NEXUS_OTEL_SPOOL_MAX_BYTES"
SHUTDOWN_SECONDS = "NEXUS_OTEL_SHUTDOWN_SECONDS"
_OFF = {"off", "none", "false", "0", "no"}
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024  # some 300,000 calls' spans
# `shutdown()` (and the exit of the app) waits at most this long for the exporter; what it
# could not send stays in the spool for the next run.
DEFAULT_SHUTDOWN_SECONDS = 3.0
# How long a finished span waits to be batched while the exporter answers: the SDK's default
# is 5 s, which a live view shows as 5-second jumps; a send every half second costs nothing.
DEFAULT_SCHEDULE_DELAY_MILLIS = 500.0
_Number = TypeVar("_Number", int, float)
_DEFAULT_ENDPOINT = "http://localhost:4318"
_TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str | None) -> str:
    """The OTLP/HTTP traces URL, as the SDK's exporter resolves it: the argument (a base URL),
    else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    plus `/v1/traces`."""
    if endpoint is not None:
        return endpoint.rstrip("/").removesuffix(_TRACES_PATH) + _TRACES_PATH
    signal = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if signal:
        return signal
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _DEFAULT_ENDPOINT
    return base.rstrip("/") + _TRACES_PATH


def delivery_processor(
    endpoint: str | None, spool: str | os.PathLike[str] | bool | None
) -> SpanProcessor:
    """The processor that sends our spans to `endpoint`: spooled on disk unless turned off."""
    url = traces_url(endpoint)
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1].strip("/"):
        # Anything else is never sent (the spans would wait in the spool for good).
        given = endpoint if endpoint is not None else url
        raise ValueError(
            f"the OTLP endpoint must be an http:// or https:// URL, not {scrub_text(given)!r}"
        )
    max_bytes = _positive_number(SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_BYTES, int)
    shutdown_seconds = _positive_number(SHUTDOWN_SECONDS, DEFAULT_SHUTDOWN_SECONDS, float)
    directory = _spool_directory(spool, url)
    if directory is None:
        return _in_memory(url)
    try:
        kept = Spool(directory, max_bytes)
    except OSError as error:
        log.warning(
            "nexus_otel: no spool at %s (%s): spans the exporter cannot take now will be lost",
            directory,
            error,
        )
        return _in_memory(url)
    exporter = SpoolingSpanExporter(OtlpSender(url), kept, shutdown_seconds)
    delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else DEFAULT_SCHEDULE_DELAY_MILLIS
    return DeliveringSpanProcessor(exporter, delay)


def _in_memory(url: str) -> SpanProcessor:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url))


def _spool_directory(spool: str | os.PathLike[str] | bool | None, url: str) -> Path | None:
    if spool is False:
        return None
    if spool is None or spool is True:
        configured = os.environ.get(SPOOL_DIR, "").strip()
        if configured.lower() in _OFF and spool is None:
            return None
        if configured and configured.lower() not in _OFF:
            return Path(configured).expanduser()
        return spool_directory_for(url, _default_base())
    return Path(spool).expanduser()


def _default_base() -> Path:
    """`$XDG_STATE_HOME/nexus-otel/spool` (`~/.local/state/...`): state that outlives the app
    but is not a cache to clear; a temporary directory where there is no home."""
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if state:
        return Path(state) / "nexus-otel" / "spool"
    home = Path.home() if "HOME" in os.environ or os.name == "nt" else None
    if home is not None and home.is_dir() and os.access(home, os.W_OK):
        return home / ".local" / "state" / "nexus-otel" / "spool"
    user = getattr(os, "getuid", lambda: "user")()
    return Path(tempfile.gettempdir()) / f"nexus-otel-{user}" / "spool"


def _positive_number(name: str, default: _Number, kind: type[_Number]) -> _Number:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = kind(0)
    if not 0 < value < float("inf"):  # nan and inf too: a wait for ever, or none
        raise ValueError(f"{name}={raw!r}: expected a finite positive {kind.__name__}")
    return value
