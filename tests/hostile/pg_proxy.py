"""A pass-through TCP proxy in front of the real PostgreSQL that reads the frontend protocol:
it counts the statements each connection executes and can hold a statement (by a word in its
text) until the test lets it go, which makes "the database is slow" exact instead of timed."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# Startup-phase requests that carry no type byte and are followed by another startup message.
_NEGOTIATIONS = {80877103, 80877104}  # SSLRequest, GSSENCRequest
_HOLD_TIMEOUT = 120.0  # a test that forgets to release must still end


@dataclass
class Connection:
    opened_at: float
    texts: list[bytes] = field(default_factory=list)  # Parse and Query texts, in order
    executions: int = 0  # Execute and Query messages: statements run


class PgProxy:
    def __init__(self, database_url: str) -> None:
        info = conninfo_to_dict(database_url)
        host, port = str(info.get("host") or "/tmp"), int(info.get("port") or 5432)
        self._unix = host.startswith("/")
        self._upstream: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if self._unix else (host, port)
        )
        self._server = socket.create_server(("127.0.0.1", 0))
        listen_port = self._server.getsockname()[1]
        self.url = make_conninfo(
            database_url, host="127.0.0.1", port=str(listen_port), sslmode="disable",
            gssencmode="disable",
        )  # fmt: skip
        self.connections: list[Connection] = []
        self.hold_word: bytes | None = None
        self.held = threading.Event()  # a statement with hold_word is waiting
        self.released = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        for sock in [self._server, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            family = socket.AF_UNIX if self._unix else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.connect(self._upstream)
            self._sockets += [client, upstream]
            connection = Connection(time.monotonic())
            self.connections.append(connection)
            threading.Thread(target=self._frontend, args=(client, upstream, connection),
                             daemon=True).start()  # fmt: skip
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def _frontend(self, client: socket.socket, upstream: socket.socket, conn: Connection) -> None:
        buffer = b""
        starting = True
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while True:
                    header = 4 if starting else 5
                    if len(buffer) < header:
                        break
                    length = struct.unpack("!I", buffer[header - 4 : header])[0]
                    size = length + (0 if starting else 1)
                    if len(buffer) < size:
                        break
                    message, buffer = buffer[:size], buffer[size:]
                    if starting:
                        code = struct.unpack("!I", message[4:8])[0]
                        starting = code in _NEGOTIATIONS
                    else:
                        self._inspect(message, conn)
                    upstream.sendall(message)
        except OSError:
            pass
        finally:
            upstream.close()

    def _inspect(self, message: bytes, conn: Connection) -> None:
        kind = message[:1]
        if kind in (b"P", b"Q"):
            body = message[5:]
            text = body if kind == b"Q" else body.split(b"\0", 2)[1]
            conn.texts.append(text)
            if self.hold_word and self.hold_word in text:
                self.held.set()
                self.released.wait(_HOLD_TIMEOUT)
        if kind in (b"E", b"Q"):
            conn.executions += 1


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        target.close()
