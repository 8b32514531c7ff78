"""instrument()/uninstrument(): the SDK set-up, joining an app's provider, standard OTEL_*
variables, idempotence, and estimates that never touch the network. Each case runs in its own
interpreter: the global tracer provider is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporter.simulator import ProviderSimulator
from tests.support import QuietHandler


def python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


class OTLPReceiver:
    """Records the OTLP/HTTP protobuf requests it receives."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.paths.append(self.path)
                receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                self.answer(200, content_type="application/x-protobuf")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
        """(resource attributes, span attributes, span name) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {
                    kv.key: kv.value.string_value for kv in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attrs = {kv.key: kv.value for kv in span.attributes}
                        found.append((resource, attrs, span.name))
        return found


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    yield receiver
    receiver.server.shutdown()


CALL = """
import groq
client = groq.Groq(api_key="gsk-x", base_url="{sim}", max_retries=0)
client.chat.completions.create(model="llama-3.3-70b-versatile", max_tokens=50,
    messages=[{{"role": "user", "content": "hi"}}],
    extra_headers={{"x-sim-usage": "input=11,output=7"}})
"""


def test_standard_otel_variables_and_idempotence(
    receiver: OTLPReceiver, simulator: ProviderSimulator
) -> None:
    python(
        f"""
        import nexus_otel
        nexus_otel.instrument()
        nexus_otel.instrument()  # harmless
        {textwrap.indent(CALL.format(sim=simulator.groq_base_url), "        ").strip()}
        nexus_otel.shutdown()
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="from-env",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
    )  # fmt: skip
    assert set(receiver.paths) == {"/v1/traces"}
    gen_ai = [s for s in receiver.spans() if "gen_ai.provider.name" in s[1]]
    [(resource, attrs, name)] = gen_ai  # one span, though instrument() ran twice
    assert resource["service.name"] == "from-env"
    assert resource["deployment.environment"] == "test"
    assert name == "chat llama-3.3-70b-versatile"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 11


def test_joins_the_apps_provider_and_uninstrument_restores(
    receiver: OTLPReceiver, simulator: ProviderSimulator
) -> None:
    out = python(
        f"""
        import httpx, httpx2
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import nexus_otel

        originals = (httpx.HTTPTransport.handle_request, httpx2.HTTPTransport.handle_request,
                     httpx2.AsyncHTTPTransport.handle_async_request)
        app_provider = TracerProvider()
        memory = InMemorySpanExporter()
        app_provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(app_provider)
        app_tracer = trace.get_tracer("app")

        nexus_otel.instrument("joined", endpoint="{receiver.url}")
        assert trace.get_tracer_provider() is app_provider  # joined, not replaced
        {textwrap.indent(CALL.format(sim=simulator.groq_base_url), "        ").strip()}
        nexus_otel.force_flush()
        print("app saw", len(memory.get_finished_spans()))
        nexus_otel.uninstrument()
        assert (httpx.HTTPTransport.handle_request, httpx2.HTTPTransport.handle_request,
                httpx2.AsyncHTTPTransport.handle_async_request) == originals
        assert trace.get_tracer_provider() is app_provider
        memory.clear()
        {textwrap.indent(CALL.format(sim=simulator.groq_base_url), "        ").strip()}
        with app_tracer.start_as_current_span("after uninstrument"):
            pass
        print("after", [span.name for span in memory.get_finished_spans()])
        """
    )  # fmt: skip
    assert "app saw 1" in out  # our GenAI span (no HTTP span by default), in the app's exporter
    # Nothing is instrumented any more; the app's own span still reaches its own exporter.
    assert "after ['after uninstrument']" in out
    # Our exporter is gone from the app's provider: the app's later span (which the provider's
    # exit-time shutdown would have flushed to it) never reached the receiver.
    assert [name for _, _, name in receiver.spans()] == ["chat llama-3.3-70b-versatile"]


def test_the_global_provider_is_set_once_and_follows_instrument(receiver: OTLPReceiver) -> None:
    out = python(
        f"""
        from opentelemetry import trace
        import nexus_otel
        app_tracer = trace.get_tracer("app")  # before instrument(), as modules do at import

        def app_span(name):
            with app_tracer.start_as_current_span(name) as span:
                return span.is_recording()

        print("before", app_span("before"))
        nexus_otel.instrument("x", endpoint="{receiver.url}")
        print("x", app_span("during x"))
        nexus_otel.uninstrument()
        print("after", app_span("after x"))
        nexus_otel.instrument("y", endpoint="{receiver.url}")  # and again, cleanly
        print("y", app_span("during y"))
        nexus_otel.uninstrument()
        print("end", app_span("at the end"))
        """
    )  # fmt: skip
    assert out.split() == ["before", "False", "x", "True", "after", "False", "y", "True",
                           "end", "False"]  # fmt: skip
    received = sorted((resource["service.name"], name) for resource, _, name in receiver.spans())
    assert received == [("x", "during x"), ("y", "during y")]


