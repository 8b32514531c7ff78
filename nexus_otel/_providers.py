"""What `instrument()` puts into an app's tracing and can take out again, through public APIs only.

The API lets the global tracer provider be set once per process. So the provider set globally is
a `SwappableTracerProvider`, set the first time and kept: `instrument()` points it at a new SDK
provider and `uninstrument()` at a no-op one, and every tracer handed out follows. A processor
added to an app's own provider cannot be removed from it: a `DetachableProcessor` is added
instead, and detaching it flushes and shuts down what it holds and leaves it doing nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util import types

_TracerKey = tuple[str, str | None, str | None, types.Attributes]


class _SwappableTracer(trace.Tracer):
    """A tracer of the provider in use; `SwappableTracerProvider.use` replaces what it holds."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self.tracer.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    # The SDK's own, public: it starts the span with `start_span` above and makes it current.
    start_as_current_span = sdk_trace.Tracer.start_as_current_span


class SwappableTracerProvider(trace.TracerProvider):
    """The global tracer provider `instrument()` sets once; it delegates to the provider in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delegate: trace.TracerProvider = trace.NoOpTracerProvider()
        self._tracers: weakref.WeakKeyDictionary[_SwappableTracer, _TracerKey] = (
            weakref.WeakKeyDictionary()
        )

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        with self._lock:
            tracer = _SwappableTracer(self._delegate.get_tracer(*key))
            self._tracers[tracer] = key
        return tracer

    def use(self, delegate: trace.TracerProvider) -> None:
        """From now on, every tracer handed out makes its spans with `delegate`."""
        with self._lock:
            self._delegate = delegate
            for tracer, key in list(self._tracers.items()):
                tracer.tracer = delegate.get_tracer(*key)

    def stop(self) -> None:
        """No spans at all until the next `use()`."""
        self.use(trace.NoOpTracerProvider())

    @property
    def delegate(self) -> trace.TracerProvider:
        return self._delegate

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """As on an SDK provider: added to the provider in use (none while uninstrumented)."""
        delegate = self._delegate
        if isinstance(delegate, TracerProvider):
            delegate.add_span_processor(processor)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        delegate = self._delegate
        if isinstance(delegate, TracerProvider):
            return delegate.force_flush(timeout_millis)
        return True


class DetachableProcessor(SpanProcessor):
    """A processor on an app's own provider that `detach()` empties: the SDK has no public way to
    remove a processor from a provider."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner: SpanProcessor | None = inner

    def on_start(self, span: sdk_trace.Span, parent_context: Context | None = None) -> None:
        inner = self._inner
        if inner is not None:
            inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        inner = self._inner
        if inner is not None:
            inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        inner = self._inner
        return inner.force_flush(timeout_millis) if inner is not None else True

    def shutdown(self) -> None:
        self.detach()

    def detach(self) -> None:
        """Exports what is queued, shuts the inner processor down and lets spans pass by."""
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.force_flush()
            inner.shutdown()
