"""Every span recorded reaches the exporter: sent at once while it answers, kept on disk while it
does not, and sent from there (oldest first, merged into bigger requests) once it answers again.

- `DeliveringSpanProcessor` is the SDK's `BatchSpanProcessor` while the exporter answers. While
  it does not, each span is written to the spool as it ends, so a process killed during an
  outage loses nothing it had finished.
- `SpoolingSpanExporter.export()` sends a batch once; a batch that cannot be sent now
  (connection refused, timeout, 429, 5xx, 401/403) goes to the spool and the exporter is marked
  unreachable until a retry succeeds. Retries back off exponentially (with jitter) and wait at
  least what a `Retry-After` asks.
- A restarted app sends what an earlier run left in its spool.
- `shutdown()` spends at most `shutdown_seconds` on the network; what is left stays spooled.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from nexus_otel._internal import log
from nexus_otel._sender import OtlpSender, Outcome, Verdict
from nexus_otel._spool import Claim, Spool, count_spans, per_span_requests

_FIRST_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0
# How often an idle sender looks for batches other processes (or an earlier run) left.
_IDLE_SCAN_SECONDS = 5.0
# A request merged from spooled batches stays under these: the exporter's own body limit is
# far above, and a smaller request is retried more cheaply.
# How often a send in flight checks whether a shutdown stopped waiting for it.
_DEADLINE_CHECK_SECONDS = 0.05
# When every spooled batch is held by other processes sending them.
_BUSY_PAUSE_SECONDS = 0.2
_MERGED_REQUEST_BYTES = 4 * 1024 * 1024
_MERGED_REQUEST_BATCHES = 1000


@dataclass(frozen=True)
class DeliveryStatus:
    """What `nexus_otel.delivery_status()` reports about the spans on their way to the exporter."""

    spool_directory: str | None  # None when spans are kept in memory only
    exporter_reachable: bool  # False from a failed send until a send succeeds
    pending_batches: int  # spooled, waiting for the exporter
    pending_bytes: int
    spooled_spans: int  # spans this process wrote to the spool
    delivered_spans: int  # spans this process had acknowledged by the exporter
    dropped_spans: int  # dropped because the spool was full or could not be written
    refused_spans: int  # refused for good by the exporter (400, 413, partial success)
    last_error: str


class _Link:
    """Whether the exporter answers, and when to try it again; shared by both sending threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reachable = True
        self.next_attempt = 0.0  # time.monotonic()
        self.last_error = ""
        self._backoff = _FIRST_BACKOFF_SECONDS

    def succeeded(self) -> None:
        with self._lock:
            self.reachable, self._backoff, self.next_attempt = True, _FIRST_BACKOFF_SECONDS, 0.0

    def failed(self, outcome: Outcome) -> None:
        with self._lock:
            if self.reachable or outcome.detail != self.last_error:
                log.warning(
                    "nexus_otel: the exporter did not take spans (%s); keeping them in the spool",
                    outcome.detail,
                )
            delay = self._backoff * random.uniform(0.8, 1.2)  # jitter
            if outcome.retry_after is not None:
                delay = max(delay, outcome.retry_after)
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF_SECONDS)
            self.reachable, self.last_error = False, outcome.detail
            self.next_attempt = time.monotonic() + delay


