"""One OTLP/HTTP protobuf request, sent once, and what its answer means for the batch in it.

The SDK's own exporter retries inside `export()` for up to its timeout and then drops the batch;
here a request is sent once and the caller decides: keep it in the spool (`RETRY`), forget it
(`DONE`), or drop it because the exporter refuses it for good (`REJECTED`). The standard
`OTEL_EXPORTER_OTLP_*` variables (headers, timeout, compression, certificates) apply.
"""

from __future__ import annotations

import enum
import gzip
import os
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.util.re import parse_env_headers

from nexus_otel._internal import log
from nexus_otel._secrets import scrub_text

_DEFAULT_TIMEOUT_SECONDS = 10.0  # the OTLP exporter specification's default
# Answers that say "later": the OTLP/HTTP specification's retryable codes, plus 401/403 (a token
# being rotated or fixed: the spans wait for it) and every other 5xx (never drop spend on a
# server's error).
_RETRYABLE = {401, 403, 408, 429}
# Retry-After values beyond this are read as this: a misconfigured proxy must not park the spool.
_MAX_RETRY_AFTER_SECONDS = 300.0


class Verdict(enum.Enum):
    DONE = "done"  # acknowledged (rejected spans in a partial success are logged)
    RETRY = "retry"  # keep it and send it again later
    REJECTED = "rejected"  # refused for good (400, 413 ...): sending it again cannot help


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str = ""  # logged and kept in `delivery_status().last_error`: scrubbed
    retry_after: float | None = None  # seconds, from the exporter's Retry-After
    status: int | None = None

    def __post_init__(self) -> None:
        # An error names the URL, whose query may hold the exporter's key (`?api_key=`), and
        # an answer's body may quote a header it refused.
        if self.detail:
            object.__setattr__(self, "detail", scrub_text(self.detail))


def _env(name: str) -> str | None:
    """`OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`."""
    value = os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
    return value if value is not None else os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")


class OtlpSender:
    """Posts serialized `ExportTraceServiceRequest`s to one OTLP/HTTP traces endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.timeout = _DEFAULT_TIMEOUT_SECONDS
        timeout = _env("TIMEOUT")
        if timeout:
            try:  # the specification says milliseconds; the Python SDK reads seconds
                self.timeout = float(timeout)
            except ValueError:
                log.warning("nexus_otel: OTEL_EXPORTER_OTLP_TIMEOUT=%r is not a number", timeout)
        self.compression = (_env("COMPRESSION") or "none").strip().lower()
        self._session = requests.Session()
        self._session.headers.update(parse_env_headers(_env("HEADERS") or "", liberal=True))
        self._session.headers["Content-Type"] = "application/x-protobuf"
        if self.compression in {"gzip", "deflate"}:
            self._session.headers["Content-Encoding"] = self.compression
        certificate = _env("CERTIFICATE")
        if certificate:
            self._session.verify = certificate
        client_certificate, client_key = _env("CLIENT_CERTIFICATE"), _env("CLIENT_KEY")
        if client_certificate:
            self._session.cert = (
                (client_certificate, client_key) if client_key else client_certificate
            )

    def send(self, body: bytes, timeout: float | None = None) -> Outcome:
        """Sends `body` once, waiting at most `timeout` seconds (else the configured timeout)."""
        try:
            response = self._session.post(
                self.url, data=self._compress(body), timeout=timeout or self.timeout
            )
        except requests.RequestException as error:
            return Outcome(Verdict.RETRY, f"{type(error).__name__}: {error}")
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(Verdict.DONE, _rejected_spans(response.content), status=status)
        detail = f"HTTP {status}: {response.text[:200]}"
        if status in _RETRYABLE or status >= 500:
            return Outcome(Verdict.RETRY, detail, _retry_after(response), status)
        return Outcome(Verdict.REJECTED, detail, status=status)

    def close(self) -> None:
        self._session.close()

    def _compress(self, body: bytes) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(body, compresslevel=6)
        if self.compression == "deflate":
            return zlib.compress(body)
        return body


def _rejected_spans(content: bytes) -> str:
    """The exporter's partial success, when it refused some spans (the caller logs it)."""
    if not content:
        return ""
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(content)
    except Exception:  # a JSON or empty answer from a proxy: nothing to report
        return ""
    rejected = response.partial_success.rejected_spans
    if rejected <= 0:
        return ""
    return f"{rejected} spans refused: {response.partial_success.error_message[:500]}"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_SECONDS)
