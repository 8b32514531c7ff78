"""Credentials that must never be recorded: one definition for the instrumentation (before a span
is recorded) and the exporter (before a row is stored)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_QUERY_KEYS = frozenset({"key", "api_key", "apikey", "token", "access_token", "sig"})
# Credentials inside free text, such as an HTTP error message quoting the URL it called.
_SECRETS_IN_TEXT = re.compile(
    r"(?i)(?P<keep>[?&](?:" + "|".join(sorted(SECRET_QUERY_KEYS)) + r")=)[^&\s'\"]+"
    r"|(?P<scheme>bearer\s+)[^\s'\",]+"
    r"|(?<=://)[^/@\s'\"]+@"
)


def scrub_text(text: str) -> str:
    """Free text without credentials: `?key=` values, bearer tokens, user:password@ in URLs."""
    return _SECRETS_IN_TEXT.sub(_redact, text)


def _redact(match: re.Match[str]) -> str:
    prefix = match.group("keep") or match.group("scheme")
    return f"{prefix}[REDACTED]" if prefix else ""


def scrub_url(url: str) -> str:
    """The URL without credentials: no `?key=` (Gemini) or similar, no user:password@."""
    text = scrub_text(url)  # wherever they are: the query, a fragment, a URL urlsplit refuses
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed IPv6 bracket, say
        return text
    # Names percent-encoded (`%6Bey=`) are only seen once the query is parsed.
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in SECRET_QUERY_KEYS]  # fmt: skip
    return urlunsplit(
        parts._replace(query=urlencode(query), netloc=parts.netloc.rpartition("@")[2])
    )
