"""Local stand-ins for the alert channels, recording what Alertmanager delivers: an SMTP server
(ESMTP with AUTH PLAIN/LOGIN, as Go's net/smtp client speaks it), a Slack incoming webhook that
refuses what Slack would refuse, and a plain webhook."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Generic, TypeVar

from tests.support import QuietHandler, serving

T = TypeVar("T")


@dataclass
class Recorder(Generic[T]):
    """What a fake received, and what it refused (with why)."""

    received: list[T] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: T) -> None:
        with self.lock:
            self.received.append(item)

    def refuse(self, why: str) -> None:
        with self.lock:
            self.refused.append(why)

    def items(self) -> list[T]:
        with self.lock:
            return list(self.received)

    def wait_for(self, predicate: Callable[[T], bool], timeout: float = 30, what: str = "") -> T:
        """The first item matching `predicate`; fails listing what did arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.items():
                if predicate(item):
                    return item
            time.sleep(0.2)
        raise AssertionError(
            f"nothing matching {what} within {timeout}s; got {self.items()}; refused {self.refused}"
        )


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    auth: tuple[str, str] | None
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def body(self, subtype: str) -> str:
        part = self.message.get_body(preferencelist=(subtype,))
        assert part is not None and part.get_content_subtype() == subtype, self.message
        return str(part.get_content()).replace("\r\n", "\n")  # mail travels with CRLF


@dataclass
class FakeSMTP(Recorder[Mail]):
    host: str = "127.0.0.1"
    port: int = 0
    user: str = "alerts@example.org"
    password: str = "smtp-secret"
    logins: list[str] = field(default_factory=list)  # users that sent credentials


