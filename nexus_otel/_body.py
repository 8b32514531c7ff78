"""A side copy of a response body, read once the body has ended.

While the SDK reads, each chunk is only referenced (no copy, no parsing), so a stream reaches the
app as fast as it would uninstrumented. At the end, a stream is read where usage lives: its head
(model, id, Anthropic's `message_start`) and its tail (final usage, finish reason, terminal event).
Only when those do not give complete usage (and an estimate needs the text), or when content is
captured, is the whole stream parsed. Bodies above MAX_BODY keep only their head and tail.

gzip and deflate are told from the body's first bytes. Other encodings (brotli, which httpx asks
for once `brotli` is installed and OpenAI's API then answers in; zstd) leave no such mark: for
them the response's `Content-Encoding` is read, and the body decoded as the app's httpx decodes it.
"""

from __future__ import annotations

import collections
import re
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from nexus_otel._internal import loads_json
from nexus_otel._sse import EventHandler, SSEParser

MAX_BODY = 16 * 1024 * 1024
WINDOW = 4 * 1024  # head and tail read from a stream whose usage is complete (events are small)
_SNIFF = 64  # bytes looked at to tell JSON from an event stream
_UNREAD = object()
_EVENT_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SNIFFED = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})  # told from the bytes
_DECODE_PIECE = 16 * 1024  # what the decoder is given at a time: its output is checked between
# decode(encoding, chunks): the body decoded as the app's httpx (or httpx2) decodes it.
Decode = Callable[[str, list[bytes]], "bytes | None"]


class BodyCopy:
    """The chunks of one response body, as the transport received them (before httpx undoes a
    gzip or deflate content-encoding: that is told from the first bytes, so no response header
    needs reading), and what they say once the body has ended."""

    __slots__ = (
        "_chunks",
        "_data",
        "_declared",
        "_encoding",
        "_head",
        "_size",
        "_tail",
        "_tail_size",
        "truncated",
    )

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._head = b""
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self.truncated = False
        self._data: bytes | object | None = _UNREAD
        self._declared: tuple[Any, Decode] | None = None  # the response's headers, a decoder
        self._encoding: str | None = None  # read from them when first needed

    def declare(self, headers: Any, decode: Decode) -> None:
        """The response's headers (read only if the body is not plain JSON) and how to decode
        an encoding its bytes do not tell."""
        self._declared = (headers, decode)

    @property
    def encoding(self) -> str:
        """The `Content-Encoding` the body must be decoded from, when its bytes do not tell it
        (brotli, zstd); "" when there is none, or it is gzip or deflate."""
        if self._encoding is None:
            self._encoding = ""
            if self._declared is not None:
                value = self._declared[0].get("content-encoding") or ""
                if value.strip().lower() not in _SNIFFED:
                    self._encoding = value
        return self._encoding

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

    @property
    def data(self) -> bytes | None:
        """The whole body, uncompressed; b"" once cut short (only its head and tail are kept);
        None when it cannot be read (compressed and cut short, broken compression, or more than
        MAX_BODY once uncompressed). Read once the body has ended."""
        if self._data is _UNREAD:
            self._data = self._read()
        return self._data  # type: ignore[return-value]

    def _read(self) -> bytes | None:
        if self.encoding:
            if self.truncated or self._declared is None:
                return None  # its ends alone cannot be decoded
            return self._declared[1](self.encoding, self._chunks)
        if self.truncated:
            return None if _compression(self._head) else b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        wbits = _compression(data)
        if wbits is None:
            return data
        decompressor = zlib.decompressobj(wbits)
        try:
            plain = decompressor.decompress(data, MAX_BODY)
        except zlib.error:
            return None
        # Beyond MAX_BODY once uncompressed (a "zip bomb" as much as a long body): not read, so
        # a reply that is small on the wire cannot make the copy grow without bound.
        return None if decompressor.unconsumed_tail else plain

    @property
    def is_stream(self) -> bool:
        """Server-sent events rather than one JSON document (an object, or Gemini's array)."""
        start = self._start()
        if self.encoding or _compression(start) is not None:
            start = self.data or b""  # told from its first uncompressed bytes
        return bool(start) and start[:_SNIFF].lstrip()[:1] not in (b"{", b"[")

    def _start(self) -> bytes:
        """The body's first bytes as received (enough to sniff), without joining the rest."""
        if self.truncated:
            return self._head
        return _leading(self._chunks, _SNIFF)

    def json_object(self) -> dict[str, object] | None:
        """The body, when it is one uncompressed JSON object (a reply as most are sent): read
        without the general path's checks. None otherwise."""
        chunks = self._chunks
        if not chunks or self.truncated or chunks[0][:1] != b"{":
            return None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            parsed = loads_json(data)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def json(self) -> object:
        """The body's JSON; None when it is empty, cut short, undecodable or not JSON."""
        data = self.data
        if not data or self.truncated:
            return None
        try:
            return loads_json(data)
        except ValueError:
            return None

    def read_stream(self, on_event: EventHandler, *, full: bool) -> None:
        """Feeds the stream's events to `on_event`: all of them, or those of its head and tail."""
        if self.truncated:
            if self.encoding or _compression(self._head) is not None:
                return  # compressed and cut short: its ends cannot be decompressed
            head, tail = self._head, b"".join(self._tail)
        elif (
            full
            or self._size <= 2 * WINDOW
            or self.encoding
            or _compression(self._start()) is not None
        ):
            data = self.data
            if data is not None:
                _parse(data, on_event)
            return
        else:  # its ends only: a long stream is not joined into one copy to read them
            head, tail = _leading(self._chunks, WINDOW), _trailing(self._chunks, WINDOW)
        SSEParser(on_event).feed(head)  # its unfinished last event is dropped, not dispatched
        boundary = _EVENT_BOUNDARY.search(tail)
        if boundary is not None:
            _parse(tail[boundary.end() :], on_event)

    def _truncate(self) -> None:
        data = b"".join(self._chunks)
        self._head, self._chunks, self.truncated = data[:WINDOW], [], True
        self._tail.append(data[-WINDOW:])
        self._tail_size = len(self._tail[0])


