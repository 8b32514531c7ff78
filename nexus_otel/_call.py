"""One LLM call seen at the HTTP layer: its GenAI span, from request to the last byte of the body.

The span ends when the body has been read to the end (or closed, or failed), so it carries the
usage the body reports. The request's JSON is read, and the span started with what it tells, once
the request's last byte has been sent (`prepare`): the server is working on the reply then and
the app is only waiting for it, so that work adds nothing to the call's time. When the transport
gives no such moment (the send failed first), it is done when the response comes or the call
ends. With HTTP spans kept, the span starts before the request, to be their parent. When another
instrumentation already has a GenAI span open around the request (the Anthropic SDK's own
tracing, the official openai-v2 or google-genai instrumentations), that span is enriched
instead, so each call is still one span.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode

from nexus_otel import attributes as a
from nexus_otel._body import BodyCopy, Decode
from nexus_otel._detect import Target
from nexus_otel._embeddings import EMBEDDINGS
from nexus_otel._estimate import estimate_source, estimate_tokens, price, span_time
from nexus_otel._internal import guarded, internal_error, loads_json
from nexus_otel._llm_providers import MAX_REPORTED_COST_USD, NOT_MODEL_CALLS
from nexus_otel._operation import CURRENT_OPERATION, CallRecord, record_call
from nexus_otel._secrets import scrub_text
from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage

_GEN_AI_PROVIDER_KEYS = (a.GEN_AI_PROVIDER_NAME, a.GEN_AI_SYSTEM)
_MAX_STATUS_MESSAGE = 500  # characters of an error message kept on the span; the rest is noise
# Other instrumentations' spans that already describe one completed call: a further request
# inside one is another call (an app's own span around several), not a retry, so it gets ours.
_DESCRIBED: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class CallSettings:
    tracer: trace.Tracer
    capture_content: bool
    http_spans: bool = False  # keep the httpx instrumentation's span under each call


class LLMCall:
    __slots__ = (
        "_body",
        "_first_chunk",
        "_parent",
        "_prepared",
        "_sent",
        "_start_ns",
        "_started",
        "_stream_state",
        "_unfinished",
        "budget_attributes",
        "budget_in_flight",
        "operation",
        "owns_span",
        "request",
        "response",
        "settings",
        "span",
        "status_code",
        "target",
    )

    def __init__(self, target: Target, sent: Any, settings: CallSettings) -> None:
        """`sent`: the httpx request, read by `prepare()`. Only what must be taken before the
        request goes out is taken here: the rest waits for `prepare()`."""
        self.target, self.settings = target, settings
        self._sent: Any = sent
        self.request: RequestInfo = _UNREAD
        self._prepared = False
        self.budget_attributes: dict[str, Any] | None = None  # what the budget guard decided
        # What the guard finishes while the request is in flight (its exact count), if anything.
        self.budget_in_flight: Callable[[], None] | None = None
        self.operation = CURRENT_OPERATION.get()
        self._started = time.monotonic()
        self._start_ns = time.time_ns()
        self._parent: context.Context | None = context.get_current()
        self.span: Span | None = None
        self.status_code: int | None = None
        self._unfinished = [True]  # popped once: list.pop is atomic, so is finishing
        if settings.http_spans:  # started now, so the HTTP span can be its child
            self.prepare()

    def read_request(self) -> RequestInfo:
        """What the request says, read once (the budget guard needs it before it is sent)."""
        if self.request is _UNREAD:
            sent, self._sent = self._sent, None
            try:
                self.request = self.target.wire.request_info(self.target.path, _request_json(sent))
            except Exception:
                self.request = RequestInfo()
                internal_error(self.target.wire.request_info)
        return self.request

    def prepare(self) -> None:
        """Reads the request and starts our span with what it tells (or tags the GenAI span of
        another instrumentation open around the request); the first call does it. The transport
        calls this once the request's last byte is sent, while the server works."""
        if self._prepared:
            return
        self._prepared = True
        if self.budget_in_flight is not None:
            guarded(self.budget_in_flight)
        self.read_request()
        self.response = ResponseInfo()
        self._body: BodyCopy | None = BodyCopy()
        self._first_chunk: float | None = None
        self._stream_state: Any = None  # what the wire format's stream reading shares
        foreign = guarded(_open_gen_ai_span, self._parent)
        self.owns_span = foreign is None
        if foreign is not None:
            self.span = foreign
            guarded(self._tag, foreign)
            return
        try:
            self.span = self._start_span(self._start_attributes(), self._start_ns)
        except Exception:  # tried again, with every attribute, when the call ends
            internal_error(self._start_span)

    def activate(self) -> object | None:
        """While the request is sent, the httpx instrumentation is told to make no HTTP span
        (OpenTelemetry's `suppress_http_instrumentation()`), or, when HTTP spans are kept, our
        span is made current so the HTTP span is its child. Returns the token for
        `deactivate`."""
        if not self.settings.http_spans:
            suppressed = suppress_http_instrumentation()
            suppressed.__enter__()
            return suppressed
        if not self.owns_span:
            return None
        return context.attach(trace.set_span_in_context(self.span))  # type: ignore[arg-type]

    @staticmethod
    def deactivate(token: object) -> None:
        """Undoes `activate()`, when it gave a token."""
        if isinstance(token, AbstractContextManager):
            token.__exit__(None, None, None)
        else:
            context.detach(token)  # type: ignore[arg-type]

    def on_response(
        self, status_code: int, headers: Any = None, decode: Decode | None = None
    ) -> None:
        """The reply's status; its headers are read only if its body is not plain JSON (for an
        encoding its bytes do not tell, which `decode` undoes)."""
        self.prepare()  # done already, unless the reply came before the request was sent in full
        self.status_code = status_code
        if headers is not None and decode is not None and self._body is not None:
            self._body.declare(headers, decode)

    def on_chunk(self, chunk: bytes) -> None:
        if self._first_chunk is None and chunk and self.request.stream:
            self._first_chunk = time.monotonic()
        if self._body is not None:  # None once the call has ended
            self._body.add(chunk)

    def finish(self, error: BaseException | None = None) -> None:
        """Ends the call once: usage (from the body, or estimated), the span, the record. Called
        again when the body is closed after being read: that returns at the first check."""
        unfinished = self._unfinished
        if not unfinished:
            return
        try:
            unfinished.pop()
        except IndexError:  # another thread finished it between the two lines
            return
        ended = time.monotonic() if self.operation is not None else 0.0  # for the handle only
        self.prepare()  # done already, unless the request was never sent in full
        if self.status_code is not None:  # a response came: its body is read
            try:
                self._read_body()
            except Exception:
                internal_error(self._read_body)
        error_type = self._error_type(error)
        usage, source = self._usage(error_type)
        if self.span is None:  # ours, not started by `prepare`: now, with every attribute
            try:
                values = self._end_attributes(self._start_attributes(), usage, source, error_type)
            except Exception:
                internal_error(self._end_attributes)
                values = self._start_attributes()
            self.span = self._start_span(values, self._start_ns)
        else:
            try:
                values = self._end_attributes({}, usage, source, error_type)
            except Exception:
                internal_error(self._end_attributes)
                values = {}
            self.span.set_attributes(values)
        if self.owns_span:
            if error_type is not None:
                guarded(self._set_error_status, self.span, error)
            self.span.end()
        elif error_type is None:
            guarded(_DESCRIBED.add, self.span)
        if self.operation is not None:  # priced here only for the handle: the exporter prices rows
            duration_ms = (ended - self._started) * 1000
            model, at = self.request.model or self._model(), span_time(self._start_ns)
            cost = self._provider_cost()
            if cost is None:
                response = self.response
                cost = guarded(
                    price, usage, model, self.target.provider, at, response.model,
                    response.service_tier,
                )  # fmt: skip
            record_call(self._record(usage, source, cost, duration_ms, error_type), self.operation)
        # Nothing more is read: let the body, the span and the context go now, not when the
        # SDK's response (often in a reference cycle) is collected.
        self._body = self._stream_state = self._parent = self.span = None

    # --- reading the body -------------------------------------------------------------------
    def _read_body(self) -> None:
        body = self._body
        assert body is not None
        reply = body.json_object()
        if reply is not None:
            self.target.wire.read_json(reply, self.response)
            return
        if not body.is_stream:
            parsed = body.json()
            if parsed is not None:
                self.target.wire.read_json(parsed, self.response)
            return
        self._stream_state = self.target.wire.new_stream_state()
        body.read_stream(self._on_event, full=self.settings.capture_content)
        if not (self.response.usage and self.response.complete):
            # Usage to estimate: that needs all the text, so read every event from the start.
            self.response, self._stream_state = ResponseInfo(), self.target.wire.new_stream_state()
            body.read_stream(self._on_event, full=True)

    def _on_event(self, event: str | None, data: object) -> None:
        self.target.wire.read_event(event, data, self.response, self._stream_state)

    # --- results ----------------------------------------------------------------------------
    def _error_type(self, error: BaseException | None) -> str | None:
        if error is not None and getattr(error, "budget_error_type", None):
            return str(error.budget_error_type)  # type: ignore[attr-defined]  # BudgetExceeded
        if error is not None:
            return "timeout" if "Timeout" in type(error).__name__ else type(error).__qualname__
        if self.status_code is not None and self.status_code >= 400:
            return str(self.status_code)
        return self.response.error_type

    def _usage(self, error_type: str | None) -> tuple[TokenUsage, str]:
        reported = self.response.usage
        if reported is not None and self.response.complete:
            return reported, "response"
        if error_type is not None and not self.response.output_parts:
            return reported or TokenUsage(), "response"  # nothing was generated
        # No usage, or a stream that ended early: estimate what the provider did not report.
        reported = reported or TokenUsage()
        model = self._model()
        return TokenUsage(
            input_tokens=reported.input_tokens
            or self.request.estimated_input_tokens(lambda text: estimate_tokens(text, model)),
            output_tokens=estimate_tokens(self.response.output_text, model),
            cache_read_tokens=reported.cache_read_tokens,
            cache_write_tokens=reported.cache_write_tokens,
            cache_write_1h_tokens=reported.cache_write_1h_tokens,
        ), estimate_source()

    def _model(self) -> str:
        return self.response.model or self.request.model or "unknown"

    def _provider_cost(self) -> Decimal | None:
        """What the provider says the call cost, when the exporter would take it too (the row's
        cost and the handle's are the same)."""
        cost = self.response.provider_cost_usd
        return cost if cost is not None and cost <= MAX_REPORTED_COST_USD else None

    def _record(
        self, usage: TokenUsage, source: str, cost: Any, duration_ms: float, error_type: str | None
    ) -> CallRecord:
        op = self.operation
        return CallRecord(
            provider=self.target.provider,
            model=self.request.model or self._model(),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            duration_ms=duration_ms,
            success=error_type is None,
            error_type=error_type,
            usage_source=source,
            operation=op.name if op else None,
            correlation_id=op.correlation_id if op else None,
        )

    # --- the span ---------------------------------------------------------------------------
    def _start_span(self, attributes: dict[str, Any], start_ns: int | None) -> Span:
        name = f"{self.target.wire.OPERATION} {self.request.model or 'unknown'}"
        return self.settings.tracer.start_span(
            name, self._parent, SpanKind.CLIENT, attributes, start_time=start_ns
        )

    def _start_attributes(self) -> dict[str, Any]:
        # Every attribute costs the SDK a validation: only those with a value are given, and
        # the stream flag only when set (absent reads as a plain call).
        request, op = self.request, self.operation
        attrs: dict[str, Any] = self.target.attributes.copy()  # provider, operation, server
        if request.stream:
            attrs[a.GEN_AI_REQUEST_STREAM] = True
        if request.model is not None:
            attrs[a.GEN_AI_REQUEST_MODEL] = request.model
        if request.max_tokens is not None:
            attrs[a.GEN_AI_REQUEST_MAX_TOKENS] = request.max_tokens
        if request.temperature is not None:
            attrs[a.GEN_AI_REQUEST_TEMPERATURE] = request.temperature
        if op is not None:
            attrs[a.NEXUS_OPERATION] = op.name
            if op.correlation_id:
                attrs[a.NEXUS_CORRELATION_ID] = op.correlation_id
        if self.budget_attributes:
            attrs.update(self.budget_attributes)
        return attrs

    def _tag(self, span: Span) -> None:
        if self.budget_attributes:
            span.set_attributes(self.budget_attributes)
        if self.operation is not None:
            span.set_attribute(a.NEXUS_OPERATION, self.operation.name)
            if self.operation.correlation_id:
                span.set_attribute(a.NEXUS_CORRELATION_ID, self.operation.correlation_id)

    def _end_attributes(
        self, values: dict[str, Any], usage: TokenUsage, source: str, error_type: str | None
    ) -> dict[str, Any]:
        """`values` with what the call's end tells: usage, response, status."""
        response = self.response
        values[a.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
        values[a.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
        # Only estimates are marked on our own spans: absent, the counts are the provider's own
        # (the exporter reads it so). Another instrumentation's span is told either way.
        if source != "response" or not self.owns_span:
            values[a.NEXUS_USAGE_SOURCE] = source
        # Zero counts are left out of our own spans (absent reads as 0); another
        # instrumentation's span may hold its own different reading, so it gets every one.
        full = not self.owns_span
        if usage.cache_read_tokens or full:
            values[a.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
        if usage.cache_write_tokens or full:
            values[a.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
        if usage.cache_write_1h_tokens:  # ours only: absent reads as 0 on any span
            values[a.NEXUS_USAGE_CACHE_WRITE_1H_INPUT_TOKENS] = usage.cache_write_1h_tokens
        if usage.reasoning_tokens or full:
            values[a.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        if response.provider_cost_usd is not None:  # the provider's own charge, in US dollars
            values[a.GEN_AI_USAGE_COST_AMOUNT] = float(response.provider_cost_usd)
            values[a.GEN_AI_USAGE_COST_CURRENCY] = "USD"
            values[a.GEN_AI_USAGE_COST_SOURCE] = "provider"
        if response.model is not None:
            values[a.GEN_AI_RESPONSE_MODEL] = response.model
        if response.response_id is not None:
            values[a.GEN_AI_RESPONSE_ID] = response.response_id
        if response.service_tier is not None:
            values[a.OPENAI_RESPONSE_SERVICE_TIER] = response.service_tier
        if response.finish_reasons:
            values[a.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(response.finish_reasons)
        status = self.status_code  # 200 is left out of our own spans: absent reads as 200
        if status is not None and (status != 200 or full):
            values[a.HTTP_RESPONSE_STATUS_CODE] = status
        if self.request.stream and self._first_chunk is not None:
            values[a.NEXUS_TIME_TO_FIRST_CHUNK] = self._first_chunk - self._started
        if self.settings.capture_content:
            values.update(self._content())
        if error_type is not None and self.owns_span:
            values[a.ERROR_TYPE] = error_type
        return values

    def _set_error_status(self, span: Span, error: BaseException | None) -> None:
        message = self.response.error_message or (
            str(error) if error else f"HTTP {self.status_code}"
        )
        span.set_status(Status(StatusCode.ERROR, scrub_text(message, _MAX_STATUS_MESSAGE)))

    def _content(self) -> dict[str, str]:
        # Prompts quote what users paste, keys included: recorded only once scrubbed.
        content = {
            a.GEN_AI_INPUT_MESSAGES: scrub_text(json.dumps(self.request.messages, default=str))
        }
        if self.target.wire.OPERATION == EMBEDDINGS:  # its output is vectors: never recorded
            return content
        text = {"type": "text", "content": self.response.output_text}
        reasons = ",".join(self.response.finish_reasons)
        output = [{"role": "assistant", "parts": [text], "finish_reason": reasons}]
        content[a.GEN_AI_OUTPUT_MESSAGES] = scrub_text(json.dumps(output))
        return content


_UNREAD = RequestInfo()  # `LLMCall.request` until `prepare()` has read it


def _request_json(request: Any) -> dict[str, Any]:
    try:
        body = loads_json(request.content or b"{}")
    except Exception:  # a streamed or non-JSON request body: nothing to read from it
        return {}
    return body if isinstance(body, dict) else {}


def _open_gen_ai_span(current: context.Context) -> Span | None:
    """Another instrumentation's model-call span, open around this request and not yet used."""
    span = trace.get_current_span(current)
    if span is INVALID_SPAN:  # the usual case: no span around the request
        return None
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CLIENT:
        return None
    attributes = getattr(span, "attributes", None) or {}
    if not any(key in attributes for key in _GEN_AI_PROVIDER_KEYS):
        return None
    if attributes.get(a.GEN_AI_OPERATION_NAME) in NOT_MODEL_CALLS or span in _DESCRIBED:
        return None
    return span
