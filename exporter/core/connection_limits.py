"""Deadlines and a cap for the server's connections.

uvicorn's HTTP/1.1 server has no timeout for receiving a request: its keep-alive timeout runs only
between requests and any byte resets it, so a client trickling a request head, or stopping one
byte short of its body, holds its connection (and the body bytes it sent) for as long as it
likes. Its WebSocket server waits without end for a client that reads nothing. These protocol
classes add what is missing:

- the head of a request must arrive within `header_timeout` of the connection's start (or of the
  previous response): otherwise 408 and the connection is closed (silently when nothing came);
- a body must keep arriving: at least `body_min_bytes_per_second` in every window of
  `body_timeout` seconds, or 408 and close; the application sees a disconnect, which frees what
  the request held;
- beyond `max_connections` open connections on a port, a new one is answered 503 and closed;
- a WebSocket client that leaves data unread for `ws_send_timeout` seconds (the server's write
  buffer above its high-water mark all that time) is cut off;
- a WebSocket message over WS_MAX_MESSAGE_BYTES is refused (1009) before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from exporter.core.settings import Settings

log = logging.getLogger(__name__)
# A refusal or a timeout is logged once, then at most once a minute with a count, so a flood
# of them cannot flood the log.
_LOG_INTERVAL_SECONDS = 60.0
_RETRY_AFTER_SECONDS = 1  # what a refused connection is told: capacity frees within seconds
# The system's send buffer of a WebSocket connection, fixed (Linux doubles it) so it does not
# grow to megabytes for a client that does not read: such a client then costs at most this and
# uvicorn's 64 KiB write buffer before the server stops writing and its send timeout runs. A
# live feed needs far less than this per round trip.
_WS_SEND_BUFFER_BYTES = 64 * 1024
# The largest message a WebSocket client may send. The live feed reads nothing from its clients
# (it only notices them leave): a frame announcing more is refused at its header (1009) and the
# connection closed. uvicorn's default, 16 MiB, was held in memory per connection until a frame
# was complete, so a few hundred connections could take gigabytes.
WS_MAX_MESSAGE_BYTES = 4096


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    body_min_bytes_per_second: int
    max_connections: int
    ws_send_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            body_min_bytes_per_second=settings.body_min_bytes_per_second,
            max_connections=settings.max_connections,
            ws_send_timeout=settings.ws_send_timeout_seconds,
        )


class _OccasionalLog:
    """Logs an event's first occurrence, then at most once per interval with a count."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.unlogged = 0
        self.logged_at = float("-inf")

    def __call__(self, detail: str) -> None:
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= _LOG_INTERVAL_SECONDS:
            log.warning(
                "%s (%d since the last report; latest: %s)", self.message, self.unlogged, detail
            )
            self.unlogged, self.logged_at = 0, now


_log_refused = _OccasionalLog("refused connections over the connection cap")
_log_timed_out = _OccasionalLog("closed connections too slow to send their request")
_log_dropped_ws = _OccasionalLog("dropped WebSocket clients that did not read")


def _plain_response(status: str, message: str, *extra: str) -> bytes:
    body = message.encode() + b"\n"
    head = [
        f"HTTP/1.1 {status}",
        "content-type: text/plain; charset=utf-8",
        "connection: close",
        f"content-length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Phase(enum.Enum):
    IDLE = "idle"  # a request is being answered: the application's own timeouts apply
    HEAD = "head"
    BODY = "body"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline, a body rate and a connection cap."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _Phase.IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_cycle: RequestResponseCycle | None = None
        self._bytes_in_window = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._refused = True
            cap = self.limits.max_connections
            transport.write(
                _plain_response(
                    "503 Service Unavailable",
                    f"over the cap of {cap} open connections",
                    f"retry-after: {_RETRY_AFTER_SECONDS}",
                )
            )
            transport.close()
            _log_refused(f"{cap} connections open")
            return
        super().connection_made(transport)
        self._arm(_Phase.HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._bytes_in_window += len(data)
        super().data_received(data)
        self._follow_request()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._cancel()  # the connection is the WebSocket protocol's from now on
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            self._cancel()
        elif self.cycle is not self._timed_cycle:  # a pipelined request came in
            self._follow_request()
        else:  # the next request's head (or the rest of an unread body) is due
            self._arm(_Phase.HEAD)

    def _follow_request(self) -> None:
        cycle = self.cycle
        if cycle is None or self.transport.is_closing():
            return
        if cycle is not self._timed_cycle:  # a new request's head has arrived
            self._timed_cycle = cycle
            if cycle.more_body:
                self._arm(_Phase.BODY)
            else:
                self._cancel()
        elif self._phase is _Phase.BODY and not cycle.more_body:
            self._cancel()

    def _arm(self, phase: _Phase) -> None:
        self._cancel()
        self._phase = phase
        self._bytes_in_window = 0
        seconds = self.limits.header_timeout if phase is _Phase.HEAD else self.limits.body_timeout
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = _Phase.IDLE

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase is _Phase.BODY:
            window = self.limits.body_timeout
            enough = max(1, int(self.limits.body_min_bytes_per_second * window))
            if self._bytes_in_window >= enough:  # still arriving fast enough: next window
                self._arm(_Phase.BODY)
                return
            message = f"request body too slow: {self._bytes_in_window} bytes in {window:g} s"
        elif self._bytes_in_window and self.conn.their_state is h11.SEND_BODY:
            # Answered early (a 413, a 503), and the body it was refused still trickles in.
            message = f"rest of the body not received within {self.limits.header_timeout:g} s"
        elif self._bytes_in_window:
            message = f"request head not received within {self.limits.header_timeout:g} s"
        else:  # an idle connection: closed without a word, like a keep-alive timeout
            self.transport.close()
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _log_timed_out(f"{client}: {message}")
        self._close_with_timeout(message)

    def _close_with_timeout(self, message: str) -> None:
        cycle = self.cycle
        answering = cycle is not None and self._phase is _Phase.BODY
        if not (answering and cycle is not None and cycle.response_started):
            self.transport.write(_plain_response("408 Request Timeout", message))
        if answering and cycle is not None and not cycle.response_complete:
            # The application sees a disconnect, so it lets go of the bytes it holds.
            cycle.disconnected = True
            cycle.message_event.set()
        self._cancel()
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol that resets a client leaving sent data unread, or not
    answering the server's close, for `ws_send_timeout`: closing politely would wait for that
    client to read, which it never does, while the system keeps its unsent data."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a fixed buffer: a client that does not read is noticed early
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _WS_SEND_BUFFER_BYTES)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            self.close_timer.cancel()  # uvicorn's would close politely after 10 s
            self.close_timer = self.loop.call_later(
                self.limits.ws_send_timeout, self._reset, "did not answer the close"
            )

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.limits.ws_send_timeout, self._cut_off)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_watching()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _stop_watching(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _cut_off(self) -> None:
        self._stalled = None
        self._reset(f"left data unread for {self.limits.ws_send_timeout:g} s")

    def _reset(self, why: str) -> None:
        """Closes with a reset, which frees the unsent data at once (a close would wait)."""
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        _log_dropped_ws(f"{client} {why}")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def guarded_protocols(
    limits: ConnectionLimits,
) -> tuple[type[GuardedH11Protocol], type[GuardedWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes for one server, bound to its limits."""

    class HTTPProtocol(GuardedH11Protocol):
        pass

    class WebSocketProtocol(GuardedWebSocketProtocol):
        pass

    HTTPProtocol.limits = limits
    WebSocketProtocol.limits = limits
    return HTTPProtocol, WebSocketProtocol
