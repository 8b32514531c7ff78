"""`instrument()` and `uninstrument()`: the SDK, the OTLP/HTTP export, the httpx instrumentations.

Follows the BaseInstrumentor contract: idempotent, and `uninstrument()` undoes exactly what
`instrument()` did (the global TracerProvider, a processor added to the app's own provider, the
httpx instrumentations, the transport wrappers).
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from nexus_otel._call import CallSettings
from nexus_otel._internal import log
from nexus_otel._secrets import scrub_text
from nexus_otel._transport import Interceptor, unwrap_all, wrap_module

_SCOPE = "nexus_otel"
_TRUE = {"1", "true", "yes", "on"}
# Where the HTTP instrumentation records the URL, or its query and path (old and new names).
_URL_ATTRIBUTES = ("url.full", "http.url", "url.query", "http.target", "url.path")


@dataclass
class _Installed:
    provider: Any
    set_global: bool = False
    processor: SpanProcessor | None = None
    instrumentors: list[Any] = field(default_factory=list)
    wrapped: list[tuple[Any, str]] = field(default_factory=list)
    interceptor: Interceptor | None = None


_lock = threading.Lock()
_installed: _Installed | None = None


def instrument(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    tracer_provider: TracerProvider | None = None,
    providers: dict[str, str] | None = None,
    capture_content: bool | None = None,
    http_spans: bool = False,
) -> None:
    """Turns every LLM call made through httpx or httpx2 into one GenAI span, exported over OTLP.

    - `service_name`: the resource's `service.name` (else `OTEL_SERVICE_NAME`).
    - `endpoint`: the exporter's base URL, e.g. `http://127.0.0.1:4318` (else the standard
      `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, else localhost:4318).
    - `tracer_provider`: use this provider as it is (no exporter added unless `endpoint` is given).
      Without it, an SDK provider the app already set globally is joined (an OTLP exporter is
      added unless it already has one), or a new one is created and set globally.
    - `providers`: `{"host:port": "groq"}` for raw REST calls to gateways the library cannot
      recognise by host or SDK.
    - `capture_content`: record prompts and completions (`gen_ai.input.messages`,
      `gen_ai.output.messages`); off unless this or `NEXUS_OTEL_CAPTURE_CONTENT=true`.
    - `http_spans`: also keep the HTTP span of `opentelemetry-instrumentation-httpx` under each
      LLM call's span. Off by default: the GenAI span already carries the server and any
      status code but 200, and the HTTP span would double the instrumentation's cost. Off, LLM
      requests get no `traceparent` header (providers do not read it) and add nothing to the
      httpx duration metrics; every other httpx request keeps its HTTP span either way.

    Calling it again while instrumented does nothing."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        installed = _provider(service_name, endpoint, tracer_provider)
        try:
            settings = (_capture(capture_content), http_spans)
            _instrument_http(installed, providers or {}, *settings)
        except BaseException:
            _undo(installed)
            raise
        _installed = installed


def uninstrument() -> None:
    """Undoes `instrument()`: flushes our spans and restores what it changed."""
    global _installed
    with _lock:
        installed, _installed = _installed, None
        if installed is not None:
            _undo(installed)


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Exports the spans still queued; short scripts call it (or `shutdown()`) before exiting."""
    installed = _installed
    if installed is None:
        return True
    flush = getattr(installed.processor or installed.provider, "force_flush", None)
    return bool(flush(timeout_millis)) if flush else True


def shutdown() -> None:
    """Flushes and uninstruments."""
    force_flush()
    uninstrument()


def _capture(capture_content: bool | None) -> bool:
    if capture_content is not None:
        return capture_content
    return os.environ.get("NEXUS_OTEL_CAPTURE_CONTENT", "").strip().lower() in _TRUE


def _provider(
    service_name: str | None, endpoint: str | None, explicit: TracerProvider | None
) -> _Installed:
    if explicit is not None:
        installed = _Installed(explicit)
        if endpoint is not None:
            installed.processor = _add_exporter(explicit, endpoint)
        return installed
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # the app's own: join it
        installed = _Installed(current)
        if endpoint is not None or not _exports_otlp(current):
            installed.processor = _add_exporter(current, endpoint)
        return installed
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes))
    installed = _Installed(provider, set_global=True)
    installed.processor = _add_exporter(provider, endpoint)
    trace.set_tracer_provider(provider)
    return installed


def _add_exporter(provider: TracerProvider, endpoint: str | None) -> SpanProcessor:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = (
        None if endpoint is None else endpoint.rstrip("/").removesuffix("/v1/traces") + "/v1/traces"
    )
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url))
    provider.add_span_processor(processor)
    return processor


def _exports_otlp(provider: TracerProvider) -> bool:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    processors = getattr(provider._active_span_processor, "_span_processors", ())
    return any(isinstance(getattr(p, "span_exporter", None) or getattr(p, "_exporter", None),
                          OTLPSpanExporter) for p in processors)  # fmt: skip


def _instrument_http(
    installed: _Installed, providers: dict[str, str], capture: bool, http_spans: bool
) -> None:
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )

    tracer = trace.get_tracer(_SCOPE, tracer_provider=installed.provider)
    installed.interceptor = Interceptor(CallSettings(tracer, capture, http_spans), providers)
    for module_name, instrumentor_class in (("httpx", HTTPXClientInstrumentor),
                                            ("httpx2", HTTPX2ClientInstrumentor)):  # fmt: skip
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        instrumentor = instrumentor_class()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=installed.provider,
                request_hook=_scrub_http_span,
                async_request_hook=_scrub_http_span_async,
            )
            installed.instrumentors.append(instrumentor)
        # After the HTTP instrumentation, so our span is current when its span starts.
        installed.wrapped += wrap_module(module, installed.interceptor)


def _scrub_http_span(span: Any, request: Any) -> None:
    """Keeps `?key=`, user:password@ and tokens in a path (`/bot<token>/`) out of the HTTP span's
    URL (headers are never recorded)."""
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            scrubbed = scrub_text(value)
            if scrubbed != value:
                span.set_attribute(key, scrubbed)


async def _scrub_http_span_async(span: Any, request: Any) -> None:
    _scrub_http_span(span, request)


def _undo(installed: _Installed) -> None:
    if installed.interceptor is not None:
        installed.interceptor.enabled = False
    if not unwrap_all(installed.wrapped):
        log.warning(
            "nexus_otel: another wrapper sits on the httpx transports; ours stays, inactive"
        )
    for instrumentor in installed.instrumentors:
        instrumentor.uninstrument()
    if installed.processor is not None:
        installed.processor.force_flush()
        installed.processor.shutdown()
        _remove_processor(installed.provider, installed.processor)
    if installed.set_global:
        _reset_global_provider()


def _remove_processor(provider: Any, processor: SpanProcessor) -> None:
    multi = getattr(provider, "_active_span_processor", None)
    if multi is None or not hasattr(multi, "_span_processors"):
        return
    with multi._lock:
        multi._span_processors = tuple(p for p in multi._span_processors if p is not processor)


def _reset_global_provider() -> None:
    # The API allows setting the global provider once per process; undoing ours means resetting
    # that guard, as opentelemetry's own test utilities do.
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # type: ignore[attr-defined]