def _leading(chunks: list[bytes], size: int) -> bytes:
    """The first `size` bytes of `chunks` (fewer when they hold fewer)."""
    taken, count = [], 0
    for chunk in chunks:
        taken.append(chunk)
        count += len(chunk)
        if count >= size:
            break
    return b"".join(taken)[:size]


def _trailing(chunks: list[bytes], size: int) -> bytes:
    """The last `size` bytes of `chunks` (fewer when they hold fewer)."""
    taken, count = [], 0
    for chunk in reversed(chunks):
        taken.append(chunk)
        count += len(chunk)
        if count >= size:
            break
    return b"".join(reversed(taken))[-size:]


def _compression(data: bytes) -> int | None:
    """zlib's `wbits` for a gzip or zlib-wrapped (HTTP `deflate`) body, told by its first two
    bytes (no JSON or event stream starts so); None for a body sent as it is."""
    if data[:2] == b"\x1f\x8b":
        return zlib.MAX_WBITS | 16
    if data[:1] == b"\x78" and len(data) > 1 and (0x7800 | data[1]) % 31 == 0:
        return zlib.MAX_WBITS
    return None


def _parse(data: bytes, on_event: EventHandler) -> None:
    parser = SSEParser(on_event)
    parser.feed(data)
    parser.close()


def decoder(module: ModuleType) -> Decode:
    """How `module` (httpx or httpx2) decodes a body for the app, through its public API: the
    same codings it asked for, unknown ones passed through as they are. None when it cannot be
    decoded, or is more than MAX_BODY once decoded (it is fed in small pieces and stopped)."""

    class Pieces(module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, chunks: list[bytes]) -> None:
            self._chunks = chunks

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._chunks:
                for start in range(0, len(chunk), _DECODE_PIECE):
                    yield chunk[start : start + _DECODE_PIECE]

    def decode(encoding: str, chunks: list[bytes]) -> bytes | None:
        headers = [("content-encoding", encoding)]
        response = module.Response(200, headers=headers, stream=Pieces(chunks))
        parts, size = [], 0
        try:
            for part in response.iter_bytes():
                size += len(part)
                if size > MAX_BODY:
                    return None
                parts.append(part)
        except module.DecodingError:
            return None
        return b"".join(parts)

    return decode
