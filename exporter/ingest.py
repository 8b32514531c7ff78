"""The OTLP/HTTP ingest port: POST /v1/traces, GET /metrics, GET /health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter import otlp
from exporter.api.auth import bearer_matches
from exporter.metrics import ExporterMetrics
from exporter.model import LLMCall
from exporter.normalize import InvalidSpan, to_llm_call
from exporter.pricing import PriceBook
from exporter.settings import Settings
from exporter.storage import CallWriter, StorageUnavailable, WriteResult

log = logging.getLogger(__name__)

# google.rpc.Code for each HTTP status we answer with (OTLP error bodies carry a Status).
_RPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_FUTURE_SKEW = timedelta(days=1)
_MAX_REJECTION_MESSAGES = 5
# numeric(20, 12) holds less; no single call costs a million dollars, so such a cost is bad data.
_MAX_CALL_COST_USD = Decimal(1_000_000)
# Bytes of request bodies received and not yet decoded, in multiples of the largest body: bounded
# like the write queue, so a burst of huge batches meets a 503, not memory growth. Counted as
# they arrive, so a slow sender that announces a large body and sends nothing holds nothing.
_BODIES_IN_FLIGHT = 2


class BodiesBusy(RuntimeError):
    """Other requests' bodies already fill the bytes the exporter holds at once."""


@dataclass
class Conversion:
    """What one OTLP request turned into."""

    calls: list[LLMCall] = field(default_factory=list)
    received: int = 0
    ignored: int = 0
    rejections: list[str] = field(default_factory=list)


class Ingestor:
    """Turns OTLP requests into stored, priced calls. One per ingest app."""

    def __init__(self, settings: Settings, database_url: str, metrics: ExporterMetrics) -> None:
        self.settings = settings
        self.database_url = database_url
        self.metrics = metrics
        self.prices = PriceBook(settings.prices_file)
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

    def convert(self, request: ExportTraceServiceRequest) -> Conversion:
        result = Conversion()
        latest = datetime.now(UTC) + _FUTURE_SKEW
        for raw in otlp.iter_raw_spans(request):
            result.received += 1
            try:
                call = to_llm_call(raw, store_content=self.settings.store_content)
            except InvalidSpan as exc:
                result.rejections.append(str(exc))
                continue
            if call is None:
                result.ignored += 1
            elif not _EARLIEST <= call.timestamp <= latest:
                result.rejections.append(
                    f"span {call.span_id}: start time {call.timestamp.isoformat()} is out of range"
                )
            else:
                self._price(call)
                if call.cost_usd is not None and call.cost_usd >= _MAX_CALL_COST_USD:
                    result.rejections.append(
                        f"span {call.span_id}: cost {call.cost_usd:.2f} USD is out of range"
                    )
                else:
                    result.calls.append(call)
        return result

    def _price(self, call: LLMCall) -> None:
        # Tokens are stored whatever happens here: a pricing failure leaves the call unpriced.
        try:
            price = self.prices.price(
                provider=call.provider,
                model=call.model,
                response_model=call.response_model,
                timestamp=call.timestamp,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cache_read_tokens=call.cache_read_tokens,
                cache_write_tokens=call.cache_write_tokens,
                reported_cost_usd=call.reported_cost_usd,
            )
        except Exception:
            log.exception("pricing %s/%s failed; stored unpriced", call.provider, call.model)
            return
        call.cost_usd, call.cost_source = price.cost_usd, price.source

    async def store(self, calls: list[LLMCall]) -> WriteResult:
        """Returns once the calls are durable; raises StorageUnavailable otherwise."""
        future = self.writer.submit(calls)
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
    ingestor = Ingestor(settings, database_url, metrics or ExporterMetrics())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ingestor.writer.start()
        try:
            yield
        finally:
            await ingestor.writer.stop()

    async def export_traces(request: Request) -> Response:
        response = await _export(ingestor, request)
        ingestor.metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(ingestor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
    except BodiesBusy as exc:
        return _unavailable(ingestor, str(exc), media)
    _count(ingestor.metrics, conversion)
    if conversion.calls:
        try:
            written = await ingestor.store(conversion.calls)
        except StorageUnavailable as exc:
            return _unavailable(ingestor, str(exc), media)
        conversion.rejections.extend(
            f"span {call.span_id}: the database refused it: {reason}"
            for call, reason in written.refused
        )
    rejected = len(conversion.rejections)
    message = "; ".join(conversion.rejections[:_MAX_REJECTION_MESSAGES])
    if rejected > _MAX_REJECTION_MESSAGES:
        message += f"; and {rejected - _MAX_REJECTION_MESSAGES} more"
    return Response(otlp.encode_response(media, rejected, message), media_type=media)


async def _decode(ingestor: Ingestor, request: Request, media: str) -> Conversion:
    """Body to calls. Kept apart so the body and the decoded message are freed before the
    request waits for its rows to commit: a waiting request holds only its calls."""
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
        data = otlp.decompress(body, request.headers.get("content-encoding"), limit)
        return ingestor.convert(otlp.parse_request(data, media))
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
