"""Instrumentation overhead: the same SDK calls against the same local server (bench/streams.py,
provider wire formats), uninstrumented, with nexus-otel, and with the Anthropic SDK's own tracing
and OpenLLMetry's Groq instrumentation. Spans go to a no-op exporter, so only the instrumentation
is measured. For reference, a fourth configuration records one bare OpenTelemetry SDK span per
LLM request, with the attributes ours has and nothing else (no body read): what the SDK alone
adds, the floor for any instrumentation that records a span per call.

One process switches the configurations on and off in turn, 50 calls at a time, so a
busy machine slows every configuration alike; it runs again in a few rounds, and the medians of
all calls are compared. The server runs in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import wrapt
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.progress import Progress

from bench.common import Result

# vendor: Anthropic's own tracing + OpenLLMetry Groq; span: one bare SDK span per request
MODES = ("none", "nexus", "vendor", "span")
PLAIN = ("groq", "anthropic")
STREAMED = ("groq 1 MB stream", "anthropic 1 MB stream")
TARGET_ADDED_US = 100.0
TARGET_STREAM_PERCENT = 5.0
_PROMPT = [{"role": "user", "content": "Write one fact about coffee mornings."}]


# ---- the servers' process -------------------------------------------------------------------


def serve() -> None:
    """Starts the benchmark's provider server; prints its URL."""
    import uvicorn

    from bench import streams
    from tests.support import free_port

    port = free_port()
    config = uvicorn.Config(streams.app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.should_exit = True


# ---- the measuring process ------------------------------------------------------------------


SPANS = [0]  # spans the no-op exporter received: proof an instrumentation was on


def _tracer_provider() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            SPANS[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)  # where the Anthropic SDK's own tracing goes
    return provider


class BareSpans:
    """One SDK span per POST through httpx or httpx2, started before the request and ended when
    its headers arrive, with the attributes nexus-otel's span has on the benchmark's Groq call
    (11: the provider's own counts, no zero counts, no operation, no stream flag or status code
    on a plain call that succeeded)."""

    ATTRIBUTES = {
        "gen_ai.provider.name": "groq",
        "gen_ai.operation.name": "chat",
        "server.address": "127.0.0.1",
        "server.port": 8000,
        "gen_ai.request.model": "llama-3.3-70b-versatile",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.response.model": "llama-3.3-70b-versatile",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop",),
    }

    def __init__(self, provider: Any) -> None:
        self.tracer = provider.get_tracer("bench.bare_span")
        self.on = False

    def switch(self, on: bool) -> None:
        import httpx
        import httpx2

        if on == self.on:
            return
        for module in (httpx, httpx2):
            if on:
                wrapt.wrap_function_wrapper(module, "HTTPTransport.handle_request", self._wrapper)
            else:
                wrapper = module.HTTPTransport.__dict__["handle_request"]
                module.HTTPTransport.handle_request = wrapper.__wrapped__
        self.on = on

    def _wrapper(self, wrapped: Callable[..., Any], instance: Any, args: Any, kw: Any) -> Any:
        request = args[0] if args else kw["request"]
        if request.method != "POST":
            return wrapped(*args, **kw)
        started = time.time_ns()
        response = wrapped(*args, **kw)
        name = "chat llama-3.3-70b-versatile"
        span = self.tracer.start_span(
            name, None, SpanKind.CLIENT, self.ATTRIBUTES, start_time=started
        )
        span.end()
        return response


def _switch(mode: str, provider: Any, groq_instrumentor: Any, bare: BareSpans) -> None:
    """Turns on the instrumentation of `mode` and every other one off."""
    import nexus_otel

    if mode != "span":  # each off before the next goes on, so no wrapper sits on another
        bare.switch(False)
    if mode == "nexus":
        nexus_otel.instrument(service_name="bench", tracer_provider=provider)
    else:
        nexus_otel.uninstrument()
    if mode == "vendor" and not groq_instrumentor.is_instrumented_by_opentelemetry:
        groq_instrumentor.instrument(tracer_provider=provider)
    elif mode != "vendor" and groq_instrumentor.is_instrumented_by_opentelemetry:
        groq_instrumentor.uninstrument()
    if mode == "span":
        bare.switch(True)