def test_estimates_never_download(tmp_path: Any) -> None:
    out = python(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        import nexus_otel
        from nexus_otel._estimate import estimate_source
        print(nexus_otel.estimate_tokens("The quick brown fox jumps over the lazy dog."),
              estimate_source())
        """,
        TIKTOKEN_CACHE_DIR=str(tmp_path), DATA_GYM_CACHE_DIR=str(tmp_path),
    )  # fmt: skip
    assert out.split() == ["10", "tiktoken"]  # cl100k_base: exact, from the wheel's own file


def test_estimates_fall_back_to_characters_without_tiktoken() -> None:
    out = python(
        """
        import sys
        sys.modules["tiktoken"] = None  # not installed
        import nexus_otel
        from nexus_otel._estimate import estimate_source
        print(nexus_otel.estimate_tokens("x" * 41), estimate_source())
        """
    )
    assert out.split() == ["11", "chars"]


def test_estimate_cost_is_genai_prices_and_none_when_unpriced() -> None:
    import nexus_otel

    # claude-sonnet-4-5 on genai-prices, per million tokens: $3 input, $0.30 cache read, $15
    # output. 500 of the 2000 input tokens are not cached: (500*3 + 1500*0.30 + 500*15) / 1e6.
    expected = Decimal("0.00945")
    assert nexus_otel.estimate_cost("claude-sonnet-4-5", 2000, 500, provider="anthropic",
                                    cache_read_tokens=1500) == expected  # fmt: skip
    assert nexus_otel.estimate_cost("no-such-model-xyz", 2000, 500) is None


def test_an_app_that_already_exports_otlp_is_reused(
    receiver: OTLPReceiver, simulator: ProviderSimulator
) -> None:
    python(
        f"""
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        import nexus_otel

        app_provider = TracerProvider()
        app_provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint="{receiver.url}/v1/traces")))
        trace.set_tracer_provider(app_provider)
        nexus_otel.instrument()
        {textwrap.indent(CALL.format(sim=simulator.groq_base_url), "        ").strip()}
        nexus_otel.shutdown()
        app_provider.force_flush()
        """,
        # Where a second exporter, had one been added, would send each span again.
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
    )  # fmt: skip
    # No second exporter: each span is sent once.
    assert len([s for s in receiver.spans() if "gen_ai.provider.name" in s[1]]) == 1


def test_settings_that_would_lose_or_hang_delivery_are_refused_at_instrument() -> None:
    """An endpoint that is no http(s) URL was taken, and every span then waited in the spool for
    good; a shutdown wait of nan or inf was taken too. A key in the endpoint is not repeated."""
    out = python(
        """
        import os
        import nexus_otel
        cases = [
            ({"endpoint": "localhost:4318"}, {}),
            ({"endpoint": "ftp://collector/?api_key=sk-live-0123456789abcdef"}, {}),
            ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}),
            ({"endpoint": "http://127.0.0.1:1"}, {"NEXUS_OTEL_SHUTDOWN_SECONDS": "nan"}),
            ({"endpoint": "http://127.0.0.1:1"}, {"NEXUS_OTEL_SHUTDOWN_SECONDS": "inf"}),
        ]
        for arguments, env in cases:
            os.environ.update(env)
            try:
                nexus_otel.instrument(service_name="refused", **arguments)
                print("taken")
            except ValueError as error:
                print(error)
            for name in env:
                del os.environ[name]
        """
    )
    assert out.splitlines() == [
        "the OTLP endpoint must be an http:// or https:// URL, not 'localhost:4318'",
        "the OTLP endpoint must be an http:// or https:// URL, not 'ftp://collector/?api_key=[REDACTED]'",
        "the OTLP endpoint must be an http:// or https:// URL, not 'collector:4318/v1/traces'",
        "NEXUS_OTEL_SHUTDOWN_SECONDS='nan': expected a finite positive float",
        "NEXUS_OTEL_SHUTDOWN_SECONDS='inf': expected a finite positive float",
    ]


def test_a_content_capture_value_neither_true_nor_false_is_false_with_a_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import nexus_otel; nexus_otel.instrument(endpoint="
         "'http://127.0.0.1:1'); from nexus_otel._setup import _capture; print(_capture(None))"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "NEXUS_OTEL_CAPTURE_CONTENT": "maybe"},
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "False\n")
    assert (
        "NEXUS_OTEL_CAPTURE_CONTENT='maybe' is neither true nor false: prompts and completions"
        " are not captured" in result.stderr
    )
