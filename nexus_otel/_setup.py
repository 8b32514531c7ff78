"""`NexusInstrumentor` (the `opentelemetry_instrumentor` entry point `nexus_otel`, which
`opentelemetry-instrument` loads) and its friendly facade `instrument()` / `uninstrument()`: the
SDK, the OTLP/HTTP export, the httpx instrumentations, the transport wrappers.

Follows the BaseInstrumentor contract: idempotent, and uninstrumenting undoes what instrumenting
did. The global tracer provider is set once (a `SwappableTracerProvider`, pointed at no provider
once uninstrumented), and an exporter added to an app's own provider is detached, not removed.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

# The module is marked untyped as a whole (`# type: ignore` at its top): its names read as Any.
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from nexus_otel._budget import guard_from_settings
from nexus_otel._budget_api import BudgetApi, BudgetStatus
from nexus_otel._call import CallSettings
from nexus_otel._delivery import DeliveringSpanProcessor, DeliveryStatus
from nexus_otel._delivery_settings import delivery_processor
from nexus_otel._internal import log
from nexus_otel._providers import DetachableProcessor, SwappableTracerProvider
from nexus_otel._secrets import scrub_text
from nexus_otel._transport import Interceptor, unwrap_all, wrap_module

_SCOPE = "nexus_otel"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Where the HTTP instrumentation records the URL, or its query and path (old and new names).
_URL_ATTRIBUTES = ("url.full", "http.url", "url.query", "http.target", "url.path")


@dataclass
class _Installed:
    provider: TracerProvider  # where our spans go
    owned: bool = False  # made by us (and set globally through the swappable provider)
    processor: SpanProcessor | None = None  # our exporter, when we added one
    delivery: DeliveringSpanProcessor | None = None  # the spooling one, when it is ours
    instrumentors: list[BaseInstrumentor] = field(default_factory=list)
    wrapped: list[tuple[Any, str]] = field(default_factory=list)
    interceptor: Interceptor | None = None


_lock = threading.Lock()
_installed: _Installed | None = None
_api: BudgetApi | None = None  # the API `instrument()` was told of, for budget_status()
_global_provider: SwappableTracerProvider | None = None  # set globally once, then kept


class NexusInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # the base class is untyped
    """Every LLM call made through httpx or httpx2 becomes one GenAI span.

    `opentelemetry-instrument python app.py` loads it with no options: the spans go to the
    tracer provider the distro configured from the `OTEL_*` variables, through its exporters.
    `instrument(**options)` takes the options of `nexus_otel.instrument()`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # httpx or httpx2, whichever the app has: neither is required

    def _instrument(self, **options: Any) -> None:
        global _installed
        _installed = _install(**options)

    def _uninstrument(self, **options: Any) -> None:
        global _installed
        installed, _installed = _installed, None
        if installed is not None:
            _undo(installed)


