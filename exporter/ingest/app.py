"""The OTLP/HTTP ingest port: POST /v1/traces, GET /metrics, GET /health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from exporter.core.security import bearer_matches
from exporter.core.settings import Settings
from exporter.ingest import otlp
from exporter.ingest.decode import (
    Conversion,
    DecodeOptions,
    Decoder,
    DecoderUnavailable,
    default_processes,
)
from exporter.ingest.metrics import ExporterMetrics
from exporter.ingest.rows import CallBatch
from exporter.ingest.storage import StorageUnavailable, WriteResult
from exporter.ingest.writer import CallWriter
from nexus_otel._secrets import scrub_text

log = logging.getLogger(__name__)

# google.rpc.Code for each HTTP status we answer with (OTLP error bodies carry a Status).
_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
_MAX_REJECTION_MESSAGES = 5
# Bytes of request bodies received and not yet decoded, in multiples of the largest body: bounded
# like the write queue, so a burst of huge batches meets a 503, not memory growth. Counted as
# they arrive, so a slow sender that announces a large body and sends nothing holds nothing.
_BODIES_IN_FLIGHT = 2
# One request's share of those bytes: a request may grow past it only while a share stays free
# for the others, so two stalled uploads of the largest body cannot hold every byte (the body
# deadline then closes them). A request alone may still send the largest body.
_BODY_SHARES = 4
# How long one database probe answers /health: a burst of health checks costs one query.
_HEALTH_CACHE_SECONDS = 1.0
_HEALTH_TIMEOUT_SECONDS = 2.0


class BodiesBusy(RuntimeError):
    """Other requests' bodies already fill the bytes the exporter holds at once."""


class Ingestor:
    """Turns OTLP requests into stored, priced calls. One per ingest app."""

    def __init__(self, settings: Settings, database_url: str, metrics: ExporterMetrics) -> None:
        self.settings = settings
        self.database_url = database_url
        self.metrics = metrics
        options = DecodeOptions(
            settings.max_body_bytes,
            settings.store_content,
            settings.prices_file,
            retention_days=settings.retention_days,
        )
        processes = settings.decode_processes
        self.decoder = Decoder(options, default_processes() if processes is None else processes)
        self.writer = CallWriter(
            database_url,
            metrics,
            batch_max_rows=settings.batch_max_rows,
            queue_max_rows=settings.queue_max_rows,
            connections=settings.write_connections,
        )
        self.body_bytes_limit = _BODIES_IN_FLIGHT * settings.max_body_bytes
        self.body_share = self.body_bytes_limit // _BODY_SHARES
        self.body_bytes_in_flight = 0
        self.health = HealthCheck(database_url)

    def admit_body(self, size: int, already_mine: int) -> None:
        """Counts `size` more bytes of one request's body; a request alone is always admitted,
        one within its share while the bytes last, a larger one while a share stays free."""
        others = self.body_bytes_in_flight - already_mine
        total = self.body_bytes_in_flight + size
        limit = self.body_bytes_limit
        if already_mine + size > self.body_share:
            limit -= self.body_share
        if others and total > limit:
            raise BodiesBusy(f"{others} bytes of other requests are being received")
        self.body_bytes_in_flight = total

    async def store(self, batch: CallBatch) -> WriteResult:
        """Returns once the calls are durable; raises StorageUnavailable otherwise."""
        future = self.writer.submit(batch)
        try:
            return await asyncio.wait_for(future, self.settings.write_timeout_seconds)
        except TimeoutError:
            raise StorageUnavailable("the database did not confirm the write in time") from None

    async def database_ok(self) -> bool:
        return await self.health.database_ok()


