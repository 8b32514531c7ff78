"""The overrides file as a running exporter watches it (`WatchedOverrides`): read again when
its modification time or size changes, the last version read whole kept through a broken save,
and the version handed to the decode processes, which price with it alone."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.ingest import decode
from exporter.ingest.price_overrides import (
    OverridesVersion,
    PriceOverridesError,
    WatchedOverrides,
)


def entry(input_mtok: int) -> str:
    return f"models:\n  - model: acme-watched\n    input_mtok: {input_mtok}\n    output_mtok: 1\n"


def save(path: Path, content: str | bytes, stamp: int) -> None:
    """Writes `content` with a modification time of its own (saves within one clock tick would
    otherwise share one)."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    os.utime(path, ns=(stamp, stamp))


def cost(overrides: OverridesVersion) -> Decimal | None:
    price = decode._price_book(overrides).price(
        provider="openai", model="acme-watched", response_model=None,
        timestamp=datetime(2026, 12, 1, tzinfo=UTC), input_tokens=1_000_000, output_tokens=0,
        cache_read_tokens=0, cache_write_tokens=0,
    )  # fmt: skip
    return price.cost_usd


def test_an_edit_is_read_and_a_broken_save_keeps_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prices.yaml"
    save(path, entry(3), 1_000)
    watched = WatchedOverrides(path, recheck_seconds=0)
    assert cost(watched.current()) == 3
    save(path, entry(5), 2_000)
    assert cost(watched.current()) == 5
    for broken, stamp in ((b"models: [unclosed\n", 3_000), (b"models:\n  - \xff\n", 4_000)):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            save(path, broken, stamp)
            assert cost(watched.current()) == 5
            assert cost(watched.current()) == 5
        # Said once per save, naming the file.
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            f"prices file {path} changed but cannot be used"
        ]
    path.unlink()
    assert cost(watched.current()) == 5  # a file gone is a file that cannot be read
    save(path, entry(7), 5_000)
    assert cost(watched.current()) == 7


def test_the_file_is_looked_at_again_only_after_the_recheck_time(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    save(path, entry(3), 1_000)
    watched = WatchedOverrides(path, recheck_seconds=3600)
    save(path, entry(5), 2_000)
    assert cost(watched.current()) == 3


def test_a_file_that_cannot_be_used_at_the_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    save(path, b"models: [unclosed\n", 1_000)
    with pytest.raises(PriceOverridesError, match=r"prices\.yaml: cannot read price overrides"):
        WatchedOverrides(path, recheck_seconds=0)


def test_a_decode_process_prices_with_the_version_it_is_handed_not_the_file(
    tmp_path: Path,
) -> None:
    """What a worker does: the text handed over wins over whatever the file holds now."""
    path = tmp_path / "prices.yaml"
    save(path, entry(3), 1_000)
    handed = WatchedOverrides(path, recheck_seconds=0).current()
    save(path, entry(9), 2_000)
    assert cost(handed) == 3
    assert cost(OverridesVersion(path, entry(4))) == 4
    assert cost(handed) == 3  # a process goes back to a version it is handed again
