"""The attributes a call's row keeps beside its columns: in the span's order and at most
MAX_KEPT of them, none that a column holds already or that names or holds a credential, content
only when asked for, each value scrubbed of credentials and bounded."""

from __future__ import annotations

import functools
import math
from typing import Any

from exporter.ingest.model import AttributeValue
from nexus_otel import attributes as a
from nexus_otel._secrets import REDACTED, is_secret_key, scrub_text
from nexus_otel._secrets import scrubbed_before as _seen

MAX_KEPT = 64
MAX_STRING = 1024  # characters of a kept string
_MAX_LIST = 64
_KEEP, _DROP, _CONTENT = range(3)


def kept_attributes(
    attrs: dict[str, AttributeValue], store_content: bool, mapped: frozenset[str]
) -> dict[str, Any]:
    """The attributes kept of `attrs`; `mapped`: the keys read into the row's columns."""
    keys = tuple(attrs)
    # Spans of one instrumentation carry the same keys: decide which to keep once per key set.
    if len(keys) <= MAX_KEPT:
        plan = _kept_plan(keys, store_content, mapped)
    else:
        plan = _plan(keys, store_content, mapped)
    kept: dict[str, Any] = {}
    for key in plan:
        value = attrs[key]
        cls = value.__class__
        # The common values inline: _bounded keeps an int, a bool and a finite float (whose
        # difference with itself is 0) as they are.
        if cls is int or cls is bool or (cls is float and value - value == 0):  # type: ignore[operator]
            kept[key] = value
        elif cls is str:
            kept[key] = _seen(value) or scrub_text(value, MAX_STRING)  # type: ignore[arg-type]
        else:
            kept[key] = _bounded(value)
    return kept


def scrubbed(text: str | None, limit: int = MAX_STRING) -> str | None:
    """Stored text: without credentials, then at most `limit` characters."""
    if not text:
        return text
    return _seen(text) or scrub_text(text, limit)  # a string seen before: one lookup


def _is_secret_key(key: str) -> bool:
    # A key that names a credential, or that holds one itself (a header line sent as a key).
    return is_secret_key(key) or scrub_text(key) != key


def _kind_of_key(key: str, mapped: frozenset[str]) -> int:
    if key in mapped or _is_secret_key(key):
        return _DROP
    return _CONTENT if key.startswith(a.CONTENT_ATTRIBUTE_PREFIXES) else _KEEP


# The same few keys arrive on every span: decided once. Keys are at most
# MAX_ATTRIBUTE_KEY_CHARS long (the decoder cuts longer ones), so the cache is bounded in bytes.
_key_kind = functools.lru_cache(maxsize=4096)(_kind_of_key)


def _plan(keys: tuple[str, ...], store_content: bool, mapped: frozenset[str]) -> tuple[str, ...]:
    """The keys to keep: at most MAX_KEPT, in the span's order."""
    plan: list[str] = []
    for key in keys:
        if len(plan) >= MAX_KEPT:
            break
        kind = _key_kind(key, mapped)
        if kind == _DROP or (kind == _CONTENT and not store_content):
            continue
        plan.append(key)
    return tuple(plan)


_kept_plan = functools.lru_cache(maxsize=1024)(_plan)  # only for key sets of bounded size


def _bounded(value: AttributeValue) -> Any:
    if value.__class__ is int:
        return value
    if isinstance(value, str):
        return scrubbed(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        # A key-value list arrives as [[key, value], ...]: a secret key's value is not kept.
        if len(value) == 2 and isinstance(value[0], str) and is_secret_key(value[0]):
            return [scrubbed(value[0]), REDACTED]
        # Lists of names (finish reasons, stop sequences) come on most spans: strings inline.
        return [
            (_seen(v) or scrubbed(v)) if v.__class__ is str else _bounded(v)
            for v in value[:_MAX_LIST]
        ]
    return value