def instrument(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    tracer_provider: TracerProvider | None = None,
    providers: dict[str, str] | None = None,
    capture_content: bool | None = None,
    http_spans: bool = False,
    spool: str | os.PathLike[str] | bool | None = None,
    budget_guard: str | None = None,
    budget_fail: str | None = None,
    api_url: str | None = None,
    api_token: str | None = None,
) -> None:
    """Turns every LLM call made through httpx or httpx2 into one GenAI span, exported over OTLP.

    - `service_name`: the resource's `service.name` (else `OTEL_SERVICE_NAME`).
    - `endpoint`: the exporter's base URL, e.g. `http://127.0.0.1:4318` (else
      `NEXUS_OTEL_ENDPOINT`, else the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
      `OTEL_EXPORTER_OTLP_ENDPOINT`, else localhost:4318).
    - `tracer_provider`: use this provider as it is (no exporter added unless `endpoint` is given).
      Without it, an SDK provider the app already set globally is joined the same way (its own
      exporters send our spans; an OTLP exporter to `endpoint` is added only when it is given),
      or a new one is created, with an OTLP exporter, and set globally.
    - `providers`: `{"host:port": "groq"}` names the provider of every call to that server (a
      gateway, a self-hosted or OpenAI-compatible `base_url`), whatever the host or the SDK says.
    - `capture_content`: record prompts and completions (`gen_ai.input.messages`,
      `gen_ai.output.messages`); off unless this or `NEXUS_OTEL_CAPTURE_CONTENT=true`.
    - `http_spans`: also keep the HTTP span of `opentelemetry-instrumentation-httpx` under each
      LLM call's span. Off by default: the GenAI span already carries the server and any
      status code but 200, and the HTTP span would double the instrumentation's cost. Off, LLM
      requests get no `traceparent` header (providers do not read it) and add nothing to the
      httpx duration metrics; every other httpx request keeps its HTTP span either way.
    - `spool`: where spans the exporter cannot take now are kept until it can (a directory), or
      False to keep them in memory only (lost after ~10 s of retries). Default:
      `NEXUS_OTEL_SPOOL_DIR` (`off` turns it off), else a directory per endpoint under
      `~/.local/state/nexus-otel/spool`. Bounded by `NEXUS_OTEL_SPOOL_MAX_BYTES` (256 MiB).

    - `budget_guard`: `block` reserves each call's worst-case cost against the budgets whose
      scope matches before the request leaves, and raises `nexus_otel.BudgetExceeded` when
      one has too little left; `warn` sends it anyway and marks its span; `off` (default; else
      `NEXUS_OTEL_BUDGET_GUARD`). `budget_fail`: `open` (default) lets calls through while the
      API cannot be reached (logged once), `closed` refuses them (`NEXUS_OTEL_BUDGET_FAIL`).
    - `api_url`, `api_token`: the exporter's API, for the guard and `budget_status()` (else
      `NEXUS_API_URL`, default http://127.0.0.1:8000, and `NEXUS_API_TOKEN`).

    Calling it again while instrumented does nothing. The same as
    `NexusInstrumentor().instrument(...)`, which `opentelemetry-instrument` calls."""
    with _lock:
        instrumentor = NexusInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                service_name=service_name,
                endpoint=endpoint,
                tracer_provider=tracer_provider,
                providers=providers,
                capture_content=capture_content,
                http_spans=http_spans,
                spool=spool,
                budget_guard=budget_guard,
                budget_fail=budget_fail,
                api_url=api_url,
                api_token=api_token,
            )


