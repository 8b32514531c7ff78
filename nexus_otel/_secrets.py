"""Credentials that must never be recorded: one definition for the instrumentation (before a span
is recorded) and the exporter (before a row, a metric label or a log line is written).

Three rules, each applied at any depth (attribute keys, key-value lists, JSON held in a string):
- Keys: a key naming a credential (authorization, api keys, cookies, sessions, passwords,
  secrets, signatures, tokens but not token counts, any header) marks its value as secret.
- URLs and text: `user:password@` before a host, and the value of any `name=value` or
  `name: value` pair whose name is such a key (query strings, header lines, connection strings,
  JSON and repr()'d dicts quoted in an error message), percent-encoded names included.
- Shapes: bearer and basic credentials, and key shapes that are secret wherever they appear
  (OpenAI, Anthropic, OpenRouter and DeepSeek `sk-`, Groq, Google, xAI, Hugging Face, GitHub,
  GitLab, AWS access key ids, Slack, Stripe, Perplexity, Telegram bot tokens, Google OAuth
  access tokens, JWTs and PEM private keys).
A secret is replaced by REDACTED; the text around it is kept, so a message still says what failed.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import unquote

REDACTED = "[REDACTED]"

# Words that make a key secret wherever they appear in it (lowercased, `-` read as `_`).
_SECRET_KEY_WORDS = re.compile(
    r"authori[sz]ation|authenticat|credential|secret|passw|passphrase|cookie|session|csrf|xsrf"
    r"|api_?key|private_?key|access_?key|signing_?key|signature|bearer|jwt|header"
)
# Segments (between `.`, `/`, `:` or the ends) that are secret on their own: `auth` is, but
# `author` is not; `key` alone is (Gemini's `?key=`), but `cache_key` is not.
_SECRET_KEY_SEGMENTS = re.compile(
    r"(?:^|[./:\s])(?:x_)?(?:o?auth[nz]?|key|sig|pwd|pass|sid|dsn|mysql_pwd)(?:$|[./:\s])"
)
# Tokens are secret, token counts and their names are not (gen_ai.usage.input_tokens,
# llm.token_count.*, gen_ai.token.type, time_to_first_token, max_tokens).
_TOKEN = re.compile(r"token(?!s|_count|[._]type|[._]usage)")
_TOKEN_COUNT_NAMES = re.compile(r"(?:first|per|max|output|input|prompt|completion)_token")


@functools.lru_cache(maxsize=4096)  # the same few keys arrive on every span; bounded
def is_secret_key(key: str) -> bool:
    """Whether a key (attribute, key-value list entry, JSON member, query or header name)
    names a credential."""
    lowered = key.lower().replace("-", "_")
    if "%" in lowered:  # `api%5Fkey`, `%6Bey`: names are compared as their receiver reads them
        lowered = unquote(lowered).replace("-", "_")
    if _SECRET_KEY_WORDS.search(lowered) or _SECRET_KEY_SEGMENTS.search(lowered):
        return True
    return bool(_TOKEN.search(lowered)) and not _TOKEN_COUNT_NAMES.search(lowered)


# A name then `=` or `:` then a value: a query parameter, a header line, a JSON or repr()'d
# member, `password=` in a connection string. Only pairs whose name is_secret_key are redacted.
_NAME = r"[A-Za-z_%][\w.%-]{0,63}"
_VALUE = (
    r"(?:(?:bearer|basic|digest|token)\s+[^\s'\",;&]+"  # an Authorization header's value
    r"|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"  # quoted
    r"|[^\s&;,'\"(){}\[\]<>]+)"  # bare: up to the next separator
)
_PAIR = rf"(?P<name>(?<![\w%.-]){_NAME})(?P<q>[\"']?)(?P<sep>\s*[:=]\s*)(?P<value>{_VALUE})"
# `user:password@` after a scheme, or before a host where no scheme is written (server.address).
_USERINFO = r"(?P<userinfo>(?<=://)[^\s/?#@'\"<>]+@|(?<![\w.%+-])[\w.%+-]+:[^\s/?#@'\"<>]+@(?=\w))"
_SHAPES = (
    r"\b(?:bearer\s+[A-Za-z0-9._~+/=-]{6,}"
    r"|basic\s+(?=[a-z]*[0-9+/=]|(?-i:[a-z]*[A-Z]))[A-Za-z0-9+/]{8,}={0,2})"
    r"|(?<![A-Za-z0-9])sk-(?=[\w-]*\d)[\w-]{8,}"  # OpenAI (sk-, sk-proj-), Anthropic, OpenRouter
    r"|(?<![A-Za-z0-9])(?:gsk|hf|gh[pousr]|r8|fw|github_pat)_[A-Za-z0-9_]{16,}"
    r"|(?<![A-Za-z0-9])(?:xai|pplx|glpat)-[A-Za-z0-9_-]{16,}"
    r"|(?<![A-Za-z0-9])(?-i:AIza)[0-9A-Za-z_-]{20,}"  # Google API keys
    r"|(?<![A-Za-z0-9])(?-i:ya29)\.[0-9A-Za-z_-]{16,}"  # Google OAuth access tokens
    r"|(?<![A-Za-z0-9])(?-i:(?:AKIA|ASIA)[0-9A-Z]{16})"  # AWS access key ids
    r"|(?<![A-Za-z0-9])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|(?<![A-Za-z0-9])(?-i:xox[abposr])-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?<![0-9])\d{8,10}:[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"  # Telegram bot tokens
    r"|(?<![A-Za-z0-9])(?-i:eyJ)[A-Za-z0-9_-]{4,}\.(?-i:eyJ)[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r"|-----BEGIN[A-Z ]*PRIVATE KEY-----(?:.|\n)*?(?:-----END[A-Z ]*PRIVATE KEY-----|$)"
)
_SHAPE = re.compile(_SHAPES, re.IGNORECASE | re.ASCII)
_SECRET = re.compile(rf"(?P<shape>{_SHAPES})|{_USERINFO}|{_PAIR}", re.IGNORECASE | re.ASCII)
# A cheap test first, on the lowercased text: a string holding none of these cannot hold a
# secret by the rules above (`:`, `=`, `@` for pairs and userinfo, `%` for encoded text, and for
# each shape a piece of its beginning). Each alternative begins with a literal and none with a
# hex digit, so the regex engine skips ahead to candidates and ids are passed over quickly;
# IGNORECASE would cost ten times as much.
_MAYBE = re.compile(
    r":|=|@|%|rer|sic|k-|k_|hf_|w_|h[pousr]_|r8_|_pat|i-|lx-|t-|iza|ya2|kia|sia|ox|yj|te key"
)
_CACHED_LENGTH = 256  # short strings repeat (names, addresses): their answer is remembered
_CACHE_ENTRIES = 8192  # so the cache holds at most ~2 MiB of text, then starts again
_cache: dict[str, str] = {}
# The scrubbed text of a short string scrubbed before, or None: one dict lookup, for the hot
# path's common values (the same model, service and operation on every span). Never longer
# than CACHED_LENGTH.
scrubbed_before = _cache.get
CACHED_LENGTH = _CACHED_LENGTH


def scrub_text(text: str, limit: int = 0) -> str:
    """The text with every credential the rules above recognise replaced by REDACTED; with a
    `limit`, at most that many characters of it (scrubbed before it is cut, so a secret across
    the cut is still recognised)."""
    if len(text) <= _CACHED_LENGTH:
        cached = _cache.get(text)
        if cached is None:
            cached = _cache[text] = _scrub(text)
            if len(_cache) > _CACHE_ENTRIES:
                _cache.clear()
        return cached[:limit] if limit and len(cached) > limit else cached
    if limit and len(text) > limit:
        return _scrub(text[: limit + _SCAN_PAST_LIMIT])[:limit]
    return _scrub(text)


_SCAN_PAST_LIMIT = 256  # longer than any shape or name=value pair the rules recognise


def _scrub(text: str) -> str:
    if not _MAYBE.search(text.lower()):
        return text
    if "%" in text:  # `Bearer%20sk-...`, `%6Bey=`: look at it decoded as well
        decoded = unquote(text)
        if decoded != text:
            scrubbed = _redacted(decoded)
            if scrubbed != decoded:
                return scrubbed
    if text[:1] in "{[" and text[-1:] in "}]":
        structured = _scrub_json(text)
        if structured is not None:
            return structured
    return _redacted(text)


def _redacted(text: str) -> str:
    parts: list[str] = []
    pos = 0
    while match := _SECRET.search(text, pos):
        if match.group("shape") is not None:
            parts += (text[pos : match.start()], REDACTED)
            pos = match.end()
        elif match.group("userinfo") is not None:
            parts += (text[pos : match.start()], REDACTED, "@")
            pos = match.end()
        elif is_secret_key(match.group("name")) and not match.group("value").endswith(":"):
            value = match.group("value")
            quote = value[0] if value[:1] in "\"'" else ""
            parts += (text[pos : match.start("value")], quote, REDACTED, quote)
            pos = match.end()
        else:  # not a secret name (a URL's `https:`), or the value is the next name
            # (`headers: x-api-key: ...`): what follows is read on
            sep = match.end("sep")
            shape = _SHAPE.search(text, match.start(), match.end())
            if shape is not None and shape.start() < sep:  # one begun in the name: `/bot<id>:`
                parts += (text[pos : shape.start()], REDACTED)
                pos = shape.end()
            else:
                parts.append(text[pos:sep])
                pos = sep
    parts.append(text[pos:])
    return "".join(parts)


def _scrub_json(text: str) -> str | None:
    """A JSON document with its secret members redacted, or None when the text is not JSON."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    scrubbed = scrub_value(document)
    return text if scrubbed == document else json.dumps(scrubbed, ensure_ascii=False)


def scrub_value(value: Any, depth: int = 0) -> Any:
    """Any value with its secrets redacted: strings scrubbed; in dicts and key-value lists
    (`[[key, value], ...]`, as OTLP kvlists are decoded) the values of secret keys replaced."""
    if isinstance(value, str):
        return scrub_text(value)
    if depth > _MAX_DEPTH:  # deeper than OTLP values can be: nothing of it is kept
        return REDACTED
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(str(k)) else scrub_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and is_secret_key(value[0]):
            return [value[0], REDACTED]  # a key-value list's entry
        return [scrub_value(v, depth + 1) for v in value]
    return value


_MAX_DEPTH = 128  # past the exporter's own nesting bound for attribute values


def scrub_url(url: str) -> str:
    """The URL without credentials: no `?key=` (Gemini) or similar, no user:password@."""
    return scrub_text(url)
