"""An OTLP/HTTP traces endpoint that answers as a test scripts it and records what it took.

Where the real exporter cannot be made to answer a given way on cue (a 503 with a given
Retry-After, a 400, no answer at all), this one does. It parses each request as the protobuf
`ExportTraceServiceRequest` it must be, and refuses (400) what does not parse, as the exporter does.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import QuietHandler


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the sink closes)


@dataclass
class Request:
    at: float  # time.monotonic()
    status: int
    span_names: list[str]
    headers: dict[str, str]


class OtlpSink:
    """`answer(request_number, span_names) -> Answer` decides each answer (200 by default)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.answer: Callable[[int, list[str]], Answer] = lambda number, names: Answer()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        sink = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                sink.handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        names = _span_names(body)
        with self._lock:
            number = len(self.requests)
            answer = Answer(400) if names is None else self.answer(number, names)
            headers = {key.lower(): value for key, value in handler.headers.items()}
            self.requests.append(Request(time.monotonic(), answer.status, names or [], headers))
        if answer.hang:
            self.closing.wait(60)
            return
        handler.send_response(answer.status)
        for key, value in answer.headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def stored(self) -> Counter[str]:
        """How often each span name was taken (answered 200)."""
        with self._lock:
            return Counter(n for r in self.requests if r.status == 200 for n in r.span_names)

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()


def _span_names(body: bytes) -> list[str] | None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError:
        return None
    return [
        span.name
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