class _SMTPSession:
    """One SMTP conversation (RFC 5321, the commands Go's client sends)."""

    def __init__(self, fake: FakeSMTP, reader: asyncio.StreamReader, writer: Any) -> None:
        self.fake, self.reader, self.writer = fake, reader, writer
        self.sender = ""
        self.recipients: list[str] = []
        self.auth: tuple[str, str] | None = None

    async def reply(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.reply("220 fake-smtp ESMTP ready")
        while line := await self.reader.readline():
            command, _, argument = line.decode().rstrip("\r\n").partition(" ")
            verb = command.upper()
            if verb == "QUIT":
                await self.reply("221 bye")
                break
            handler = getattr(self, f"do_{verb.lower()}", None)
            await (handler(argument) if handler else self.reply("502 command not implemented"))
        self.writer.close()

    async def do_ehlo(self, argument: str) -> None:
        await self.reply("250-fake-smtp greets " + argument)
        await self.reply("250-8BITMIME")
        await self.reply("250 AUTH PLAIN LOGIN")

    async def do_helo(self, argument: str) -> None:
        await self.reply("250 fake-smtp")

    async def do_auth(self, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        if mechanism.upper() == "PLAIN":
            if not initial:
                await self.reply("334 ")
                initial = (await self.reader.readline()).decode().strip()
            _, user, password = base64.b64decode(initial).decode().split("\0")
        elif mechanism.upper() == "LOGIN":
            await self.reply("334 " + base64.b64encode(b"Username:").decode())
            user = base64.b64decode(await self.reader.readline()).decode()
            await self.reply("334 " + base64.b64encode(b"Password:").decode())
            password = base64.b64decode(await self.reader.readline()).decode()
        else:
            await self.reply("504 unrecognised authentication type")
            return
        with self.fake.lock:
            self.fake.logins.append(user)
        if (user, password) != (self.fake.user, self.fake.password):
            self.fake.refuse(f"bad credentials for {user!r}")
            await self.reply("535 authentication credentials invalid")
            return
        self.auth = (user, password)
        await self.reply("235 authentication successful")

    async def do_mail(self, argument: str) -> None:
        self.sender = re.sub(r"(?i)^FROM:<([^>]*)>.*", r"\1", argument)
        self.recipients = []
        await self.reply("250 ok")

    async def do_rcpt(self, argument: str) -> None:
        self.recipients.append(re.sub(r"(?i)^TO:<([^>]*)>.*", r"\1", argument))
        await self.reply("250 ok")

    async def do_data(self, argument: str) -> None:
        await self.reply("354 end data with <CR><LF>.<CR><LF>")
        lines = []
        while (line := await self.reader.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)  # dot-stuffing
        message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.fake.add(Mail(self.sender, self.recipients, self.auth, message))
        await self.reply("250 queued")

    async def do_rset(self, argument: str) -> None:
        self.sender, self.recipients = "", []
        await self.reply("250 ok")

    async def do_noop(self, argument: str) -> None:
        await self.reply("250 ok")


@contextlib.contextmanager
def fake_smtp() -> Iterator[FakeSMTP]:
    fake = FakeSMTP()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve() -> asyncio.Server:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _SMTPSession(fake, reader, writer).run()

        server = await asyncio.start_server(session, fake.host, 0)
        fake.port = server.sockets[0].getsockname()[1]
        return server

    server = loop.run_until_complete(serve())
    thread = threading.Thread(target=lambda: (started.set(), loop.run_forever()), daemon=True)
    thread.start()
    started.wait()
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.close()


# Slack's mrkdwn: a `<` opens a link (<url|label>) or a mention, and `&` starts one of three
# escapes; any other `<`, `>` or `&` is the sender's bug.
SLACK_LINK = r"<(?:https?://|mailto:|[#@!])[^<>|\s]*(?:\|[^<>]*)?>"
SLACK_TEXT = re.compile(rf"(?:[^<>&]|&(?:amp|lt|gt);|{SLACK_LINK})*", re.DOTALL)
ATTACHMENT_STRINGS = ("title", "text", "color", "fallback")


def slack_payload_problem(payload: Any) -> str | None:
    """Why Slack would refuse or garble this incoming-webhook payload, or None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("attachments"), list):
        return "invalid_payload: no attachments"
    for attachment in payload["attachments"]:
        for key in ATTACHMENT_STRINGS:
            if not isinstance(attachment.get(key), str) or not attachment[key]:
                return f"invalid_attachments: {key} missing"
        if not re.fullmatch(r"good|warning|danger|#[0-9A-Fa-f]{6}", attachment["color"]):
            return f"invalid_attachments: color {attachment['color']!r}"
        if not SLACK_TEXT.fullmatch(attachment["text"]):
            return f"unescaped <, > or & in text: {attachment['text']!r}"
        if "text" not in attachment.get("mrkdwn_in", []):
            return "text is not rendered as mrkdwn"
    return None


@dataclass
class FakeHTTP(Recorder[dict[str, Any]]):
    url: str = ""
    path: str = "/"


@contextlib.contextmanager
def fake_http(
    path: str, check: Callable[[Any], str | None], ok_body: bytes = b"ok"
) -> Iterator[FakeHTTP]:
    """A POST endpoint at `path` that keeps JSON bodies `check` finds no problem with, and
    answers 400 with the problem otherwise."""
    fake = FakeHTTP(path=path)

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            problem = "not found" if self.path != fake.path else check(payload)
            if problem:
                fake.refuse(problem)
                self.answer(404 if problem == "not found" else 400, problem.encode())
                return
            fake.add(payload)
            self.answer(200, ok_body)

    with serving(Handler) as server:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        yield fake


def fake_slack() -> contextlib.AbstractContextManager[FakeHTTP]:
    return fake_http("/services/T000/B000/XXXX", slack_payload_problem)


def webhook_payload_problem(payload: Any) -> str | None:
    """Alertmanager's webhook JSON, version 4, or why not."""
    if not isinstance(payload, dict) or payload.get("version") != "4":
        return "not an Alertmanager version 4 payload"
    missing = {"receiver", "status", "alerts", "groupLabels", "commonLabels", "groupKey"}
    missing -= set(payload)
    return f"missing {sorted(missing)}" if missing else None


def fake_webhook() -> contextlib.AbstractContextManager[FakeHTTP]:
    return fake_http("/hooks/alerts", webhook_payload_problem)
