"""The one definition of a credential, shared by the instrumentation and the exporter."""

from __future__ import annotations

import json

import pytest

from nexus_otel import _secrets
from nexus_otel._secrets import REDACTED, is_secret_key, scrub_text, scrub_value

SECRET_KEYS = [
    "auth", "Authorization", "http.request.header.authorization", "http.response.header.x-id",
    "llm.headers", "app.request.headers.extra", "credentials", "app.credential", "client_secret",
    "password", "db.passwd", "Cookie", "set-cookie", "session", "session.id", "token",
    "access_token", "app.refresh-token", "api_key", "api-key", "apikey", "x-api-key", "X-Api-Key",
    "x-goog-api-key", "gen_ai.request.api_key", "private_key", "privateKey", "signature", "key",
    "sig", "oauth", "app.auth", "api%5Fkey", "%6Bey", "x-amz-security-token", "csrf_token",
]  # fmt: skip
ORDINARY_KEYS = [
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "llm.token_count.prompt",
    "llm.token_count.completion", "gen_ai.token.type", "gen_ai.request.max_tokens",
    "gen_ai.server.time_to_first_token", "gen_ai.request.model", "gen_ai.agent.author",
    "server.address", "gen_ai.response.id", "nexus.operation", "nexus.correlation_id",
    "cache_key", "url.full", "service.name", "gen_ai.provider.name", "keyword",
]  # fmt: skip


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_keys_naming_a_credential_are_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_token_counts_and_ordinary_keys_are_not(key: str) -> None:
    assert not is_secret_key(key)


SCRUBBED = [
    ("https://h.example/v1/m:generateContent?key=K1x&alt=sse",
     "https://h.example/v1/m:generateContent?key=[REDACTED]&alt=sse"),
    ("key=K1x&alt=sse", "key=[REDACTED]&alt=sse"),
    ("/v1/chat?api_key=K1x", "/v1/chat?api_key=[REDACTED]"),
    ("proxy:K1x@api.groq.com", "[REDACTED]@api.groq.com"),
    ("https://proxy:K1x@api.groq.com/v1", "https://[REDACTED]@api.groq.com/v1"),
    ("postgres://app:K1x@db/calls?sslmode=require", "postgres://[REDACTED]@db/calls?sslmode=require"),
    ("refused: Authorization: Bearer K1x", "refused: Authorization: [REDACTED]"),
    ("Bearer K1xK1x", REDACTED),
    ("headers: x-api-key: K1x\nversion: 1", "headers: x-api-key: [REDACTED]\nversion: 1"),
    ("{'Authorization': 'Bearer K1x', 'm': 'm'}", "{'Authorization': '[REDACTED]', 'm': 'm'}"),
    ("host=db user=app password=K1x dbname=x", "host=db user=app password=[REDACTED] dbname=x"),
    ("Cookie: theme=dark; sid=K1x", "Cookie: [REDACTED]; sid=[REDACTED]"),
    ("https://x.example/v1?alt=sse&%6Bey=K1x", "https://x.example/v1?alt=sse&key=[REDACTED]"),
    ("next=%2Fcb%3Faccess_token%3DK1x", "next=/cb?access_token=[REDACTED]"),
    ("Authorization: Basic c3ZjOksxeA==", "Authorization: [REDACTED]"),
    ("sent with Basic c3ZjOksxeA==", "sent with [REDACTED]"),
    ("key sk-proj-abc123def456 refused", "key [REDACTED] refused"),
    ("sk-ant-api03-abc123def456", REDACTED),
    ("sk-or-v1-abc123def456", REDACTED),
    ("gsk_abcdefghij0123456789", REDACTED),
    ("AIzaSyA-abcdefghij0123456789", REDACTED),
    ("xai-abcdefghij0123456789", REDACTED),
    ("hf_abcdefghij0123456789", REDACTED),
    ("ghp_abcdefghij0123456789", REDACTED),
    ("with AKIAIOSFODNN7EXAMPLE to s3", "with [REDACTED] to s3"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", REDACTED),
    ("xoxb-1234-abcdefghij", REDACTED),
    ("https://api.telegram.org/bot123456789:AAHabcdefghijklmnopqrstuvwxyz012345/sendMessage",
     "https://api.telegram.org/bot[REDACTED]/sendMessage"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", REDACTED),
]  # fmt: skip


@pytest.mark.parametrize(("text", "scrubbed"), SCRUBBED)
def test_credentials_in_text_are_redacted_and_the_rest_kept(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


ORDINARY_TEXT = [
    "llama-3.3-70b-versatile", "claude-3-5-sonnet-20241022", "gpt-4o-mini", "gemini-2.5-flash",
    "chat llama-3.3-70b-versatile", "api.groq.com", "chatcmpl-9f8e7d6c5b4a3f2e1d0c", "groq",
    "fact_generation", "carousel-123", "msg_01XYZabcdefghijklmnop", "task-queue-worker-7",
    "Rate limit reached for model `m` on tokens per min (TPM): Limit 6000, Used 5800.",
    "https://api.groq.com/openai/v1/chat/completions?alt=sse", "basic information",
    "12:30:45 Error: connection refused", "bob@example.com", "",
]  # fmt: skip


@pytest.mark.parametrize("text", ORDINARY_TEXT)
def test_ordinary_values_are_kept_as_they_are(text: str) -> None:
    assert scrub_text(text) == text


def test_json_documents_lose_their_secret_members_at_any_depth() -> None:
    document = {"timeout": 30, "api_key": "K1x", "client": {"headers": {"X-Trace": "t"}},
                "list": [{"token": "K2x"}, "sk-proj-abc123def456"]}  # fmt: skip
    assert json.loads(scrub_text(json.dumps(document))) == {
        "timeout": 30, "api_key": REDACTED, "client": {"headers": REDACTED},
        "list": [{"token": REDACTED}, REDACTED],
    }  # fmt: skip
    unchanged = json.dumps({"max_tokens": 100, "temperature": 0.2})
    assert scrub_text(unchanged) is unchanged


def test_values_at_any_depth_and_key_value_lists_as_decoded() -> None:
    value = [["model", "m"], ["Authorization", "Bearer K1x"], ["nested", [["api_key", "K2x"]]]]
    assert scrub_value(value) == [
        ["model", "m"], ["Authorization", REDACTED], ["nested", [["api_key", REDACTED]]]
    ]  # fmt: skip
    assert scrub_value({"auth": {"user": "u"}, "n": 1}) == {"auth": REDACTED, "n": 1}


def test_a_limit_cuts_after_scrubbing() -> None:
    text = "x" * 90 + " sk-proj-abc123def456"
    assert scrub_text(text, 100) == ("x" * 90 + " " + REDACTED)[:100]
    long = "y" * 5000 + " key sk-proj-abc123def456"
    assert scrub_text(long, 5010) == "y" * 5000 + " key [REDA"


def test_the_cache_is_bounded() -> None:
    for i in range(_secrets._CACHE_ENTRIES + 10):
        scrub_text(f"value-{i}")
    assert len(_secrets._cache) <= _secrets._CACHE_ENTRIES
    assert scrub_text("z" * (_secrets._CACHED_LENGTH + 1)) not in _secrets._cache
