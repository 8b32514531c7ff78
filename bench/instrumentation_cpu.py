"""CPU per plain call through the Groq and Anthropic SDKs, with each client's connection pool
answering from memory: no server, no network wait. A diagnostic for A/B work on the
instrumentation (its noise is a few µs, the full benchmark's ten or more), not a target:

    python -m bench.instrumentation_cpu [--rounds 40] [--block 100]
    python -m bench.instrumentation_cpu --bytecodes [--top 30]

Prints, per operation, what nexus-otel and the bare SDK span of `bench.instrumentation` add per
call on the call's critical path: the median over rounds of each round's difference to the
uninstrumented block of the same round (configurations in a shuffled order each round, in one
process), about ±3 µs with 40 rounds; and each configuration's fastest block. What runs while
the request's body is sent (nexus-otel reads the request and starts its span then, while a real
server would be working) is timed apart and left out, as the server's time would hide it; it is
printed beside.

`--bytecodes` counts, for one call of each kind, the Python bytecodes run on the critical path
(with `sys.settrace`): a count that the machine's load does not move, for A/B work on a busy
machine; `--top` lists where the added ones run."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpcore

from bench import instrumentation as bench
from bench.streams import anthropic_json, openai_json

MODES = ("none", "nexus", "span")
IN_FLIGHT = [0]  # ns spent sending request bodies, and what runs once they are sent
Blocks = dict[str, dict[str, list[float]]]
GROQ_MODEL, CLAUDE_MODEL = "llama-3.3-70b-versatile", "claude-sonnet-4-5"


class MemoryPool:
    """Stands in for a transport's httpcore pool: reads the request, answers `body` as JSON."""

    def __init__(self, body: bytes) -> None:
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        self.body = body

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        started = time.perf_counter_ns()
        for _ in request.stream:  # type: ignore[union-attr]
            pass
        IN_FLIGHT[0] += time.perf_counter_ns() - started  # a server would be working meanwhile
        return httpcore.Response(200, headers=self.headers, content=self.body)

    def close(self) -> None:
        pass


def _operations() -> dict[str, Callable[[], Any]]:
    """Fresh clients (an instrumentation may hook their construction) on in-memory pools."""
    import anthropic
    import groq

    url = "http://127.0.0.1:9"  # never connected to
    groq_client = groq.Groq(api_key="gsk-bench", base_url=url, max_retries=0)
    groq_client._client._transport._pool = MemoryPool(openai_json(GROQ_MODEL))
    claude = anthropic.Anthropic(
        api_key="sk-ant-bench", base_url=url, max_retries=0, open_telemetry=False
    )
    claude._client._transport._pool = MemoryPool(anthropic_json(CLAUDE_MODEL))
    return {
        "groq": lambda: groq_client.chat.completions.create(
            model=GROQ_MODEL, messages=bench._PROMPT, max_tokens=64
        ),
        "anthropic": lambda: claude.messages.create(
            model=CLAUDE_MODEL, messages=bench._PROMPT, max_tokens=64
        ),
    }


def measure(rounds: int, block: int) -> tuple[Blocks, Blocks]:
    """µs per call of each block on the critical path, and µs in flight, by configuration and
    operation."""
    from opentelemetry.instrumentation.groq import GroqInstrumentor

    provider = bench._tracer_provider()
    groq_instrumentor, bare = GroqInstrumentor(), bench.BareSpans(provider)
    blocks: Blocks = {m: {n: [] for n in bench.PLAIN} for m in MODES}
    in_flight: Blocks = {m: {n: [] for n in bench.PLAIN} for m in MODES}
    for _ in range(rounds):
        for mode in random.sample(MODES, len(MODES)):  # no configuration always runs first
            bench._switch(mode, provider, groq_instrumentor, bare)
            for name, call in _operations().items():
                for _ in range(5):  # warm whatever the configuration caches
                    call()
                IN_FLIGHT[0] = 0
                started = time.perf_counter_ns()
                for _ in range(block):
                    call()
                elapsed = time.perf_counter_ns() - started - IN_FLIGHT[0]
                blocks[mode][name].append(elapsed / block / 1e3)
                in_flight[mode][name].append(IN_FLIGHT[0] / block / 1e3)
    bench._switch("none", provider, groq_instrumentor, bare)
    return blocks, in_flight


