"""Price overrides: the user's YAML file of prices (NEXUS_PRICES_FILE), in USD per million tokens.

Entries are tried in file order and the first match wins, so list specific entries (a provider,
an exact name, a later valid_from) before general ones. valid_from is a UTC date; before it, the
entry is skipped and the next source is tried. A model pattern (fnmatch, case-insensitive)
matches the request or the response model. A file that cannot be read or holds an invalid entry
is refused as a whole, with a message naming the file, the entry and the value.

Cache reads and writes default to the input price; 1-hour cache writes (`cache_write_1h_mtok`,
Anthropic's 1-hour cache, a part of the cache writes) to the cache write price."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

_MTOK = Decimal(1_000_000)
TOKEN_PRICE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
_ENTRY_KEYS = {"model", "provider", "valid_from", "cache_write_1h_mtok", *TOKEN_PRICE_KEYS}


def utc_day(ts: datetime) -> date:
    return ts.date() if ts.tzinfo is None or ts.tzinfo is UTC else ts.astimezone(UTC).date()


class PriceOverridesError(ValueError):
    """The overrides file is unreadable or invalid; the message names file, entry and value."""


@dataclass(frozen=True, slots=True)
class Override:
    index: int
    pattern: str  # lowercased fnmatch pattern
    provider: str | None  # lowercased semconv name or pattern; None = any provider
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    valid_from: date | None
    cache_write_1h: Decimal = Decimal(0)  # the cache write price unless the file says

    def matches(self, provider: str | None, models: tuple[str, ...]) -> bool:
        """Models and provider are lowercased; provider None matches any entry."""
        if (
            provider is not None
            and self.provider is not None
            and not fnmatch.fnmatchcase(provider, self.provider)
        ):
            return False
        return any(fnmatch.fnmatchcase(m, self.pattern) for m in models)

    def cost(
        self, inp: int, out: int, cache_read: int, cache_write: int, write_1h: int = 0
    ) -> Decimal:
        """`write_1h`: of the cache writes, those to a 1-hour cache (its term added only when
        there are some: a call without them costs the same Decimal it always did)."""
        total = (
            Decimal(inp - cache_read - cache_write) * self.input
            + Decimal(cache_read) * self.cache_read
            + Decimal(cache_write - write_1h) * self.cache_write
        )
        if write_1h:
            total += Decimal(write_1h) * self.cache_write_1h
        return (total + Decimal(out) * self.output) / _MTOK


def read_overrides_text(path: Path) -> str:
    """The file's text; PriceOverridesError when it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceOverridesError(f"{path}: cannot read price overrides: {exc}") from exc


def load_overrides(path: Path, text: str | None = None) -> tuple[Override, ...]:
    """The entries of the file at `path`, or of `text` read from it before."""
    try:
        data = yaml.safe_load(read_overrides_text(path) if text is None else text)
    except yaml.YAMLError as exc:
        raise PriceOverridesError(f"{path}: cannot read price overrides: {exc}") from exc
    except RecursionError:  # lists or maps nested thousands deep
        raise PriceOverridesError(f"{path}: cannot read price overrides: nested too deep") from None
    if data is None:
        return ()
    entries = data.get("models") if isinstance(data, dict) and set(data) == {"models"} else 0
    if not isinstance(entries, list | None):
        raise PriceOverridesError(f"{path}: expected one key, 'models', holding a list")
    return tuple(_parse_entry(path, i, raw) for i, raw in enumerate(entries or []))


def _parse_entry(path: Path, index: int, raw: object) -> Override:
    def bad(what: str, value: object) -> PriceOverridesError:
        return PriceOverridesError(f"{path}: models[{index}]: {what}, got {value!r}")

    if not isinstance(raw, dict):
        raise bad("expected a mapping", raw)
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise bad(f"unknown key (allowed: {', '.join(sorted(_ENTRY_KEYS))})", key)
    model, provider, valid_from = raw.get("model"), raw.get("provider"), raw.get("valid_from")
    if not isinstance(model, str) or not model.strip():
        raise bad("'model' must be a model name or pattern", model)
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise bad("'provider' must be a provider name", provider)
    if isinstance(valid_from, str):
        with contextlib.suppress(ValueError):
            valid_from = date.fromisoformat(valid_from.strip())
    if isinstance(valid_from, datetime):
        valid_from = utc_day(valid_from)
    if valid_from is not None and not isinstance(valid_from, date):
        raise bad("'valid_from' must be a date (YYYY-MM-DD)", valid_from)

    def price(key: str, default: Decimal | None = None) -> Decimal:
        value = raw.get(key)
        if value is None and default is not None:
            return default
        parsed = Decimal("NaN")
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(InvalidOperation):
                parsed = Decimal(str(value).strip())  # via str: 0.1 stays exactly 0.1
        if not parsed.is_finite() or parsed < 0:
            raise bad(f"'{key}' must be a non-negative number of USD per million tokens", value)
        return parsed

    inp = price("input_mtok")
    cache_write = price("cache_write_mtok", inp)
    return Override(
        index=index,
        pattern=model.strip().lower(),
        provider=provider.strip().lower() if provider else None,
        input=inp,
        output=price("output_mtok"),
        cache_read=price("cache_read_mtok", inp),
        cache_write=cache_write,
        valid_from=valid_from,
        cache_write_1h=price("cache_write_1h_mtok", cache_write),
    )


@dataclass(frozen=True)
class OverridesVersion:
    """The overrides as the exporter last read them whole: `text` None without a file."""

    path: Path | None = None
    text: str | None = None


class WatchedOverrides:
    """The overrides file of a running exporter, looked at again at most every `recheck_seconds`
    and read again when its modification time or size changed. One process watches and hands
    `current()` to every decode process with each request, so all of them price alike: a file
    saved broken keeps the last version read whole (said once per save), in every process."""

    def __init__(self, path: Path | None, recheck_seconds: float) -> None:
        self.path, self._recheck_seconds = path, recheck_seconds
        self._current = OverridesVersion(path)
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        if path is not None:
            self._stamp = _stamp(path)
            text = read_overrides_text(path)
            load_overrides(path, text)  # raises PriceOverridesError: the exporter cannot start
            self._current = OverridesVersion(path, text)
            self._next_check = time.monotonic() + recheck_seconds

    def current(self) -> OverridesVersion:
        if self.path is None or time.monotonic() < self._next_check:
            return self._current
        self._next_check = time.monotonic() + self._recheck_seconds
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            self._read_again(self.path)
        return self._current

    def _read_again(self, path: Path) -> None:
        try:
            text = read_overrides_text(path)
            load_overrides(path, text)
        except PriceOverridesError as exc:
            log.error(
                "prices file %s changed but cannot be used (%s): calls are priced as before",
                path,
                exc,
            )
            return
        self._current = OverridesVersion(path, text)
        log.warning("prices file %s changed: calls stored from now on are priced with it", path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size