_METADATA_ONLY: Any = {"traces": {"content_mode": "metadata_only"}}


def _operations(url: str, anthropic_tracing: bool) -> dict[str, Callable[[], Any]]:
    """Fresh clients, so an instrumentation that hooks client construction sees them."""
    import anthropic
    import groq

    groq_client = groq.Groq(api_key="gsk-bench", base_url=url, max_retries=0)
    claude = anthropic.Anthropic(
        api_key="sk-ant-bench",
        base_url=url,
        max_retries=0,
        # Metadata only, its default, said outright: no prompts or completions, as ours.
        open_telemetry=_METADATA_ONLY if anthropic_tracing else False,
    )
    groq_model, claude_model = "llama-3.3-70b-versatile", "claude-sonnet-4-5"

    def drain(chunks: Iterable[Any]) -> None:
        for _ in chunks:
            pass

    return {
        "groq": lambda: groq_client.chat.completions.create(
            model=groq_model, messages=_PROMPT, max_tokens=64
        ),
        "anthropic": lambda: claude.messages.create(
            model=claude_model, messages=_PROMPT, max_tokens=64
        ),
        "groq 1 MB stream": lambda: drain(
            groq_client.chat.completions.create(
                model=groq_model,
                messages=_PROMPT,
                stream=True,
                extra_body={"stream_options": {"include_usage": True}},
            )
        ),
        "anthropic 1 MB stream": lambda: drain(
            claude.messages.create(
                model=claude_model, messages=_PROMPT, max_tokens=300_000, stream=True
            )
        ),
    }


def worker(url: str, calls: int, stream_calls: int, block: int = 50) -> None:
    """Every configuration in turn, `block` calls at a time, in one process: a busy machine
    slows all of them alike. Prints nanoseconds per call and spans recorded, by configuration."""
    from opentelemetry.instrumentation.groq import GroqInstrumentor

    # Configured like ours: no prompts or completions on the span. OpenLLMetry records them by
    # default (it reads this at each call); ours never records content unless asked.
    os.environ["TRACELOOP_TRACE_CONTENT"] = "false"
    provider = _tracer_provider()
    groq_instrumentor = GroqInstrumentor()
    bare = BareSpans(provider)
    every = max(1, calls // stream_calls)
    timings: dict[str, dict[str, list[int]]] = {m: {} for m in MODES}
    spans = dict.fromkeys(MODES, 0)
    for index, first in enumerate(range(0, calls, block)):
        for mode in MODES[index % len(MODES) :] + MODES[: index % len(MODES)]:
            _switch(mode, provider, groq_instrumentor, bare)
            operations = _operations(url, anthropic_tracing=mode == "vendor")
            for name in PLAIN:  # connect, and warm whatever the instrumentation caches
                operations[name]()
            before = SPANS[0]
            for i in range(first, min(first + block, calls)):
                for name in PLAIN if i % every else tuple(operations):
                    started = time.perf_counter_ns()
                    operations[name]()
                    elapsed = time.perf_counter_ns() - started
                    timings[mode].setdefault(name, []).append(elapsed)
            spans[mode] += SPANS[0] - before
    _switch("none", provider, groq_instrumentor, bare)
    print(json.dumps({"timings": timings, "spans": spans}))


# ---- the benchmark --------------------------------------------------------------------------


def _start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.instrumentation", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())["url"]


def _run_worker(url: str, calls: int, stream_calls: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.instrumentation",
        "worker",
        "--url",
        url,
        "--calls",
        str(calls),
        "--stream-calls",
        str(stream_calls),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))


