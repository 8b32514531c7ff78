"""The OTLP/HTTP ingest port: POST /v1/traces, GET /metrics, GET /health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from exporter import otlp
from exporter.api.auth import bearer_matches
from exporter.decode import (
    Conversion,
    DecodeOptions,
    Decoder,
    DecoderUnavailable,
    default_processes,
)
from exporter.metrics import ExporterMetrics
from exporter.settings import Settings
from exporter.storage import CallBatch, CallWriter, StorageUnavailable, WriteResult

log = logging.getLogger(__name__)

# google.rpc.Code for each HTTP status we answer with (OTLP error bodies carry a Status).
_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
_MAX_REJECTION_MESSAGES = 5
# Bytes of request bodies received and not yet decoded, in multiples of the largest body: bounded
# like the write queue, so a burst of huge batches meets a 503, not memory growth. Counted as
# they arrive, so a slow sender that announces a large body and sends nothing holds nothing.
_BODIES_IN_FLIGHT = 2


class BodiesBusy(RuntimeError):
    """Other requests' bodies already fill the bytes the exporter holds at once."""


class Ingestor:
    """Turns OTLP requests into stored, priced calls. One per ingest app."""

    def __init__(self, settings: Settings, database_url: str, metrics: ExporterMetrics) -> None:
        self.settings = settings
        self.database_url = database_url
        self.metrics = metrics
        options = DecodeOptions(
            settings.max_body_bytes, settings.store_content, settings.prices_file
        )
        processes = settings.decode_processes
        self.decoder = Decoder(options, default_processes() if processes is None else processes)
        self.writer = CallWriter(
            database_url,
            metrics,
            batch_max_rows=settings.batch_max_rows,
            queue_max_rows=settings.queue_max_rows,
        )
        self.body_bytes_limit = _BODIES_IN_FLIGHT * settings.max_body_bytes
        self.body_bytes_in_flight = 0

    def admit_body(self, size: int, already_mine: int) -> None:
        """Counts `size` more bytes of one request's body; a request alone is always admitted."""
        others = self.body_bytes_in_flight - already_mine
        if others and self.body_bytes_in_flight + size > self.body_bytes_limit:
            raise BodiesBusy(f"{others} bytes of other requests are being received")
        self.body_bytes_in_flight += size

    async def store(self, batch: CallBatch) -> WriteResult:
        """Returns once the calls are durable; raises StorageUnavailable otherwise."""
        future = self.writer.submit(batch)
        try:
            return await asyncio.wait_for(future, self.settings.write_timeout_seconds)
        except TimeoutError:
            raise StorageUnavailable("the database did not confirm the write in time") from None

    async def database_ok(self) -> bool:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.database_url, connect_timeout=2
            ) as conn:
                await conn.execute("SELECT 1")
            return True
        except (psycopg.Error, OSError):
            return False


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
    _count(ingestor.metrics, conversion)
    if conversion.batch is not None:
        try:
            written = await ingestor.store(conversion.batch)
        except StorageUnavailable as exc:
            return _unavailable(ingestor, str(exc), media)
        conversion.rejections.extend(
            f"span {span_id}: the database refused it: {reason}"
            for span_id, reason in written.refused
        )
    rejected = len(conversion.rejections)
    message = "; ".join(conversion.rejections[:_MAX_REJECTION_MESSAGES])
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
