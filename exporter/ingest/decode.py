"""From an OTLP request body to a batch the writer can store: decode, normalize, price, encode.

This is most of the exporter's work per span, all of it CPU. It runs in worker processes
(`NEXUS_DECODE_PROCESSES`), so it uses every core while the event loop only moves bodies,
writes rows and answers; with no worker processes it runs on one thread beside the loop. A
worker returns binary COPY rows and totals, never the calls themselves: that keeps what
crosses between the processes small and cheap to read.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import select
import threading
import time
import traceback
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path

from google.protobuf.message import Message

from exporter.ingest import otlp
from exporter.ingest.model import LLMCall, RawSpan
from exporter.ingest.normalize import InvalidSpan, accepted_start_times, to_llm_call
from exporter.ingest.not_calls import NotCalls
from exporter.ingest.price_overrides import OverridesVersion, WatchedOverrides
from exporter.ingest.pricing import MAX_CALL_COST_USD, PriceBook, stored_cost
from exporter.ingest.rows import CallBatch, encode_row
from nexus_otel._secrets import scrub_text

log = logging.getLogger(__name__)

_PARENT_CHECK_SECONDS = 1.0
# Spans decoded, normalized and priced together (see convert): enough for each step's code to
# stay hot, few enough that a chunk of spans with large attributes holds little memory.
CONVERT_CHUNK = 256
_PENDING_PER_WORKER = 4


@dataclass(frozen=True)
class DecodeOptions:
    """What decoding depends on besides the body; the same in every worker."""

    max_body_bytes: int
    store_content: bool = False
    prices_file: Path | None = None
    retention_days: int | None = None  # start times older than this are refused
    # The prices file as the exporter last read it whole (set per request by Decoder); None:
    # prices_file as it is, read once.
    overrides: OverridesVersion | None = None


@dataclass
class Conversion:
    """What one OTLP request turned into."""

    batch: CallBatch | None = None  # None when no span was an LLM call to store
    received: int = 0
    ignored: int = 0
    rejections: list[str] = field(default_factory=list)


# A prices file edited while the exporter runs prices the calls stored from then on, without
# a restart: the exporter looks at the file's modification time and size at most this often
# (WatchedOverrides), and hands the version it read to the decode processes with each request.
PRICES_RECHECK_SECONDS = 2.0

# The price book this process prices with, per file, and the overrides it was made from.
_BOOKS: dict[Path | None, tuple[OverridesVersion, PriceBook]] = {}


def _price_book(overrides: OverridesVersion) -> PriceBook:
    """The book of `overrides`, made once per version (a version without text: the file as it
    is now, read once: for callers that decode in their own process)."""
    made = _BOOKS.get(overrides.path)
    if made is None or made[0] != overrides:
        made = _BOOKS[overrides.path] = (overrides, PriceBook(overrides.path, overrides.text))
    return made[1]


def decode_body(
    body: bytes, media: str, encoding: str | None, options: DecodeOptions
) -> Conversion:
    """A request body to its batch of priced calls; raises otlp.PayloadError for a body that is
    refused as a whole (the rest are rejections of single spans)."""
    data = otlp.decompress(body, encoding, options.max_body_bytes)
    return convert(otlp.parse_request(data, media), options)


def convert(request: Message, options: DecodeOptions) -> Conversion:
    """The request's spans to priced calls, CONVERT_CHUNK spans at a time, each step over the
    whole chunk before the next: run one span through every step at a time, the same work costs
    a quarter more CPU (each step's code and data leave the CPU's caches between two spans)."""
    result = Conversion()
    prices = _price_book(options.overrides or OverridesVersion(options.prices_file))
    window = accepted_start_times(datetime.now(UTC), options.retention_days)
    calls: list[LLMCall] = []
    unreadable: list[str] = []  # spans left out of iter_raw_spans, each with its reason
    not_calls = NotCalls()  # spans left out undecoded: no LLM calls
    spans = otlp.iter_raw_spans(request, unreadable, not_calls)
    while chunk := list(islice(spans, CONVERT_CHUNK)):
        result.received += len(chunk)
        rejected: list[tuple[int, str]] = []  # (the span's place in the chunk, why)
        normalized = _normalized(chunk, options, window, rejected, result)
        for place, call in normalized:
            price_call(prices, call)
            if call.cost_usd is not None and call.cost_usd >= MAX_CALL_COST_USD:
                reason = f"span {call.span_id}: cost {call.cost_usd:.2f} USD is out of range"
                rejected.append((place, reason))
            else:
                calls.append(call)
        rejected.sort(key=itemgetter(0))  # in the spans' order, as a sender reads them
        result.rejections.extend(reason for _, reason in rejected)
    result.received += len(unreadable) + not_calls.count
    result.ignored += not_calls.count
    result.rejections.extend(unreadable)
    if calls:
        result.batch = _batch(calls, result.rejections)
    return result


def _normalized(
    chunk: list[RawSpan],
    options: DecodeOptions,
    window: tuple[datetime, datetime],
    rejected: list[tuple[int, str]],
    result: Conversion,
) -> list[tuple[int, LLMCall]]:
    """The chunk's LLM calls within the accepted window, each with its place in the chunk;
    the spans refused go to `rejected`, the spans that are not LLM calls are counted."""
    earliest, latest = window
    normalized = []
    for place, raw in enumerate(chunk):
        try:
            call = to_llm_call(raw, store_content=options.store_content)
        except InvalidSpan as exc:
            rejected.append((place, str(exc)))
            continue
        except Exception as exc:  # a bug met on one odd span: that span alone is refused
            rejected.append((place, _unreadable(raw, exc)))
            continue
        if call is None:
            result.ignored += 1
        elif not earliest <= call.timestamp <= latest:
            rejected.append(
                (
                    place,
                    f"span {call.span_id}: start time {call.timestamp.isoformat()} is outside"
                    f" the accepted window ({earliest.isoformat()} to {latest.isoformat()})",
                )
            )
        else:
            normalized.append((place, call))
    return normalized


def _unreadable(raw: RawSpan, exc: Exception) -> str:
    """The rejection of a span that normalizing failed on, logged as the bug it is (scrubbed:
    the message may quote an attribute's value)."""
    reason = scrub_text(f"{type(exc).__name__}: {exc}")
    where = traceback.extract_tb(exc.__traceback__)[-1]
    log.error(
        "span %s could not be read: %s (%s:%s)",
        raw.span_id,
        reason,
        Path(where.filename).name,
        where.lineno,
    )
    return f"span {raw.span_id}: could not be read: {reason}"


def _batch(calls: list[LLMCall], rejections: list[str]) -> CallBatch | None:
    """The calls' batch; a call with a value its column cannot take is rejected alone."""
    encodable, rows = [], []
    for call in calls:
        try:
            rows.append(encode_row(call))
        except Exception as exc:  # psycopg's dumpers raise DataError, TypeError, OverflowError
            rejections.append(f"span {call.span_id}: cannot be stored: {exc}")
            continue
        encodable.append(call)
    return CallBatch.of(encodable, rows) if encodable else None


def price_call(prices: PriceBook, call: LLMCall) -> None:
    """Sets the call's cost and its source. Tokens are stored whatever happens here: a pricing
    failure leaves the call unpriced."""
    if call.unpriced_reason is not None:  # told in the row's attributes
        return
    try:
        price = prices.price(
            provider=call.provider,
            model=call.model,
            response_model=call.response_model,
            timestamp=call.timestamp,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cache_read_tokens=call.cache_read_tokens,
            cache_write_tokens=call.cache_write_tokens,
            cache_write_1h_tokens=call.cache_write_1h_tokens,
            service_tier=call.service_tier,
            reported_cost_usd=call.reported_cost_usd,
            reported_by_provider=call.cost_reported_by_provider,
            total_tokens=call.total_tokens,
        )
    except Exception:
        log.exception("pricing %s/%s failed; stored unpriced", call.provider, call.model)
        return
    call.cost_source, call.price_ref = price.source, price.reference
    # As the row will hold it: the summaries and metrics add up the rows' own costs.
    call.cost_usd = None if price.cost_usd is None else stored_cost(price.cost_usd)
    if price.reference is None and price.cost_usd is not None:  # the span's reported cost
        call.price_ref = call.reported_cost_key


def default_processes() -> int:
    """One worker per core when there are several cores; none on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if cores and cores > 1 else 0


def _start_worker(overrides: OverridesVersion, exporter_pid: int) -> None:
    threading.Thread(target=_exit_with, args=(exporter_pid,), daemon=True).start()
    _price_book(overrides)  # made before the first request
    # Decoding allocates many short-lived containers and few reference cycles. Frozen, the
    # objects the fork server imported stay pages shared with it and the other worker.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _exit_with(exporter_pid: int) -> None:
    """Ends this worker once the exporter is gone. A worker waits on a queue whose other end
    it holds too, so an exporter killed outright (SIGKILL) would leave it waiting forever; and
    it is the fork server's child, not the exporter's, so it watches the exporter itself: by a
    pidfd, readable once the process has ended (reaped or not), where the system has them."""
    if not hasattr(os, "pidfd_open"):  # not Linux
        while _exists(exporter_pid):
            time.sleep(_PARENT_CHECK_SECONDS)
        os._exit(0)
    try:
        exporter = os.pidfd_open(exporter_pid)
    except ProcessLookupError:
        os._exit(0)
    select.select([exporter], [], [])
    os._exit(0)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DecoderUnavailable(RuntimeError):
    """Decoding could not run now; the request may be sent again."""


class Decoder:
    """Runs decode_body off the event loop: in `processes` worker processes, or (0) on one
    thread of this process."""

    def __init__(self, options: DecodeOptions, processes: int) -> None:
        self.options = options
        self.processes = processes
        # Read here, in the exporter's process, and handed to the workers: they never read it.
        self.overrides = WatchedOverrides(options.prices_file, PRICES_RECHECK_SECONDS)
        self._executor: Executor | None = None
        self.pending = 0  # requests handed over and not yet decoded
        # Enough waiting to keep every worker busy between two requests; a request beyond it
        # is refused (503), so waiting bodies cannot pile up in memory: before its body is read
        # when the decoder is busy already, else once it is read (requests arriving together
        # all pass the first check).
        self.max_pending = _PENDING_PER_WORKER * max(processes, 1)

    def check_room(self) -> None:
        """Raises DecoderUnavailable when as many requests are waiting as the bound allows."""
        if self.pending >= self.max_pending:
            raise DecoderUnavailable(f"{self.pending} requests are already waiting to be decoded")

    def start(self) -> None:
        if self.processes > 0:
            # Forked from a fork server: a process started afresh (whatever threads this one
            # runs) that imported this module once, so the workers share those pages with it
            # and each other instead of importing everything again (about 37 MB less, PSS).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self.overrides.current(), os.getpid()),
            )
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nexus-decode")

    async def warm_up(self) -> None:
        """Starts every worker now rather than on the first requests."""
        if self.processes > 0:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, _price_book, self.overrides.current())
                    for _ in range(self.processes)
                )
            )

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def decode(self, body: bytes, media: str, encoding: str | None) -> Conversion:
        self.check_room()
        if self._executor is None:
            self.start()
        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            options = replace(self.options, overrides=self.overrides.current())
            return await loop.run_in_executor(
                self._executor, decode_body, body, media, encoding, options
            )
        except BrokenProcessPool:
            # A worker ended under us (killed, out of memory): new workers for the next request;
            # this one is refused with a 503, so its sender retries it.
            log.warning("a decode worker ended unexpectedly; starting new workers")
            self.stop()
            self.start()
            raise DecoderUnavailable("a decode worker ended unexpectedly") from None
        finally:
            self.pending -= 1