def measure(
    console: Console, rounds: int, calls: int, stream_calls: int
) -> dict[str, dict[str, float]]:
    """Median nanoseconds per call, by configuration and operation."""
    samples: dict[str, dict[str, list[int]]] = {m: {} for m in MODES}
    spans = dict.fromkeys(MODES, 0)
    server, url = _start_server()
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("instrumentation overhead", total=rounds)
            for _ in range(rounds):
                result = _run_worker(url, calls, stream_calls)
                for mode, operations in result["timings"].items():
                    for name, values in operations.items():
                        samples[mode].setdefault(name, []).extend(values)
                    spans[mode] += result["spans"][mode]
                progress.advance(task)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    for mode in MODES[1:]:  # at least one span per measured call, or it was off
        made = sum(len(v) for v in samples[mode].values())
        if spans[mode] < made:
            raise RuntimeError(f"{mode}: {spans[mode]} spans for {made} calls")
    return {m: {n: statistics.median(v) for n, v in ops.items()} for m, ops in samples.items()}


def _results(medians: dict[str, dict[str, float]]) -> list[Result]:
    none, ours, vendor = medians["none"], medians["nexus"], medians["vendor"]
    bare = medians["span"]
    vendor_name = {"groq": "OpenLLMetry Groq", "anthropic": "Anthropic SDK tracing"}
    results = []
    for name in PLAIN:
        added, theirs = (ours[name] - none[name]) / 1e3, (vendor[name] - none[name]) / 1e3
        results.append(
            Result(
                f"instrumentation, {name} call",
                f"+{added:.0f} µs/call",
                f"uninstrumented {none[name] / 1e3:.0f} µs",
                added / TARGET_ADDED_US,
                f"< {TARGET_ADDED_US:.0f} µs",
                added < TARGET_ADDED_US,
            )
        )
        results.append(_versus(name, added, theirs, "µs", vendor_name[name]))
        floor = (bare[name] - none[name]) / 1e3
        results.append(
            Result(
                f"  reference: one bare SDK span, {name}",
                f"+{floor:.0f} µs/call",
                f"ours +{added:.0f} µs",
                floor / TARGET_ADDED_US,
                "(what the OpenTelemetry SDK alone adds)",
                None,
            )
        )
    for name in STREAMED:
        added, theirs = (ours[name] / none[name] - 1) * 100, (vendor[name] / none[name] - 1) * 100
        results.append(
            Result(
                f"instrumentation, {name}",
                f"+{added:.1f} %",
                f"uninstrumented {none[name] / 1e6:.1f} ms",
                added / TARGET_STREAM_PERCENT,
                f"< {TARGET_STREAM_PERCENT:.0f} %",
                added < TARGET_STREAM_PERCENT,
            )
        )
        results.append(_versus(name, added, theirs, "%", vendor_name[name.split()[0]]))
    return results


def _versus(name: str, ours: float, theirs: float, unit: str, vendor: str) -> Result:
    return Result(
        f"  vs {vendor}, {name}",
        f"ours +{ours:.1f} {unit}",
        f"{vendor} +{theirs:.1f} {unit}",
        ours / theirs if theirs > 0 else float("nan"),  # no ratio to an overhead within noise
        f"less than {vendor}",
        ours < theirs,
    )


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    import nexus_otel

    if not hasattr(nexus_otel, "instrument"):
        console.print("[yellow]instrumentation: nexus_otel.instrument() does not exist yet[/]")
        return [Result("instrumentation overhead", "not measured", "-", 0.0, "-", False)]
    calls = args.calls or (300 if args.quick else 2000)
    rounds = 1 if args.quick else 3
    stream_calls = max(3, calls // 200)  # a 1 MB Groq stream alone takes about a second
    console.print(
        f"[bold]instrumentation[/]: {rounds} rounds x {len(MODES)} configurations, "
        f"{calls} calls of each plain kind and {stream_calls} 1 MB streams per configuration "
        "and round"
    )
    medians = measure(console, rounds, calls, stream_calls)
    for mode, ops in medians.items():
        line = ", ".join(f"{n} {v / 1e3:,.0f} µs" for n, v in ops.items())
        console.print(f"  {mode}: {line}")
    return _results(medians)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrumentation")
    parser.add_argument("role", choices=["serve", "worker"])
    parser.add_argument("--url")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--stream-calls", type=int, default=10)
    args = parser.parse_args()
    if args.role == "serve":
        serve()
    else:
        worker(args.url, args.calls, args.stream_calls)


if __name__ == "__main__":
    main()