class HealthCheck:
    """Whether the database answers, probed on a pooled connection at most once per
    `_HEALTH_CACHE_SECONDS`: concurrent checks wait for the same probe, so a burst of them
    costs one query and none fails for want of a connection."""

    def __init__(self, database_url: str) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._url = database_url
        self._lock = asyncio.Lock()
        self._checked_at = float("-inf")
        self._ok = False

    async def database_ok(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked_at >= _HEALTH_CACHE_SECONDS:
                self._ok = await self._probe()
                self._checked_at = time.monotonic()
            return self._ok

    async def _probe(self) -> bool:
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._url,
                min_size=1,
                max_size=1,
                open=False,
                timeout=_HEALTH_TIMEOUT_SECONDS,
                # A connection the server dropped (a restart) is replaced, not reported as down.
                check=AsyncConnectionPool.check_connection,
                kwargs={"autocommit": True, "connect_timeout": int(_HEALTH_TIMEOUT_SECONDS)},
            )
            await self._pool.open(wait=False)
        try:
            async with self._pool.connection() as conn:
                await asyncio.wait_for(conn.execute("SELECT 1"), _HEALTH_TIMEOUT_SECONDS)
            return True
        except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
            log.warning("health check: the database did not answer: %s", exc)
            return False

    def forget(self) -> None:
        """The next check probes the database again."""
        self._checked_at = float("-inf")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def create_ingest_app(
    settings: Settings, database_url: str, metrics: ExporterMetrics | None = None
) -> Starlette:
    metrics = metrics or ExporterMetrics(max_series=settings.metrics_max_series)
    ingestor = Ingestor(settings, database_url, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ingestor.decoder.start()
        await ingestor.writer.start()
        try:
            await ingestor.decoder.warm_up()
            yield
        finally:
            await ingestor.writer.stop()
            ingestor.decoder.stop()
            await ingestor.health.close()

    async def export_traces(request: Request) -> Response:
        response = await _export(ingestor, request)
        ingestor.metrics.requests.labels(str(response.status_code)).inc()
        return response

    metrics_token = settings.metrics_token or settings.api_token or settings.ingest_token

    async def metrics_endpoint(request: Request) -> Response:
        # With any token configured, /metrics (budget names, spend, services) needs the most
        # specific one: its own, else the API's, else the ingest token.
        given = request.headers.get("authorization")
        if metrics_token and not bearer_matches(given, metrics_token):
            return PlainTextResponse(
                "missing or wrong bearer token (Authorization: Bearer <token>)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Rendered in a thread (the budget gauges read the database): never on the event loop;
        # sent in pieces of the text as kept, never copied whole.
        parts = await ingestor.metrics.scrape()
        return StreamingResponse(_grouped(parts), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        ok = await ingestor.database_ok()
        body = {"status": "ok" if ok else "degraded", "database": "up" if ok else "down"}
        return JSONResponse(body, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route("/v1/traces", export_traces, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.ingestor = ingestor
    return app


# /metrics is sent in writes of about this size: few enough writes that sending tens of
# megabytes costs the event loop little, small enough that no whole copy of the text is made.
_METRICS_WRITE_BYTES = 1 << 20


async def _grouped(parts: list[bytes]) -> AsyncIterator[bytes]:
    group: list[bytes] = []
    size = 0
    for part in parts:
        group.append(part)
        size += len(part)
        if size >= _METRICS_WRITE_BYTES:
            yield b"".join(group)
            group, size = [], 0
    yield b"".join(group)


async def _export(ingestor: Ingestor, request: Request) -> Response:
    settings = ingestor.settings
    media = otlp.media_type(request.headers.get("content-type"))
    if media is None:
        return _error(415, "Content-Type must be application/x-protobuf or application/json", None)
    if settings.ingest_token and not bearer_matches(
        request.headers.get("authorization"), settings.ingest_token
    ):
        return _error(401, "missing or wrong bearer token", media)
    if ingestor.writer.full:
        # Shed load before reading the body: under overload a refusal must cost next to nothing,
        # or decoding refused requests starves the writer that would drain the queue.
        rows = ingestor.writer.queued_rows
        return _unavailable(ingestor, f"{rows} rows are already waiting for the database", media)
    try:
        ingestor.decoder.check_room()
    except DecoderUnavailable as exc:
        return _unavailable(ingestor, str(exc), media)
    declared = _declared_length(request)
    if declared > settings.max_body_bytes:
        limit = settings.max_body_bytes
        return _error(413, f"body of {declared} bytes exceeds the {limit}-byte limit", media)
    try:
        ingestor.admit_body(declared, 0)  # refused before reading, when the length is known
        ingestor.body_bytes_in_flight -= declared
        conversion = await _decode(ingestor, request, media)
    except otlp.PayloadError as exc:
        return _error(exc.status, str(exc), media)
    except (BodiesBusy, DecoderUnavailable) as exc:
        return _unavailable(ingestor, str(exc), media)
    except ClientDisconnect:  # logged where the bytes were counted; nobody reads the answer
        return _error(400, "the client closed the connection before its body ended", media)
    _count(ingestor.metrics, conversion)
    if conversion.batch is not None:
        try:
            written = await ingestor.store(conversion.batch)
        except StorageUnavailable as exc:
            ingestor.health.forget()  # a cached "up" is no longer true
            return _unavailable(ingestor, str(exc), media)
        conversion.rejections.extend(
            f"span {span_id}: the database refused it: {reason}"
            for span_id, reason in written.refused
        )
    rejected = len(conversion.rejections)
    # Reasons may quote a span's values, and senders (a collector) log them: scrubbed too.
    message = scrub_text("; ".join(conversion.rejections[:_MAX_REJECTION_MESSAGES]))
    if rejected > _MAX_REJECTION_MESSAGES:
        message += f"; and {rejected - _MAX_REJECTION_MESSAGES} more"
    return Response(otlp.encode_response(media, rejected, message), media_type=media)


async def _decode(ingestor: Ingestor, request: Request, media: str) -> Conversion:
    """Body to a batch of calls. Kept apart so the body is freed before the request waits for
    its rows to commit: a waiting request holds only its encoded rows."""
    limit = ingestor.settings.max_body_bytes
    chunks: list[bytes] = []
    counted = 0
    try:
        async for chunk in request.stream():
            if counted + len(chunk) > limit:
                raise otlp.PayloadError(f"body exceeds the {limit}-byte limit", 413)
            ingestor.admit_body(len(chunk), counted)
            counted += len(chunk)
            chunks.append(chunk)
    except ClientDisconnect:
        declared = request.headers.get("content-length", "an unknown number of")
        client = request.client.host if request.client else "a client"
        log.info(
            "%s went away after %d of %s body bytes: nothing stored", client, counted, declared
        )
        raise
    else:
        body = b"".join(chunks)
        chunks.clear()
        encoding = request.headers.get("content-encoding")
        return await ingestor.decoder.decode(body, media, encoding)
    finally:
        ingestor.body_bytes_in_flight -= counted


def _unavailable(ingestor: Ingestor, message: str, media: str) -> Response:
    retry = str(ingestor.settings.retry_after_seconds)
    return _error(503, message, media, headers={"Retry-After": retry})


def _count(metrics: ExporterMetrics, conversion: Conversion) -> None:
    metrics.spans_received.inc(conversion.received)
    metrics.spans_ignored.inc(conversion.ignored)
    if conversion.rejections:
        metrics.spans_rejected.labels("invalid_span").inc(len(conversion.rejections))


def _declared_length(request: Request) -> int:
    """Content-Length, or 0 (a chunked body is bounded only by the body limit)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else 0


def _error(
    status: int, message: str, media: str | None, headers: dict[str, str] | None = None
) -> Response:
    body, content_type = otlp.encode_status(media, _RPC_CODES.get(status, 2), message)
    return Response(body, status_code=status, media_type=content_type, headers=headers)
