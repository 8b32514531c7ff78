"""A tiny HTTP server that answers with scripted bytes, pausing where a test tells it to.

Used where the provider simulator cannot help: proving that a stream passes through the
instrumentation as it arrives (the server holds back the rest until the app has seen the first
chunk) and reading gzip-encoded bodies."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

from tests.support import QuietHandler


class ScriptedServer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.release = threading.Event()  # set to send everything after the first part
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.0"  # no content-length: the body is read until close

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                for index, part in enumerate(server.parts):
                    if index == 1:
                        server.release.wait(10)
                    self.wfile.write(part)
                    self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