class SpoolingSpanExporter(SpanExporter):
    """Sends each batch once; keeps in the spool what the exporter did not take."""

    def __init__(self, sender: OtlpSender, spool: Spool, shutdown_seconds: float) -> None:
        self.sender, self.spool, self.link = sender, spool, _Link()
        self.shutdown_seconds = shutdown_seconds
        self.spooled_spans = self.delivered_spans = self.refused_spans = 0
        self._deadline: float | None = None  # set when shutting down
        self._start_drainer()
        if hasattr(os, "register_at_fork"):  # a forked worker sends its own spool, as the SDK
            weak = weakref.WeakMethod(self._after_fork)  # restarts its batch worker there

            def after_in_child() -> None:
                method = weak()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    def _start_drainer(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._drainer = threading.Thread(
            target=self._drain_forever, name="nexus_otel spool", daemon=True
        )
        self._drainer.start()

    def _after_fork(self) -> None:
        if self._deadline is None:
            self.link = _Link()
            self.spool.after_fork()
            self._start_drainer()

    # -- the app's side ----------------------------------------------------------------------
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans).SerializePartialToString()
        if not self.link.reachable or self._out_of_time():
            self.keep(body, len(spans))
            return SpanExportResult.SUCCESS
        if not self._send_parts([(body, len(spans))]):
            self.keep(body, len(spans))  # spans already taken are stored once when sent again
        return SpanExportResult.SUCCESS

    def keep(self, body: bytes, spans: int) -> None:
        if self.spool.write(body, spans):
            self.spooled_spans += spans
            self._wake.set()

    def keep_span(self, span: ReadableSpan) -> None:
        """Spools one span as it ends (while the exporter is unreachable)."""
        if self.spool.append(encode_spans([span]).SerializePartialToString(), 1):
            self.spooled_spans += 1

    def begin_shutdown(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.shutdown_seconds

    def shutdown(self) -> None:
        self.begin_shutdown()
        self._stop.set()
        self._wake.set()
        self._drainer.join(max(0.0, self._remaining()) + 1.0)
        self.spool.close_segment()
        self.sender.close()
        dropped = self.spool.dropped
        if dropped.spans or self.refused_spans:
            log.warning(
                "nexus_otel: %d spans dropped (spool full or unwritable) and %d refused by the "
                "exporter in this process",
                dropped.spans,
                self.refused_spans,
            )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # nothing is held between calls: a batch is sent or spooled in `export()`

    def status(self) -> DeliveryStatus:
        pending = self.spool.pending()
        return DeliveryStatus(
            spool_directory=str(self.spool.directory),
            exporter_reachable=self.link.reachable,
            pending_batches=len(pending),
            pending_bytes=sum(batch.size for batch in pending),
            spooled_spans=self.spooled_spans,
            delivered_spans=self.delivered_spans,
            dropped_spans=self.spool.dropped.spans,
            refused_spans=self.refused_spans,
            last_error=self.link.last_error,
        )

    # -- the spool's side --------------------------------------------------------------------
    def _drain_forever(self) -> None:
        while not self._stop.is_set():
            if self.link.reachable:
                self._wake.wait(_IDLE_SCAN_SECONDS)
                self._wake.clear()
            else:  # at least a moment: other processes may hold every spooled batch
                wait = self.link.next_attempt - time.monotonic()
                self._stop.wait(max(wait, _BUSY_PAUSE_SECONDS))
            if self._stop.is_set():
                break
            if not self.link.reachable and time.monotonic() < self.link.next_attempt:
                continue  # woken by a write while waiting out a backoff or a Retry-After
            try:
                self.drain()
            except Exception:  # never let the sending thread die: log, wait, go on
                log.exception("nexus_otel: sending the spool failed; trying again later")
                self._stop.wait(_MAX_BACKOFF_SECONDS)
        self._drain_until_deadline()

    def drain(self) -> None:
        """Sends spooled batches, oldest first, until none is left or a send fails."""
        while not self._stop.is_set() or not self._out_of_time():
            claims = self._claim_group()
            if not claims:
                if not self.spool.pending():
                    self.link.succeeded()  # another process delivered them: try sending again
                return
            if not self._send_group(claims):
                return

    def _drain_until_deadline(self) -> None:
        """At shutdown: what the time left allows, if the exporter answers."""
        if self.link.reachable and not self._out_of_time():
            self.drain()

    def _claim_group(self) -> list[Claim]:
        self.spool.close_segment()  # what this process appended while the exporter was away
        claims: list[Claim] = []
        size = 0
        for batch in self.spool.pending():
            if len(claims) >= _MERGED_REQUEST_BATCHES or (
                claims and size + batch.size > _MERGED_REQUEST_BYTES
            ):
                break
            claim = self.spool.claim(batch)
            if claim is not None:
                claims.append(claim)
                size += batch.size
        return claims

    def _send_group(self, claims: list[Claim]) -> bool:
        """Sends the claimed batches as one request (protobuf messages concatenate into one);
        True when the spool may go on."""
        try:
            parts = [(body := c.read(), c.batch.spans or count_spans(body)) for c in claims]
            if self._out_of_time() or not self._send_parts(parts):
                return False
            for claim in claims:
                claim.delete()
            return True
        finally:
            for claim in claims:
                claim.release()

    def _send_parts(self, parts: list[tuple[bytes, int]]) -> bool:
        """Sends serialized requests (with their span counts) as one. When the exporter refuses
        it for good (400, 413), the halves are sent on their own, down to single spans, so one
        bad span never takes its neighbours with it. False when it must be sent again later."""
        spans = sum(count for _, count in parts)
        outcome = self._send(b"".join(body for body, _ in parts))
        if outcome.verdict is Verdict.RETRY:
            self.link.failed(outcome)
            return False
        if outcome.verdict is Verdict.REJECTED and spans > 1:
            if len(parts) == 1:
                parts = [(body, 1) for body in per_span_requests(parts[0][0])]
            if len(parts) > 1:
                half = len(parts) // 2
                return self._send_parts(parts[:half]) and self._send_parts(parts[half:])
        self.link.succeeded()
        self._settled(outcome, spans)
        return True

    def _send(self, body: bytes) -> Outcome:
        """Sends on a thread of its own, so that a shutdown can stop waiting for an exporter
        that does not answer: the request is abandoned (its batch stays spooled; should it
        arrive after all, the exporter stores its spans once)."""
        answer: list[Outcome] = []
        done = threading.Event()

        def send() -> None:
            try:
                answer.append(self.sender.send(body, self._timeout()))
            except Exception as error:  # a bad header or URL: kept, and said in `last_error`
                answer.append(Outcome(Verdict.RETRY, f"{type(error).__name__}: {error}"))
            finally:
                done.set()

        threading.Thread(target=send, name="nexus_otel send", daemon=True).start()
        while not done.wait(_DEADLINE_CHECK_SECONDS):
            if self._out_of_time():
                return Outcome(Verdict.RETRY, "no answer before the shutdown deadline")
        return answer[0]

    def _settled(self, outcome: Outcome, spans: int) -> None:
        if outcome.verdict is Verdict.REJECTED:
            self.refused_spans += spans
            log.error("nexus_otel: the exporter refused %d spans: %s", spans, outcome.detail)
            return
        self.delivered_spans += spans
        if outcome.detail:  # a partial success: some spans were refused, the rest stored
            log.warning("nexus_otel: the exporter stored a batch but %s", outcome.detail)

    def _out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _remaining(self) -> float:
        if self._deadline is None:
            return self.shutdown_seconds
        return self._deadline - time.monotonic()

    def _timeout(self) -> float:
        if self._deadline is None:
            return self.sender.timeout
        return max(0.05, min(self.sender.timeout, self._remaining()))


class DeliveringSpanProcessor(SpanProcessor):
    """The SDK's batching while the exporter answers; each span straight to disk while not."""

    def __init__(self, exporter: SpoolingSpanExporter, schedule_delay_millis: float | None) -> None:
        self.exporter = exporter
        self._batch = BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass  # the batch processor does nothing here either

    def on_end(self, span: ReadableSpan) -> None:
        if self.exporter.link.reachable:
            self._batch.on_end(span)
        else:
            try:
                self.exporter.keep_span(span)
            except Exception:  # never into the app's call; the span goes the usual way instead
                log.exception("nexus_otel: could not spool a span; queued in memory instead")
                self._batch.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._batch.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.begin_shutdown()  # before the batch processor's last export
        self._batch.shutdown()  # type: ignore[no-untyped-call]  # exports, then ends the exporter


def spool_directory_for(url: str, base: Path) -> Path:
    """One spool per exporter URL under `base`: batches go where they were meant to."""
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]
