"""Credentials planted the way real apps and instrumentations leak them, one per LLM span.

Every secret holds a random marker of its own, so a test can search a database dump, a
`/metrics` page or a log for it and name the placement that leaked."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.hostile.payloads import key_values, llm_attributes, new_span

TELEGRAM_PATH = "https://api.telegram.org/bot{}/sendMessage"


@dataclass
class Planted:
    """Where one placement puts its secret on its span (and the span's resource)."""

    secret: str = ""  # the text that must never be found; the marker unless the shape differs
    attributes: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    status_message: str | None = None
    error: bool = False  # the span's status is ERROR
    exception: dict[str, str] | None = None  # an "exception" event's attributes
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    name: str
    plant: Callable[[str], Planted]


def _basic(marker: str) -> Planted:
    secret = base64.b64encode(f"svc:{marker}".encode()).decode()
    request = f"GET /v1 HTTP/1.1\r\nAuthorization: Basic {secret}\r\n"
    return Planted(secret, {"app.http.request": request})


def _aws(marker: str) -> Planted:
    secret = "AKIA" + marker.upper()[:16]
    return Planted(secret, {"app.storage.note": f"uploading the transcript with {secret} to s3"})


def _telegram(marker: str) -> Planted:
    secret = f"123456789:{(marker + 'A' * 35)[:35]}"
    return Planted(secret, {"url.full": TELEGRAM_PATH.format(secret)})


def _pem(marker: str) -> Planted:
    body = f"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC{marker}"
    pem = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    return Planted(body, {"app.tls.key": pem})


PLACEMENTS: tuple[Placement, ...] = (
    # The ones reported stored: the query of a URL, the target, the span name, userinfo, ...
    Placement("url.query key=", lambda m: Planted(attributes={"url.query": f"key={m}&alt=sse"})),
    Placement("http.target ?key=", lambda m: Planted(
        attributes={"http.target": f"/v1beta/models/gemini-2.5-flash:generateContent?key={m}"})),
    Placement("span name ?key=", lambda m: Planted(
        name=f"POST /v1beta/models/gemini-2.5-flash:generateContent?key={m}")),
    Placement("server.address user:secret@", lambda m: Planted(
        attributes={"server.address": f"proxyuser:{m}@api.groq.com"})),
    Placement("error.type Bearer", lambda m: Planted(
        attributes={"error.type": f"401 Unauthorized: Bearer {m}"}, error=True)),
    Placement("status message Bearer", lambda m: Planted(
        status_message=f"upstream refused Authorization: Bearer {m}", error=True)),
    Placement("error.type sk-", lambda m: Planted(
        attributes={"error.type": f"sk-proj-{m}"}, error=True)),
    Placement("status message x-api-key", lambda m: Planted(
        status_message=f"request headers: x-api-key: {m}\nanthropic-version: 2023-06-01",
        error=True)),
    Placement("nested kvlist Authorization", lambda m: Planted(
        attributes={"app.request": {"model": "llama-3.3-70b", "Authorization": f"Bearer {m}"}})),
    Placement("key auth", lambda m: Planted(attributes={"auth": m})),
    Placement("key credentials", lambda m: Planted(attributes={"app.credentials": m})),
    Placement("key *.headers*", lambda m: Planted(
        attributes={"llm.headers": f"{{'X-Trace': 'ok', 'X-Custom': '{m}'}}"})),
    Placement("proxy base URL ?key=", lambda m: Planted(
        attributes={"app.proxy.base_url": f"https://gateway.example.com/v1?key={m}"})),
    # And more.
    Placement("url.full user:password@", lambda m: Planted(
        attributes={"url.full": f"https://bob:{m}@proxy.example.com/openai/v1/chat/completions"})),
    Placement("exception.message with a URL", lambda m: Planted(
        exception={"exception.type": "httpx.HTTPStatusError",
                   "exception.message": f"Client error '429' for url 'https://generative"
                                        f"language.googleapis.com/v1beta/models/x?key={m}'"},
        error=True)),
    Placement("exception.stacktrace", lambda m: Planted(
        exception={"exception.type": "ValueError", "exception.message": "bad request",
                   "exception.stacktrace": f"Traceback:\n  client = Groq(api_key='{m}')"},
        error=True)),
    Placement("JSON string attribute", lambda m: Planted(
        attributes={"app.client.options": json.dumps({"timeout": 30, "api_key": m})})),
    Placement("list value", lambda m: Planted(
        attributes={"app.fallbacks": ["openai", f"sk-{m}", "groq"]})),
    Placement("resource attribute", lambda m: Planted(resource={"deployment.secret": m})),
    Placement("service.name with ?token=", lambda m: Planted(
        resource={"service.name": f"billing?token={m}"})),
    Placement("correlation id URL access_token=", lambda m: Planted(
        attributes={"nexus.correlation_id": f"https://app.example.com/cb?access_token={m}"})),
    Placement("operation name sk-ant-", lambda m: Planted(
        attributes={"nexus.operation": f"summarize sk-ant-api03-{m}"})),
    Placement("db.statement password=", lambda m: Planted(
        attributes={"db.statement": f"-- connect host=db user=app password={m} dbname=calls"})),
    Placement("Basic auth header line", _basic),
    Placement("AWS access key id", _aws),
    Placement("JWT", lambda m: Planted(
        attributes={"enduser.token_hint": f"eyJhbGciOiJIUzI1NiJ9.eyJ{m}.c2lnbmF0dXJl"},
        secret=m)),
    Placement("Telegram bot token in a URL path", _telegram),
    Placement("percent-encoded key name", lambda m: Planted(
        attributes={"url.full": f"https://x.example.com/v1?alt=sse&%6Bey={m}"})),
    Placement("Slack token in a status message", lambda m: Planted(
        status_message=f"alert not posted with xoxb-1234-{m}", error=True)),
    Placement("Groq key in free text", lambda m: Planted(
        attributes={"app.last_error": f"401 invalid api key gsk_{m}"})),
    Placement("Google key as the model", lambda m: Planted(
        attributes={"gen_ai.request.model": f"AIza{m}"})),
    Placement("HF token in a kvlist in a kvlist", lambda m: Planted(
        attributes={"app.config": {"hub": {"repo": "org/model", "token": f"hf_{m}"}}})),
    Placement("xAI key in JSON headers", lambda m: Planted(
        attributes={"app.request.json": json.dumps(
            {"url": "https://api.x.ai/v1", "headers": {"Authorization": f"Bearer xai-{m}"}})})),
    Placement("OpenRouter key as api-key=", lambda m: Planted(
        attributes={"http.url": f"https://openrouter.ai/api/v1/chat?api-key=sk-or-v1-{m}"})),
    Placement("Set-Cookie response header", lambda m: Planted(
        attributes={"http.response.header.set-cookie": [f"session={m}; HttpOnly"]})),
    Placement("key x-goog-api-key", lambda m: Planted(attributes={"x-goog-api-key": m})),
    Placement("array of kvlists api_key", lambda m: Planted(
        attributes={"app.clients": [{"provider": "anthropic", "api_key": m}]})),
    Placement("percent-encoded query in a query", lambda m: Planted(
        attributes={"url.query": f"next=%2Fcb%3Faccess_token%3D{m}"})),
    Placement("header line as a key", lambda m: Planted(
        attributes={f"Authorization: Bearer {m}": "1"})),
    Placement("PEM private key", _pem),
    Placement("Stripe key in a status message", lambda m: Planted(
        status_message=f"billing call failed for sk_live_{m}", error=True)),
    Placement("GitHub token in a resource attribute", lambda m: Planted(
        resource={"ci.token": f"ghp_{m}"})),
)  # fmt: skip


def marker() -> str:
    """A random marker that fits every shape: letters and digits, starting with a letter."""
    return "Zq" + secrets.token_hex(12)


@dataclass
class Corpus:
    request: ExportTraceServiceRequest
    spans: list[Span]
    secrets: dict[str, str]  # placement name -> the secret planted

    def leaks(self, text: str) -> list[str]:
        """The placements whose secret is found in `text`."""
        return [name for name, secret in self.secrets.items() if secret in text]


def build(service_name: str = "secrets-corpus") -> Corpus:
    """A request with one LLM span per placement, each under a resource of its own."""
    request = ExportTraceServiceRequest()
    spans: list[Span] = []
    planted_secrets: dict[str, str] = {}
    for placement in PLACEMENTS:
        planted = placement.plant(marker_value := marker())
        planted_secrets[placement.name] = planted.secret or marker_value
        span = new_span(llm_attributes(**planted.attributes), name=planted.name or "chat llama")
        if planted.error:
            span.status.code = 2
            span.status.message = planted.status_message or ""
        if planted.exception is not None:
            span.events.add(name="exception", time_unix_nano=span.start_time_unix_nano,
                            attributes=key_values(planted.exception))  # fmt: skip
        resource_spans = request.resource_spans.add()
        resource = {"service.name": service_name, **planted.resource}
        resource_spans.resource.attributes.extend(key_values(resource))
        resource_spans.scope_spans.add().spans.append(span)
        spans.append(span)
    return Corpus(request, spans, planted_secrets)
