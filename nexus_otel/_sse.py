"""An incremental server-sent events parser (the WHATWG rules: `event:` and `data:` fields, a
blank line dispatches; lines end in \\n, \\r\\n or \\r, possibly split across chunks)."""

from __future__ import annotations

import re
from collections.abc import Callable

from nexus_otel._internal import loads_json

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
            data: object = loads_json(text)
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
