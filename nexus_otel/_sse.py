"""Reading a response body on the side, chunk by chunk, as the SDK reads it.

Nothing here holds bytes back: each chunk is handed on unchanged by the caller and only copied
into a decoder. Server-sent events are parsed incrementally (the WHATWG rules: `event:` and
`data:` fields, a blank line dispatches); other bodies are accumulated, up to a bound, and
decoded as JSON once complete.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable

MAX_JSON_BODY = 16 * 1024 * 1024  # larger bodies are passed through unread
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
EventHandler = Callable[[str | None, object], None]


class SSEParser:
    def __init__(self, on_event: EventHandler) -> None:
        self._on_event = on_event
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> None:
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        while (end := _line_end(buffer, start)) is not None:
            self._line(buffer[start : end[0]].decode("utf-8", errors="replace"))
            start = end[1]
        self._buffer = buffer[start:]  # one copy per chunk, not per line

    def close(self) -> None:
        if self._buffer:
            self._line(self._buffer.decode("utf-8", errors="replace"))
            self._buffer = b""
        self._dispatch()

    def _line(self, line: str) -> None:
        if not line:
            self._dispatch()
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)

    def _dispatch(self) -> None:
        if not self._data:
            self._event = None
            return
        text = "\n".join(self._data)
        event, self._event, self._data = self._event, None, []
        try:
            data: object = json.loads(text)
        except ValueError:
            data = text  # e.g. OpenAI's `[DONE]`
        self._on_event(event, data)


def _line_end(buffer: bytes, start: int) -> tuple[int, int] | None:
    """Where the line at `start` ends and the next begins (\\n, \\r\\n or \\r)."""
    found = _LINE_BREAK.search(buffer, start)
    if found is None:
        return None
    if found.group() == b"\r" and found.end() == len(buffer):
        return None  # a \n may follow in the next chunk
    return found.start(), found.end()


class JSONAccumulator:
    def __init__(self, on_json: Callable[[object], None]) -> None:
        self._on_json = on_json
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_JSON_BODY:
            self._parts.append(chunk)

    def close(self) -> None:
        if self._size > MAX_JSON_BODY or not self._parts:
            return
        try:
            body = json.loads(b"".join(self._parts))
        except ValueError:
            return
        self._on_json(body)


class Decompressor:
    """Undoes gzip/deflate content-encoding for the side copy; None for encodings it cannot read."""

    @staticmethod
    def for_encoding(encoding: str) -> Decompressor | None:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return Decompressor(None)
        if encoding in ("gzip", "x-gzip"):
            return Decompressor(zlib.decompressobj(zlib.MAX_WBITS | 16))
        if encoding == "deflate":
            return Decompressor(zlib.decompressobj())
        return None

    def __init__(self, inflater: zlib._Decompress | None) -> None:
        self._inflater = inflater

    def __call__(self, chunk: bytes) -> bytes:
        return chunk if self._inflater is None else self._inflater.decompress(chunk)
