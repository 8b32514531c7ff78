"""No credential is stored, exported as a metric or logged, wherever an app or an
instrumentation put it: the secrets corpus through raw OTLP (protobuf and JSON) and through the
instrumentation with the official SDKs. The LLM calls themselves are all stored."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import groq
import httpx
import openai
import psycopg
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql

import nexus_otel
from exporter.simulator import ProviderSimulator
from tests.hostile.payloads import (
    JSON,
    PROTOBUF,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
    to_json,
)
from tests.hostile.secrets_corpus import PLACEMENTS, Corpus, build, marker
from tests.support import ExporterProcess, QuietHandler, query

pytestmark = pytest.mark.e2e


def database_dump(database_url: str) -> str:
    """Every row of every table and materialized view of the public schema, as JSON text."""
    with psycopg.connect(database_url) as conn:
        relations = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm') ORDER BY 1"
        ).fetchall()
        parts = []
        for (name,) in relations:
            statement = sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(
                sql.Identifier(name)
            )
            parts += [row for (row,) in conn.execute(statement).fetchall()]
    return "\n".join(parts)


def stored(database_url: str, span_ids: list[str]) -> set[str]:
    rows = query(database_url, "SELECT span_id FROM api_calls WHERE span_id = ANY(%s)", (span_ids,))
    return {span_id for (span_id,) in rows}


def everything_written(exporter: ExporterProcess, database_url: str) -> str:
    metrics = httpx.get(f"{exporter.base_url}/metrics", timeout=30)
    assert metrics.status_code == 200
    return "\n".join((database_dump(database_url), metrics.text, exporter.log()))


def test_the_corpus_has_thirty_distinct_placements() -> None:
    names = [p.name for p in PLACEMENTS]
    assert len(names) >= 30 and len(set(names)) == len(names)


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_no_planted_secret_is_stored_exported_or_logged(
    exporter: ExporterProcess, database_url: str, content_type: str
) -> None:
    corpus = build()
    body = (
        corpus.request.SerializeToString()
        if content_type == PROTOBUF
        else json.dumps(to_json(corpus.request)).encode()
    )
    response = post(exporter.base_url, body, content_type)
    assert response.status_code == 200 and rejected_spans(response) == 0, response.content
    span_ids = [span.span_id.hex() for span in corpus.spans]
    assert stored(database_url, span_ids) == set(span_ids)  # every call is kept, scrubbed
    assert corpus.leaks(everything_written(exporter, database_url)) == []


def test_error_type_is_a_short_code_and_the_text_is_the_message(
    exporter: ExporterProcess, database_url: str
) -> None:
    corpus = build()
    response = post(exporter.base_url, corpus.request.SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    by_name = dict(zip([p.name for p in PLACEMENTS], corpus.spans, strict=True))
    rows = dict(
        query(
            database_url,
            "SELECT span_id, json_build_array(error_type, error_message)::text FROM api_calls "
            "WHERE span_id = ANY(%s)",
            ([by_name[n].span_id.hex() for n in ("error.type Bearer", "error.type sk-")],),
        )
    )
    assert rows == {
        by_name["error.type Bearer"].span_id.hex(): '["_OTHER", "401 Unauthorized: [REDACTED]"]',
        by_name["error.type sk-"].span_id.hex(): '["_OTHER", "[REDACTED]"]',
    }
    labels = {line.partition("error_type=")[2].split('"')[1]
              for line in httpx.get(f"{exporter.base_url}/metrics", timeout=30).text.splitlines()
              if "error_type=" in line}  # fmt: skip
    assert "_OTHER" in labels and all(len(label) <= 64 and " " not in label for label in labels)


class EchoingProvider:
    """An OpenAI-compatible server that refuses every key and quotes it back, as some gateways
    and self-hosted servers do."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                quoted = self.headers.get("authorization", "")
                message = f"Incorrect API key provided: {quoted} (from {self.path})"
                error = {"message": message, "type": "invalid_request_error"}
                self.answer(401, json.dumps({"error": error}).encode(), "application/json")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EchoingProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def echoing_provider() -> Iterator[EchoingProvider]:
    with EchoingProvider() as server:
        yield server


def wait_for_rows(database_url: str, service: str, expected: int) -> int:
    """How many calls of `service` are stored once the instrumentation's export is flushed."""
    assert nexus_otel.force_flush()
    deadline = time.monotonic() + 30
    while True:
        [(count,)] = query(
            database_url, "SELECT count(*) FROM api_calls WHERE service_name = %s", (service,)
        )
        if count >= expected or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.1)


