"""Reading a response body on the side, chunk by chunk, as the SDK reads it.

Nothing here holds bytes back: each chunk is handed on unchanged by the caller and only copied
into a decoder. Server-sent events are parsed incrementally (the WHATWG rules: `event:` and
`data:` fields, a blank line dispatches); other bodies are accumulated, up to a bound, and
decoded as JSON once complete.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

MAX_JSON_BODY = 16 * 1024 * 1024  # larger bodies are passed through unread
EventHandler = Callable[[str | None, object], None]


class SSEParser:
    def __init__(self, on_event: EventHandler) -> None:
        self._on_event = on_event
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            end = _line_end(self._buffer)
            if end is None:
                return
            line, self._buffer = self._buffer[: end[0]], self._buffer[end[1] :]
            self._line(line.decode("utf-8", errors="replace"))

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


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line ends and the next begins (\\n, \\r\\n or \\r)."""
    newline, carriage = buffer.find(b"\n"), buffer.find(b"\r")
    if carriage != -1 and (newline == -1 or carriage < newline):
        if carriage == len(buffer) - 1:
            return None  # a \n may follow in the next chunk
        return carriage, carriage + (2 if buffer[carriage + 1 : carriage + 2] == b"\n" else 1)
    return None if newline == -1 else (newline, newline + 1)


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