def _paired(blocks: list[float], baseline: list[float]) -> float:
    """The median of the rounds' differences: a round's drift moves both of its blocks."""
    return statistics.median(b - n for b, n in zip(blocks, baseline, strict=True))


def count_bytecodes(top: int) -> None:
    """Bytecodes of one call of each kind on the critical path, by configuration."""
    import collections
    import sys

    import httpx
    from opentelemetry.instrumentation.groq import GroqInstrumentor

    from nexus_otel import _transport
    from nexus_otel._call import LLMCall

    # In flight: what `prepare` runs once the request stream has sent the body (a call of it
    # elsewhere, which returns at once, is on the critical path).
    prepare_code = LLMCall.prepare.__code__
    sent_code = _transport._request_stream_classes(httpx)[0].__iter__.__code__
    provider = bench._tracer_provider()
    groq_instrumentor, bare = GroqInstrumentor(), bench.BareSpans(provider)

    def sent(frame: Any) -> bool:
        preparing = False
        while frame is not None:
            preparing = preparing or frame.f_code is prepare_code
            if frame.f_code is sent_code:
                return preparing
            frame = frame.f_back
        return False

    for name in bench.PLAIN:
        counts: dict[str, collections.Counter[str]] = {}
        for mode in MODES:
            bench._switch(mode, provider, groq_instrumentor, bare)
            call = _operations()[name]
            for _ in range(5):
                call()
            counted: collections.Counter[str] = collections.Counter()

            def trace(frame: Any, event: str, arg: Any) -> Any:
                frame.f_trace_opcodes = True
                if event == "opcode":
                    where = "(in flight)" if sent(frame) else _where(frame.f_code)
                    counted[where] += 1  # noqa: B023 - traced while this loop step runs
                return trace

            sys.settrace(trace)
            call()
            sys.settrace(None)
            counts[mode] = counted
        bench._switch("none", provider, groq_instrumentor, bare)
        _print_counts(name, counts, top)


def _where(code: Any) -> str:
    path = code.co_filename.split("site-packages/")[-1]
    return f"{path.rsplit('/main/', 1)[-1]}:{code.co_name}"


def _print_counts(name: str, counts: dict[str, Any], top: int) -> None:
    base = sum(v for k, v in counts["none"].items() if k != "(in flight)")
    for mode in MODES[1:]:
        counted = counts[mode]
        in_flight = counted.pop("(in flight)", 0)
        print(
            f"{name}, {mode}: +{sum(counted.values()) - base:,} bytecodes on the critical "
            f"path ({base:,} uninstrumented), {in_flight:,} in flight"
        )
        added = counted.copy()
        added.subtract(counts["none"])
        for where, count in added.most_common(top):
            if count > 0:
                print(f"  {count:6,}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrumentation_cpu")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=100, help="calls per timed block")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes instead")
    parser.add_argument("--top", type=int, default=0, help="with --bytecodes: where, at most N")
    args = parser.parse_args()
    if args.bytecodes:
        count_bytecodes(args.top)
        return
    blocks, in_flight = measure(args.rounds, args.block)
    for name in bench.PLAIN:
        added = "  ".join(
            f"{mode} {_paired(blocks[mode][name], blocks['none'][name]):+.1f} µs"
            for mode in MODES[1:]
        )
        fastest = "  ".join(f"{mode} {min(blocks[mode][name]):.0f}" for mode in MODES)
        sent = statistics.median(in_flight["nexus"][name])
        print(
            f"{name}: added {added}  (fastest blocks: {fastest} µs; nexus in flight {sent:.0f} µs)"
        )


if __name__ == "__main__":
    main()