def test_no_secret_from_an_instrumented_app_is_stored_exported_or_logged(
    exporter: ExporterProcess, database_url: str, echoing_provider: EchoingProvider
) -> None:
    keys = {name: marker() for name in (
        "groq key", "openai key", "echoed key", "base url userinfo", "base url query",
        "operation", "correlation id", "raw REST ?key=", "resource", "prompt",
    )}  # fmt: skip
    service = f"secrets-app-{marker()}"
    provider = TracerProvider(resource=Resource.create({
        "service.name": service, "deployment.api_key": keys["resource"]}))  # fmt: skip
    sent = InMemorySpanExporter()  # what the instrumentation sends, beside the OTLP export
    provider.add_span_processor(SimpleSpanProcessor(sent))
    nexus_otel.instrument(tracer_provider=provider, endpoint=exporter.base_url,
                          http_spans=True, capture_content=True)  # fmt: skip
    try:
        with ProviderSimulator(seed=11) as sim:
            make_calls(sim, echoing_provider, keys)
        count = wait_for_rows(database_url, service, 5)
    finally:
        nexus_otel.uninstrument()
        provider.shutdown()
    assert count == 5  # each LLM call is stored, the refused one too
    written = everything_written(exporter, database_url)
    assert [name for name, key in keys.items() if key in written] == []
    # The spans themselves, ours and the HTTP ones, carry none either (but the resource the app
    # gave, which the instrumentation does not own and the exporter does not store).
    recorded = "\n".join(span.to_json() for span in sent.get_finished_spans())
    assert len(sent.get_finished_spans()) >= 10  # five LLM spans and their HTTP spans
    assert [name for name, key in keys.items() if key in recorded] == ["resource"]


def make_calls(sim: ProviderSimulator, echoing: EchoingProvider, keys: dict[str, str]) -> None:
    messages = [{"role": "user", "content": f"my key is sk-proj-{keys['prompt']}, keep it"}]
    op_name = f"digest ?token={keys['operation']}"
    with nexus_otel.operation(op_name, correlation_id=f"Bearer {keys['correlation id']}"):
        client = groq.Groq(api_key=f"gsk_{keys['groq key']}", base_url=sim.groq_base_url,
                           max_retries=0)  # fmt: skip
        client.chat.completions.create(model="llama-3.3-70b-versatile", messages=messages)
        address = sim.base_url.removeprefix("http://")
        proxied = openai.OpenAI(
            api_key=f"sk-proj-{keys['openai key']}", max_retries=0,
            base_url=f"http://proxy:{keys['base url userinfo']}@{address}/openai/v1",
            default_query={"key": keys["base url query"]},
        )  # fmt: skip
        proxied.chat.completions.create(model="o4-mini", messages=messages)
        refused = openai.OpenAI(api_key=f"sk-proj-{keys['echoed key']}", max_retries=0,
                                base_url=f"{echoing.base_url}/v1")  # fmt: skip
        with pytest.raises(openai.AuthenticationError, match=keys["echoed key"]):
            refused.chat.completions.create(model="o4-mini", messages=messages)
        with pytest.raises(openai.RateLimitError):
            proxied.chat.completions.create(model="o4-mini", messages=messages,
                                            extra_headers={"x-sim-error": "429"})  # fmt: skip
        answer = httpx.post(
            f"{sim.gemini_base_url}/v1beta/models/gemini-2.5-flash:generateContent"
            f"?key=AIza{keys['raw REST ?key=']}",
            json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=20,
        )  # fmt: skip
        assert answer.status_code == 200


def test_every_placement_is_caught_by_the_shared_definition() -> None:
    """The same corpus, through the definition the instrumentation and the exporter share: a
    placement that leaks is named (the end-to-end tests above only say that one did)."""
    from exporter.ingest.normalize import to_llm_call
    from exporter.ingest.otlp import iter_raw_spans

    corpus: Corpus = build()
    leaked = []
    for raw, name in zip(iter_raw_spans(corpus.request), corpus.secrets, strict=True):
        call = to_llm_call(raw)
        assert call is not None, name
        if corpus.secrets[name] in repr(call):
            leaked.append(name)
    assert leaked == []


def test_a_rejection_never_quotes_a_secret_back(exporter: ExporterProcess) -> None:
    """Partial-success reasons quote the bad value, and senders (a collector) log them."""
    key = "sk-proj-" + marker()
    bad = new_span(llm_attributes(input_tokens=f"Bearer {key}"), name=f"chat ?key={key}")
    response = post(
        exporter.base_url, request([bad, new_span(llm_attributes())]).SerializeToString()
    )
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert b"is not a token count" in response.content
    assert key.encode() not in response.content and b"[REDACTED]" in response.content
    assert key not in exporter.log()
