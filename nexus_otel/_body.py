"""A side copy of a response body, read once the body has ended.

While the SDK reads, each chunk is only referenced (no copy, no parsing), so a stream reaches the
app as fast as it would uninstrumented. At the end, a stream is read where usage lives: its head
(model, id, Anthropic's `message_start`) and its tail (final usage, finish reason, terminal event).
Only when those do not give complete usage (and an estimate needs the text), or when content is
captured, is the whole stream parsed. Bodies above MAX_BODY keep only their head and tail.
"""

from __future__ import annotations

import collections
import re
import zlib

from nexus_otel._internal import loads_json
from nexus_otel._sse import EventHandler, SSEParser

MAX_BODY = 16 * 1024 * 1024
WINDOW = 16 * 1024  # head and tail read from a stream whose usage is complete
_EVENT_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class BodyCopy:
    def __init__(self, content_type: str, content_encoding: str) -> None:
        self.is_stream = "text/event-stream" in content_type
        self.encoding = content_encoding.strip().lower()
        self._chunks: list[bytes] = []
        self._size = 0
        self._head = b""
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        if not self.truncated:
            self._size += len(chunk)
            self._chunks.append(chunk)
            if self._size > MAX_BODY:
                self._truncate()
            return
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= WINDOW:
            self._tail_size -= len(self._tail.popleft())

    def json(self) -> object:
        """The body's JSON; None when it is empty, cut short, undecodable or not JSON."""
        data = self._decoded()
        if not data or self.truncated:
            return None
        try:
            return loads_json(data)
        except ValueError:
            return None

    def read_stream(self, on_event: EventHandler, *, full: bool) -> None:
        """Feeds the stream's events to `on_event`: all of them, or those of its head and tail."""
        data = self._decoded()
        if data is None:
            return
        if self.truncated:
            head, tail = self._head, b"".join(self._tail)
        elif full or len(data) <= 2 * WINDOW or self.encoding not in ("", "identity"):
            _parse(data, on_event)
            return
        else:
            head, tail = data[:WINDOW], data[-WINDOW:]
        SSEParser(on_event).feed(head)  # its unfinished last event is dropped, not dispatched
        boundary = _EVENT_BOUNDARY.search(tail)
        if boundary is not None:
            _parse(tail[boundary.end() :], on_event)

    def _truncate(self) -> None:
        data = b"".join(self._chunks)
        self._head, self._chunks, self.truncated = data[:WINDOW], [], True
        self._tail.append(data[-WINDOW:])
        self._tail_size = len(self._tail[0])

    def _decoded(self) -> bytes | None:
        """The body without its content-encoding; None for an encoding this cannot undo."""
        data = b"".join(self._chunks)
        if self.encoding in ("", "identity"):
            return data
        if self.truncated:
            return None  # a compressed stream cannot be read from its middle
        if self.encoding in ("gzip", "x-gzip", "deflate"):
            window = zlib.MAX_WBITS | (16 if "gzip" in self.encoding else 0)
            try:
                return zlib.decompressobj(window).decompress(data)
            except zlib.error:
                return None
        return None


def _parse(data: bytes, on_event: EventHandler) -> None:
    parser = SSEParser(on_event)
    parser.feed(data)
    parser.close()
