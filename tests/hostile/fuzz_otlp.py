"""Coverage-guided fuzzing (atheris/libFuzzer) of the OTLP decode and normalize path, in
process: any bytes either raise the two errors that become a 400 or a partial success, or turn
into rows PostgreSQL can hold; and spans skipped undecoded as no LLM calls are exactly the ones
that decoding would have found to be none. Run by test_atheris.py; also by hand:
`python tests/hostile/fuzz_otlp.py -runs=100000 [corpus dir]`."""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from exporter.ingest import otlp
    from exporter.ingest.model import RawSpan
    from exporter.ingest.normalize import InvalidSpan, to_llm_call
    from exporter.ingest.not_calls import NotCalls
    from exporter.ingest.rows import COLUMNS, call_row

_LIMIT = 1 << 20
_ENCODINGS = ("identity", "gzip", "deflate")


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    media = otlp.PROTOBUF if data[0] & 1 else otlp.JSON
    encoding = _ENCODINGS[data[1] % len(_ENCODINGS)]
    try:
        request = otlp.parse_request(otlp.decompress(data[2:], encoding, _LIMIT), media)
        # Attributes are decoded here; a span they spoil is left out with its reason.
        raws = list(otlp.iter_raw_spans(request, unreadable := []))
    except otlp.PayloadError as exc:
        assert 400 <= exc.status < 500
        return
    assert all(reason.startswith("span ") for reason in unreadable), unreadable
    outcomes = [_outcome(raw) for raw in raws]
    _check_skipping(request, unreadable, outcomes)


def _outcome(raw: RawSpan) -> str | None:
    """What normalizing `raw` gave: None for no call, else the call (or the refusal) as text."""
    try:
        call = to_llm_call(raw)
    except InvalidSpan as exc:
        return f"refused: {exc}"
    if call is None:
        return None
    _check_storable(call_row(call))
    return repr(call)  # NaN in its attributes compares equal as text


def _check_skipping(request: object, unreadable: list[str], outcomes: list[str | None]) -> None:
    skip = NotCalls()
    raws = list(otlp.iter_raw_spans(request, skipped_unreadable := [], skip))  # type: ignore[arg-type]
    assert skipped_unreadable == unreadable
    kept = [_outcome(raw) for raw in raws]
    assert [o for o in kept if o is not None] == [o for o in outcomes if o is not None]
    assert kept.count(None) + skip.count == outcomes.count(None)


def _check_storable(row: tuple) -> None:
    for value in row:
        if isinstance(value, str):
            assert "\x00" not in value, row
            value.encode()  # no lone surrogates
        elif isinstance(value, int) and not isinstance(value, bool):
            assert 0 <= value < 2**63, row
    attributes = row[COLUMNS.index("attributes")].obj
    text = json.dumps(attributes, allow_nan=False)  # jsonb takes no NaN, no Infinity
    assert "\\u0000" not in text


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
