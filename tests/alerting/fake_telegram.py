"""A local server speaking the Telegram Bot API's sendMessage, recording what it is sent."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeTelegram:
    url: str
    token: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # paths with a wrong token or method
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self) -> list[str]:
        with self.lock:
            return [m["text"] for m in self.messages]

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "message") -> str:
        """The first message text matching `predicate`; fails listing what did arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.texts():
                if predicate(text):
                    return text
            time.sleep(0.2)
        raise AssertionError(f"no Telegram {what} within {timeout}s; got {self.texts()}")


@contextlib.contextmanager
def fake_telegram(token: str = "4242:test-token") -> Iterator[FakeTelegram]:
    fake = FakeTelegram(url="", token=token)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != f"/bot{fake.token}/sendMessage":
                with fake.lock:
                    fake.refused.append(self.path)
                self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                return
            message = json.loads(body)
            with fake.lock:
                fake.messages.append(message)
                message_id = len(fake.messages)
            # Alertmanager 0.25 needs this exact shape back, or it fails the notification.
            result = {"message_id": message_id, "chat": {"id": int(message["chat_id"])}}
            self._answer(200, {"ok": True, "result": result})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
