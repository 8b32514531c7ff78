"""Instrumentation overhead: the same SDK calls against the same local server (bench/streams.py,
provider wire formats), uninstrumented, with nexus-otel, and with the Anthropic SDK's own tracing
and OpenLLMetry's Groq instrumentation. Spans go to a no-op exporter, so only the instrumentation
is measured.

Each configuration runs in its own process (instrumentation patches globally); configurations
are interleaved in rounds, with calls of every kind interleaved inside each process, and the
medians of all calls are compared. The servers run in a separate process.
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

from rich.console import Console
from rich.progress import Progress

from bench.common import Result

MODES = ("none", "nexus", "vendor")  # vendor: Anthropic's own tracing + OpenLLMetry Groq
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
    url = f"http://127.0.0.1:{port}"
    print(json.dumps({"sim": url, "stream": url}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.should_exit = True


# ---- one configuration's process ------------------------------------------------------------


SPANS = [0]  # spans the no-op exporter received: proof the instrumentation was on


def _tracing(mode: str) -> None:
    if mode == "none":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            SPANS[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    if mode == "nexus":
        import nexus_otel

        nexus_otel.instrument(service_name="bench", tracer_provider=provider)
    else:
        from opentelemetry.instrumentation.groq import GroqInstrumentor

        GroqInstrumentor().instrument(tracer_provider=provider)


def _operations(sim: str, stream: str) -> dict[str, Callable[[], Any]]:
    import anthropic
    import groq

    groq_sim = groq.Groq(api_key="gsk-bench", base_url=sim, max_retries=0)
    groq_long = groq.Groq(api_key="gsk-bench", base_url=stream, max_retries=0)
    claude_sim = anthropic.Anthropic(api_key="sk-ant-bench", base_url=sim, max_retries=0)
    claude_long = anthropic.Anthropic(api_key="sk-ant-bench", base_url=stream, max_retries=0)
    groq_model, claude_model = "llama-3.3-70b-versatile", "claude-sonnet-4-5"

    def drain(chunks: Iterable[Any]) -> None:
        for _ in chunks:
            pass

    return {
        "groq": lambda: groq_sim.chat.completions.create(
            model=groq_model, messages=_PROMPT, max_tokens=64
        ),
        "anthropic": lambda: claude_sim.messages.create(
            model=claude_model, messages=_PROMPT, max_tokens=64
        ),
        "groq 1 MB stream": lambda: drain(
            groq_long.chat.completions.create(
                model=groq_model,
                messages=_PROMPT,
                stream=True,
                extra_body={"stream_options": {"include_usage": True}},
            )
        ),
        "anthropic 1 MB stream": lambda: drain(
            claude_long.messages.create(
                model=claude_model, messages=_PROMPT, max_tokens=300_000, stream=True
            )
        ),
    }


def worker(mode: str, sim: str, stream: str, calls: int, stream_calls: int) -> None:
    _tracing(mode)
    operations = _operations(sim, stream)
    timings: dict[str, list[int]] = {name: [] for name in operations}
    for call in operations.values():  # warm-up: connections, imports, caches
        for _ in range(5):
            call()
    for i in range(calls):
        for name in PLAIN if i % max(1, calls // stream_calls) else tuple(operations):
            started = time.perf_counter_ns()
            operations[name]()
            timings[name].append(time.perf_counter_ns() - started)
    print(json.dumps({"timings": timings, "spans": SPANS[0]}))


# ---- the benchmark --------------------------------------------------------------------------


def _start_servers() -> tuple[subprocess.Popen[str], str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.instrumentation", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    urls = json.loads(process.stdout.readline())
    return process, urls["sim"], urls["stream"]


def _run_worker(
    mode: str, sim: str, stream: str, calls: int, stream_calls: int
) -> tuple[dict[str, list[int]], int]:
    """Per-call nanoseconds by operation, and how many spans the configuration recorded."""
    env = {**os.environ, "ANTHROPIC_OPEN_TELEMETRY": "true" if mode == "vendor" else "false"}
    command = [
        sys.executable, "-m", "bench.instrumentation", "worker", "--mode", mode,
        "--sim", sim, "--stream", stream, "--calls", str(calls),
        "--stream-calls", str(stream_calls),
    ]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result = json.loads(output.stdout.strip().splitlines()[-1])
    return result["timings"], result["spans"]


def measure(
    console: Console, rounds: int, calls: int, stream_calls: int
) -> dict[str, dict[str, float]]:
    """Median nanoseconds per call, by mode and operation."""
    samples: dict[str, dict[str, list[int]]] = {m: {} for m in MODES}
    calls_made = {m: 0 for m in MODES}
    spans = {m: 0 for m in MODES}
    server, sim, stream = _start_servers()
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("instrumentation overhead", total=rounds * len(MODES))
            for r in range(rounds):
                order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
                for mode in order:
                    timings, recorded = _run_worker(mode, sim, stream, calls, stream_calls)
                    for name, values in timings.items():
                        samples[mode].setdefault(name, []).extend(values)
                    calls_made[mode] += sum(len(v) for v in timings.values())
                    spans[mode] += recorded
                    progress.advance(task)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    for mode in ("nexus", "vendor"):  # measured calls alone; warm-up calls add spans too
        if spans[mode] < calls_made[mode]:
            raise RuntimeError(f"{mode}: {spans[mode]} spans for {calls_made[mode]} calls")
    return {m: {n: statistics.median(v) for n, v in ops.items()} for m, ops in samples.items()}


def _results(medians: dict[str, dict[str, float]]) -> list[Result]:
    none, ours, vendor = medians["none"], medians["nexus"], medians["vendor"]
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
    rounds = 2 if args.quick else 5
    stream_calls = max(3, calls // 200)  # a 1 MB Groq stream alone takes about a second
    console.print(
        f"[bold]instrumentation[/]: {rounds} rounds x {len(MODES)} configurations, "
        f"{calls} calls of each plain kind and {stream_calls} streams per process"
    )
    medians = measure(console, rounds, calls, stream_calls)
    for mode, ops in medians.items():
        line = ", ".join(f"{n} {v / 1e3:,.0f} µs" for n, v in ops.items())
        console.print(f"  {mode}: {line}")
    return _results(medians)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrumentation")
    parser.add_argument("role", choices=["serve", "worker"])
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--sim")
    parser.add_argument("--stream")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--stream-calls", type=int, default=20)
    args = parser.parse_args()
    if args.role == "serve":
        serve()
    else:
        worker(args.mode, args.sim, args.stream, args.calls, args.stream_calls)


if __name__ == "__main__":
    main()