def uninstrument() -> None:
    """Undoes `instrument()`: flushes our spans and restores what it changed."""
    with _lock:
        instrumentor = NexusInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Exports the spans still queued (or spools them, while the exporter does not answer);
    short scripts call it (or `shutdown()`) before exiting."""
    installed = _installed
    if installed is None:
        return True
    return bool((installed.processor or installed.provider).force_flush(timeout_millis))


def shutdown() -> None:
    """Flushes and uninstruments. Waits at most `NEXUS_OTEL_SHUTDOWN_SECONDS` (3 s) for an
    exporter that does not answer; the spans it did not take stay in the spool."""
    installed = _installed
    if installed is not None and installed.delivery is not None:
        installed.delivery.exporter.begin_shutdown()
    force_flush()
    uninstrument()


def budget_status(name: str | None = None) -> list[BudgetStatus] | BudgetStatus:
    """The enabled budgets in their current period (state ok/warning/exceeded, spend, what
    leases reserve, limit, usage percent, remaining, forecast), from the exporter's API
    (`instrument(api_url=...)`, else NEXUS_API_URL); `name`: that one budget (LookupError if
    no enabled budget has it). Raises ApiUnreachable when the API does not answer."""
    statuses = (_api or BudgetApi()).statuses()
    if name is None:
        return statuses
    for found in statuses:
        if found.name == name:
            return found
    raise LookupError(f"no enabled budget named {name!r}")


def delivery_status() -> DeliveryStatus:
    """The spans on their way to the exporter: spooled, delivered, dropped, refused."""
    installed = _installed
    if installed is None or installed.delivery is None:
        return DeliveryStatus(None, True, 0, 0, 0, 0, 0, 0, "")
    return installed.delivery.exporter.status()


def _install(
    service_name: str | None = None,
    endpoint: str | None = None,
    tracer_provider: TracerProvider | None = None,
    providers: dict[str, str] | None = None,
    capture_content: bool | None = None,
    http_spans: bool = False,
    spool: str | os.PathLike[str] | bool | None = None,
    budget_guard: str | None = None,
    budget_fail: str | None = None,
    api_url: str | None = None,
    api_token: str | None = None,
) -> _Installed:
    global _api
    _api = BudgetApi(api_url, api_token)
    if endpoint is None:  # lets `opentelemetry-instrument` apps have the spooling exporter too
        endpoint = os.environ.get("NEXUS_OTEL_ENDPOINT", "").strip() or None
    installed = _provider(service_name, endpoint, tracer_provider, spool)
    try:
        _instrument_http(installed, providers or {}, _capture(capture_content), http_spans)
        assert installed.interceptor is not None
        service = installed.provider.resource.attributes.get(SERVICE_NAME, "unknown_service")
        installed.interceptor.guard = guard_from_settings(
            budget_guard, budget_fail, api_url, api_token, str(service)
        )
    except BaseException:
        _undo(installed)
        raise
    return installed


def _capture(capture_content: bool | None) -> bool:
    if capture_content is not None:
        return capture_content
    raw = os.environ.get("NEXUS_OTEL_CAPTURE_CONTENT", "").strip().lower()
    if raw and raw not in _TRUE | _FALSE:
        # As OpenTelemetry reads its boolean variables: false, with a warning.
        log.warning(
            "nexus_otel: NEXUS_OTEL_CAPTURE_CONTENT=%r is neither true nor false: prompts and"
            " completions are not captured",
            raw,
        )
    return raw in _TRUE


def _provider(
    service_name: str | None,
    endpoint: str | None,
    explicit: TracerProvider | None,
    spool: str | os.PathLike[str] | bool | None,
) -> _Installed:
    current = trace.get_tracer_provider()
    if explicit is None and isinstance(current, TracerProvider):  # the app's own: join it
        explicit = current
    if explicit is not None:
        # Whether the app's provider already exports OTLP is not public: an exporter is added
        # only when asked for, so a provider configured to export (as `opentelemetry-instrument`
        # does) never sends each span twice.
        installed = _Installed(explicit)
        if endpoint is not None:
            processor = delivery_processor(endpoint, spool)
            installed.processor = DetachableProcessor(processor)
            installed.delivery = _delivering(processor)
            explicit.add_span_processor(installed.processor)
        return installed
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes))
    processor = delivery_processor(endpoint, spool)
    provider.add_span_processor(processor)  # shut down with the provider
    _swappable_global_provider().use(provider)
    return _Installed(provider, owned=True, delivery=_delivering(processor))


def _delivering(processor: SpanProcessor) -> DeliveringSpanProcessor | None:
    return processor if isinstance(processor, DeliveringSpanProcessor) else None


def _swappable_global_provider() -> SwappableTracerProvider:
    """Ours, set globally the first time. Should another library's provider be set globally
    already, it stays; our spans still go to our own provider."""
    global _global_provider
    if _global_provider is None:
        _global_provider = SwappableTracerProvider()
        trace.set_tracer_provider(_global_provider)
    return _global_provider


def _instrument_http(
    installed: _Installed, providers: dict[str, str], capture: bool, http_spans: bool
) -> None:
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )

    tracer = trace.get_tracer(_SCOPE, tracer_provider=installed.provider)
    installed.interceptor = Interceptor(CallSettings(tracer, capture, http_spans), providers)
    for module_name, instrumentor_class in (
        ("httpx", HTTPXClientInstrumentor),
        ("httpx2", HTTPX2ClientInstrumentor),
    ):
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
        if installed.interceptor.guard is not None:
            installed.interceptor.guard.close()
    if not unwrap_all(installed.wrapped):
        log.warning(
            "nexus_otel: another wrapper sits on the httpx transports; ours stays, inactive"
        )
    for instrumentor in installed.instrumentors:
        instrumentor.uninstrument()
    if installed.delivery is not None:  # bounded: what the exporter does not take stays spooled
        installed.delivery.exporter.begin_shutdown()
    if isinstance(installed.processor, DetachableProcessor):
        installed.processor.detach()
    if installed.owned:
        if _global_provider is not None:
            _global_provider.stop()
        installed.provider.shutdown()  # flushes and stops its exporter
