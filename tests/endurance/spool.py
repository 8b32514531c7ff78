"""The sending side of a real deployment, with each layer's guarantee kept separate.

- The app's BatchSpanProcessor hands finished spans to an exporter and drops spans only when its
  queue is full; the spool below accepts at once, so that queue never fills (tests assert it).
- `SpoolingExporter` stands in for a Collector's sending queue with persistence: it keeps every
  batch until the ingest endpoint acknowledged it, and re-sends it otherwise. Without such a
  layer the SDK alone would give up on a batch after its ~10 s of retries.
- Each send goes through the SDK's own `OTLPSpanExporter` (protobuf over HTTP), which retries
  429/503 itself, honouring Retry-After, for up to `timeout` seconds.
- The exporter's part: answer 200 only once rows are committed, 503 while they cannot be, and
  store a re-sent span once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class SpoolingExporter(SpanExporter):
    """Accepts batches immediately; a worker sends each `copies` times until acknowledged."""

    def __init__(
        self, endpoint: str, *, copies: int = 1, timeout: float = 5, retry_pause: float = 0.5
    ) -> None:
        self._otlp = OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        self._copies = copies
        self._retry_pause = retry_pause
        self._spool: deque[list[ReadableSpan]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self.spans_accepted = 0
        self.spans_acknowledged = 0
        self.sends = 0
        self.failed_sends = 0
        self._worker = threading.Thread(target=self._drain, name="spool", daemon=True)
        self._worker.start()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._changed:
            self._spool.append(list(spans))
            self.spans_accepted += len(spans)
            self._changed.notify_all()
        return SpanExportResult.SUCCESS

    def wait_until_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._spool:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def shutdown(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._worker.join(10)
        self._otlp.shutdown()

    def _drain(self) -> None:
        while True:
            with self._changed:
                while not self._spool and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                batch = self._spool[0]
            if self._send(batch):
                with self._changed:
                    self._spool.popleft()
                    self.spans_acknowledged += len(batch)
                    self._changed.notify_all()
            else:
                time.sleep(self._retry_pause)

    def _send(self, batch: list[ReadableSpan]) -> bool:
        for _ in range(self._copies):
            self.sends += 1
            if self._otlp.export(batch) is not SpanExportResult.SUCCESS:
                self.failed_sends += 1
                return False
        return True
