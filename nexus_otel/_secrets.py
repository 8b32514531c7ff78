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


def is_secret_key(key: str) -> bool:
    """Whether a key (attribute, key-value list entry, JSON member, query or header name)
    names a credential."""
    # The same few keys arrive on every span: remembered, unless long (a cache of long keys
    # would grow by their size, not their number).
    return _names_credential_cached(key) if len(key) <= _CACHED_LENGTH else _names_credential(key)


def _names_credential(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    if "%" in lowered:  # `api%5Fkey`, `%6Bey`: names are compared as their receiver reads them
        lowered = unquote(lowered).replace("-", "_")
    if _SECRET_KEY_WORDS.search(lowered) or _SECRET_KEY_SEGMENTS.search(lowered):
        return True
    return bool(_TOKEN.search(lowered)) and not _TOKEN_COUNT_NAMES.search(lowered)


_names_credential_cached = functools.lru_cache(maxsize=4096)(_names_credential)


# Every pattern below runs on the lowercased text (same length, so positions match the
# original) without IGNORECASE, and each alternative begins with a literal character: the regex
# engine then skips in C to the few places where one may begin, instead of trying every
# alternative at every character (ten to fifty times slower on long text).
_B = r"(?<![a-z0-9]{})"  # after the first character: it begins a word
_SHAPES = re.compile(
    "|".join(
        (
            r"b" + _B.format("b") + r"earer\s+[a-z0-9._~+/=-]{6,}",
            r"b" + _B.format("b") + r"asic\s+[a-z0-9+/]{8,}={0,2}(?P<basic>)",
            r"s" + _B.format("s") + r"k-(?=[\w-]*\d)[\w-]{8,}",  # OpenAI, Anthropic, OpenRouter
            r"s" + _B.format("s") + r"k_(?:live|test)_[a-z0-9]{16,}",  # Stripe
            r"r" + _B.format("r") + r"(?:k_(?:live|test)_[a-z0-9]{16,}|8_[a-z0-9_]{16,})",
            r"g" + _B.format("g") + r"(?:sk|h[pousr]|ithub_pat)_[a-z0-9_]{16,}",  # Groq, GitHub
            r"g" + _B.format("g") + r"lpat-[a-z0-9_-]{16,}",  # GitLab
            r"h" + _B.format("h") + r"f_[a-z0-9_]{16,}",  # Hugging Face
            r"f" + _B.format("f") + r"w_[a-z0-9_]{16,}",  # Fireworks
            r"x" + _B.format("x") + r"ai-[a-z0-9_-]{16,}",  # xAI
            r"x" + _B.format("x") + r"ox[abposr]-[a-z0-9-]{10,}",  # Slack
            r"p" + _B.format("p") + r"plx-[a-z0-9_-]{16,}",  # Perplexity
            r"a" + _B.format("a") + r"(?:iza[0-9a-z_-]{20,}|(?:kia|sia)[0-9a-z]{16})(?P<cased>)",
            r"y" + _B.format("y") + r"a29\.[0-9a-z_-]{16,}",  # Google OAuth access tokens
            r"e" + _B.format("e") + r"yj[a-z0-9_-]{4,}\.eyj[a-z0-9_-]{4,}\.[a-z0-9_-]*",  # JWTs
            r"-----begin[a-z ]*private key-----(?:.|\n)*?(?:-----end[a-z ]*private key-----|$)",
            r"://(?P<userinfo>[^\s/?#@'\"<>]+)@",  # user:password@ after a scheme
            r":(?P<telegram>)(?=[a-z0-9_-]{35}(?![a-z0-9_-]))",  # after a bot's id (checked)
        )
    ),
    re.ASCII,
)
# Google and AWS keys are told from words by their case: AIza..., AKIA/ASIA and capitals.
_CASED = re.compile(r"AIza[0-9A-Za-z_-]{20,}|A(?:KIA|SIA)[0-9A-Z]{16}", re.ASCII)
_BASIC_CREDENTIAL = re.compile(r"[Bb][Aa][Ss][Ii][Cc]\s+[a-z]*[0-9+/=A-Z]", re.ASCII)
# A name holding one of these words, then `=` or `:` then a value: a query parameter, a header
# line, a JSON or repr()'d member, `password=` in a connection string. The whole name is read
# back from the word and only pairs whose name is_secret_key are redacted.
_PAIR = re.compile(
    r"(?:auth|cred|secret|pass|pwd|cookie|session|csrf|xsrf|token|key|sig|bearer|jwt|header"
    r"|sid|dsn)[\w.%-]{0,48}(?P<q>[\"']?)\s*[:=]\s*"
    r"(?P<value>(?:bearer|basic|digest|token)\s+[^\s'\",;&]+"  # an Authorization header's value
    r"|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"  # quoted
    r"|[^\s&;,'\"(){}\[\]<>]+)",  # bare: up to the next separator
    re.ASCII,
)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.%-")
_NAME_LENGTH = 64  # how far back a name is read from its word
_USERINFO_LENGTH = 256  # how far back from `@` a bare user:password is read
_USERINFO_STOP = frozenset(" \t\r\n/?#@'\"<>")
_USER_CHARS = _NAME_CHARS | frozenset("+")


def _redacted(text: str) -> str:
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lowercase is longer: ASCII only then
        lowered = "".join(c.lower() if c < "\x80" else c for c in text)
    ranges = _shape_ranges(text, lowered) + _pair_ranges(lowered) + _userinfo_ranges(lowered)
    if not ranges:
        return text
    ranges.sort()
    parts: list[str] = []
    pos = 0
    for start, end in ranges:
        if end <= pos:
            continue  # inside a range redacted already
        if start > pos:
            parts += (text[pos:start], REDACTED)
        elif not parts:
            parts.append(REDACTED)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _shape_ranges(text: str, lowered: str) -> list[tuple[int, int]]:
    ranges = []
    for match in _SHAPES.finditer(lowered):
        start, end = match.span()
        if match.group("userinfo") is not None:
            start, end = match.span("userinfo")
        elif match.group("telegram") is not None:  # `<8 to 10 digits>:<35 characters>`
            digits = start
            while digits > 0 and lowered[digits - 1].isdigit() and start - digits <= 10:
                digits -= 1
            if not 8 <= start - digits <= 10 or (digits and lowered[digits - 1].isdigit()):
                continue
            start, end = digits, end + 35
        elif match.group("cased") is not None:
            if not _CASED.match(text, start):
                continue
        elif match.group("basic") is not None and not _BASIC_CREDENTIAL.match(text, start):
            continue  # `basic information`: a word, not a credential
        ranges.append((start, end))
    return ranges


def _pair_ranges(lowered: str) -> list[tuple[int, int]]:
    ranges = []
    pos = 0
    while match := _PAIR.search(lowered, pos):
        name_start = match.start()
        while (
            name_start > 0
            and lowered[name_start - 1] in _NAME_CHARS
            and match.start() - name_start < _NAME_LENGTH
        ):
            name_start -= 1
        value = match.group("value")
        if is_secret_key(lowered[name_start : match.start("q")]) and not value.endswith(":"):
            quoted = value[:1] in "\"'"
            ranges.append((match.start("value") + quoted, match.end() - quoted))
            pos = match.end()
        else:  # not a secret name, or the value is the next name (`headers: x-api-key: k`)
            pos = match.start("value")
    return ranges


def _userinfo_ranges(lowered: str) -> list[tuple[int, int]]:
    """`user:password@host` written without a scheme (a server address, a DSN's tail)."""
    ranges = []
    at = lowered.find("@")
    while at > 0:
        start = at
        while (
            start > 0 and lowered[start - 1] not in _USERINFO_STOP and at - start < _USERINFO_LENGTH
        ):
            start -= 1
        user, colon, password = lowered[start:at].partition(":")
        if (
            colon
            and user
            and password
            and set(user) <= _USER_CHARS
            and at + 1 < len(lowered)
            and (lowered[at + 1].isalnum() or lowered[at + 1] == "_")
        ):
            ranges.append((start, at))
        at = lowered.find("@", at + 1)
    return ranges


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
