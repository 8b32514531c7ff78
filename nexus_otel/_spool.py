"""The spool: OTLP export requests kept on disk until the exporter has acknowledged them.

Each file holds serialized `ExportTraceServiceRequest`s (`<time_ns>-<pid>-<seq>-<spans>.otlp`;
concatenated, they read as one request). A batch is written to a hidden temporary name and
renamed into place, so a reader never sees half a file; while the exporter is away, spans are
appended one by one to a locked segment instead (see `append`). Names sort by the time they were
written, across processes; `<spans>` is 0 in a segment not closed yet.

Several processes of one app may share a directory: a file is sent or evicted only by the process
holding its `flock`, which the kernel releases when that process dies (even by SIGKILL), and a
file found unlinked once locked was handled by another process. A file is deleted only once the
exporter acknowledged it, so delivery is at least once; the exporter stores a span once however
often it arrives.

The size bound is kept approximately: each process adds what it writes to the total it last
read from the directory, and reads it again at most every `_RESCAN_SECONDS`. When the next file
would take the spool past its bound, the oldest files go first: the newest spend is what
today's budgets and alerts act on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from nexus_otel._internal import log

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per spool directory there.
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".otlp"
_TEMPORARY_PREFIX = "."
# A temporary file this old belongs to a writer that died between write and rename.
_ABANDONED_SECONDS = 600
# How stale the directory's total may get before it is read again (other processes write too).
_RESCAN_SECONDS = 1.0
_DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# An open segment is closed (and another opened) past this size: the unit the spool is sent and
# evicted in while the exporter is away.
_SEGMENT_BYTES = 1024 * 1024


@dataclass(frozen=True, order=True)
class SpooledBatch:
    """One spooled export request; `spans` is read from its name."""

    name: str
    size: int
    spans: int

    @staticmethod
    def parse(name: str, size: int) -> SpooledBatch | None:
        if not name.endswith(SUFFIX) or name.startswith(_TEMPORARY_PREFIX):
            return None
        parts = name.removesuffix(SUFFIX).split("-")
        spans = int(parts[-1]) if len(parts) == 4 and parts[-1].isdigit() else 0
        return SpooledBatch(name, size, spans)


@dataclass
class _Segment:
    name: str
    fd: int
    size: int = 0
    spans: int = 0


def _parse(body: bytes) -> ExportTraceServiceRequest | None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # not a request: the exporter will say so
        return None
    return request


def count_spans(body: bytes) -> int:
    """The spans in a spooled file whose name does not say (a segment its process left open)."""
    request = _parse(body)
    if request is None:
        return 0
    return sum(len(scope.spans) for r in request.resource_spans for scope in r.scope_spans)


def per_span_requests(body: bytes) -> list[bytes]:
    """One request per span of `body`, each with its resource and scope (or `[body]` when it
    does not parse)."""
    request = _parse(body)
    if request is None:
        return [body]
    parts = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                one = ExportTraceServiceRequest()
                resource = one.resource_spans.add()
                resource.resource.CopyFrom(resource_spans.resource)
                resource.schema_url = resource_spans.schema_url
                scope = resource.scope_spans.add()
                scope.scope.CopyFrom(scope_spans.scope)
                scope.schema_url = scope_spans.schema_url
                scope.spans.add().CopyFrom(span)
                parts.append(one.SerializeToString())
    return parts or [body]


def _write_all(fd: int, body: bytes) -> None:
    view = memoryview(body)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class DropCounts:
    batches: int = 0
    spans: int = 0


class Claim:
    """A spooled file this process holds the lock of: read it, then `delete()` or `release()`."""

    def __init__(self, spool: Spool, batch: SpooledBatch, fd: int) -> None:
        self.spool, self.batch, self._fd = spool, batch, fd

    def read(self) -> bytes:
        os.lseek(self._fd, 0, os.SEEK_SET)  # read again when a merged request is split
        chunks = []
        while chunk := os.read(self._fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spool.directory / self.batch.name)
        self.spool.forget(self.batch.size)
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # and with it the lock
            self._fd = -1


class Spool:
    """A directory of export requests waiting for the exporter, bounded to `max_bytes`."""

    def __init__(self, directory: Path, max_bytes: int = _DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the spool's bound must be positive, got {max_bytes} bytes")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped = DropCounts()
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._known_bytes = 0
        self._scanned_at = -_RESCAN_SECONDS
        self._warned_full = False
        self._segment: _Segment | None = None
        self._remove_abandoned()

    def write(self, body: bytes, spans: int) -> bool:
        """Keeps one export request; False when it could not be kept (counted and logged)."""
        with self._lock:
            if len(body) > self.max_bytes or not self._make_room(len(body)):
                self._drop(1, spans, f"a batch of {len(body)} bytes does not fit")
                return False
            try:
                self._write_file(self._new_name(spans), body)
            except OSError as error:
                self._drop(1, spans, f"it could not be written ({error})")
                return False
            self._known_bytes += len(body)
            return True

    def append(self, body: bytes, spans: int) -> bool:
        """Adds one export request to this process's open segment, a spool file it appends to
        while the exporter is away: one `write()` per span, which the kernel keeps even if the
        process is killed the next moment. Serialized requests concatenate into one request.
        Other processes skip the segment while its lock is held, and take it once the process
        closes it or dies. False when it could not be kept (counted and logged)."""
        with self._lock:
            segment = self._segment
            if segment is not None and segment.size + len(body) > self._segment_limit():
                self._close_segment()
                segment = None
            if len(body) > self.max_bytes or not self._make_room(len(body)):
                self._drop(1, spans, f"a batch of {len(body)} bytes does not fit")
                return False
            try:
                if segment is None:
                    segment = self._segment = self._open_segment()
                _write_all(segment.fd, body)
            except OSError as error:
                if segment is not None:
                    self._cut_back(segment)
                self._drop(1, spans, f"it could not be written ({error})")
                return False
            segment.size += len(body)
            segment.spans += spans
            self._known_bytes += len(body)
            return True

    def after_fork(self) -> None:
        """In a forked child: the parent's segment stays the parent's (closing the child's copy
        of its descriptor keeps the parent's lock), and the locks start afresh."""
        self._lock = threading.Lock()
        segment, self._segment = self._segment, None
        if segment is not None:
            os.close(segment.fd)

    def close_segment(self) -> None:
        """Hands the open segment over to whoever sends the spool (this process or another)."""
        with self._lock:
            self._close_segment()

    def pending(self) -> list[SpooledBatch]:
        """The spooled requests, oldest first."""
        batches = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    batch = SpooledBatch.parse(entry.name, entry.stat().st_size)
                    if batch is not None:
                        batches.append(batch)
        return sorted(batches)

    def claim(self, batch: SpooledBatch) -> Claim | None:
        """The file's lock, or None when another process holds it or it is gone."""
        try:
            fd = os.open(self.directory / batch.name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
        if os.fstat(fd).st_nlink == 0:  # handled by another process before the lock was ours
            os.close(fd)
            return None
        return Claim(self, batch, fd)

    def forget(self, size: int) -> None:
        with self._lock:
            self._known_bytes = max(0, self._known_bytes - size)

    def total_bytes(self) -> int:
        return sum(batch.size for batch in self.pending())

    def _make_room(self, incoming: int) -> bool:
        now = time.monotonic()
        if now - self._scanned_at >= _RESCAN_SECONDS:
            self._known_bytes, self._scanned_at = self.total_bytes(), now
        if self._known_bytes + incoming <= self.max_bytes:
            return True
        for batch in self._claimable_oldest_first():
            self._evict(batch)
            if self._known_bytes + incoming <= self.max_bytes:
                return True
        return False

    def _claimable_oldest_first(self) -> Iterator[Claim]:
        for batch in self.pending():
            claim = self.claim(batch)
            if claim is not None:
                yield claim

    def _evict(self, claim: Claim) -> None:
        spans = claim.batch.spans or count_spans(claim.read())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / claim.batch.name)
        claim.release()
        self._known_bytes = max(0, self._known_bytes - claim.batch.size)
        reason = f"the spool reached its bound of {self.max_bytes} bytes; oldest batches dropped"
        self._drop(1, spans, reason)

    def _drop(self, batches: int, spans: int, reason: str) -> None:
        self.dropped.batches += batches
        self.dropped.spans += spans
        if not self._warned_full:  # once per process; `delivery_status()` keeps the count
            self._warned_full = True
            log.warning(
                "nexus_otel: spans dropped from the spool at %s: %s (counted in "
                "nexus_otel.delivery_status(); raise NEXUS_OTEL_SPOOL_MAX_BYTES to keep more)",
                self.directory,
                reason,
            )

    def _new_name(self, spans: int) -> str:
        return f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence)}-{spans}{SUFFIX}"

    def _segment_limit(self) -> int:
        return min(_SEGMENT_BYTES, max(1, self.max_bytes // 4))

    def _open_segment(self) -> _Segment:
        """Created hidden, locked, then shown: no other process sees it unlocked and empty."""
        name = self._new_name(0)
        temporary = self.directory / f"{_TEMPORARY_PREFIX}{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.replace(temporary, self.directory / name)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return _Segment(name, fd)

    def _close_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        final = segment.name.removesuffix(f"-0{SUFFIX}") + f"-{segment.spans}{SUFFIX}"
        with contextlib.suppress(OSError):  # the name only carries the count
            os.replace(self.directory / segment.name, self.directory / final)
        os.close(segment.fd)  # and with it the lock

    def _cut_back(self, segment: _Segment) -> None:
        """After a write that failed part way (a full disk): the part written is cut off, else
        the requests after it would not parse, and with them the whole segment, every span it
        held before and after, would be refused. When it cannot be cut, the segment is closed
        and the next span starts another."""
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            self._close_segment()

    def _write_file(self, name: str, body: bytes) -> None:
        temporary = self.directory / f"{_TEMPORARY_PREFIX}{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, body)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        os.close(fd)
        os.replace(temporary, self.directory / name)

    def _remove_abandoned(self) -> None:
        cutoff = time.time() - _ABANDONED_SECONDS
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(_TEMPORARY_PREFIX) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
