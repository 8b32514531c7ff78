"""A local server speaking the Telegram Bot API's sendMessage, recording what it is sent and
refusing, with Telegram's own 400 answers, what Telegram refuses: HTML it cannot parse (a tag it
does not support, one left open or closed out of order, a bare `<`, `>` or `&`) and a text
longer than 4,096 characters once its entities are parsed."""

from __future__ import annotations

import contextlib
import html
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support import QuietHandler, serving


@dataclass
class FakeTelegram:
    url: str
    token: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # paths with a wrong token or method
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (reason, text) refused
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
        with self.lock:
            rejected = [reason for reason, _ in self.rejected]
        raise AssertionError(
            f"no Telegram {what} within {timeout}s; got {self.texts()}; refused {rejected}"
        )


@contextlib.contextmanager
def fake_telegram(token: str = "4242:test-token") -> Iterator[FakeTelegram]:
    fake = FakeTelegram(url="", token=token)

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != f"/bot{fake.token}/sendMessage":
                with fake.lock:
                    fake.refused.append(self.path)
                self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                return
            message = json.loads(body)
            if problem := message_problem(message):
                with fake.lock:
                    fake.rejected.append((problem, str(message.get("text"))))
                self._answer(400, {"ok": False, "error_code": 400, "description": problem})
                return
            with fake.lock:
                fake.messages.append(message)
                message_id = len(fake.messages)
            # Alertmanager 0.25 needs this exact shape back, or it fails the notification.
            result = {"message_id": message_id, "chat": {"id": int(message["chat_id"])}}
            self._answer(200, {"ok": True, "result": result})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            self.answer(status, json.dumps(body).encode(), "application/json")

    with serving(Handler) as server:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield fake


MAX_TEXT = 4096  # Telegram's limit, in UTF-16 code units of the text after entity parsing
# The tags parse_mode HTML supports, and the attributes each may carry.
ALLOWED_TAGS: dict[str, set[str]] = {
    **{
        tag: set()
        for tag in ["b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "pre", "tg-spoiler"]
    },
    "span": {"class"},
    "a": {"href"},
    "code": {"class"},
    "blockquote": {"expandable"},
}
ATTRIBUTE = re.compile(r"""\s+([a-z-]+)(?:=(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
TOKEN = re.compile(
    r"""<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-z-]+(?:=(?:"[^"]*"|'[^']*'|[^\s"'>]+))?)*)\s*>"""
    r"|&(?:#[0-9]+|#x[0-9a-fA-F]+|lt|gt|amp|quot);"
    r"|[^<>&]+",
)


def message_problem(message: dict[str, Any]) -> str | None:
    """Telegram's description of why it refuses this sendMessage, or None."""
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        return "Bad Request: message text is empty"
    visible = text
    if message.get("parse_mode") == "HTML":
        problem, visible = _parse_html(text)
        if problem:
            return f"Bad Request: can't parse entities: {problem}"
    if len(visible.encode("utf-16-le")) // 2 > MAX_TEXT:
        return "Bad Request: message is too long"
    return None


def _parse_html(text: str) -> tuple[str | None, str]:
    """(the problem, or None; the text as displayed)."""
    open_tags: list[str] = []
    shown: list[str] = []
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            char = text[position]
            return f"unexpected {char!r} at byte offset {len(text[:position].encode())}", ""
        token, position = match.group(0), match.end()
        if not token.startswith("<"):
            shown.append(html.unescape(token))
            continue
        closing, tag, attributes = match.group(1), match.group(2).lower(), match.group(3)
        if tag not in ALLOWED_TAGS:
            return f'Unsupported start tag "{tag}"', ""
        if closing:
            if not open_tags or open_tags.pop() != tag:
                return f'Unmatched end tag "{tag}"', ""
            continue
        for name, *values in ATTRIBUTE.findall(attributes):
            value = next((v for v in values if v), "")
            if name not in ALLOWED_TAGS[tag]:
                return f'Unsupported attribute "{name}" of tag "{tag}"', ""
            if tag == "span" and value != "tg-spoiler":
                return 'Unsupported class of tag "span"', ""
        open_tags.append(tag)
    if open_tags:
        return f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"', ""
    return None, "".join(shown)


def displayed(text: str) -> str:
    """An HTML message as the app shows it: tags gone, entities decoded."""
    problem, shown = _parse_html(text)
    assert problem is None, problem
    return shown
