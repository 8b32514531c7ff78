"""CPU per plain call through the Groq and Anthropic SDKs, with each client's connection pool
answering from memory: no server, no network wait. A diagnostic for A/B work on the
instrumentation (its noise is a few µs, the full benchmark's ten or more), not a target:

    python -m bench.instrumentation_cpu [--rounds 40] [--block 100]

Prints, per operation, what nexus-otel and the bare SDK span of `bench.instrumentation` add per
call: the median over rounds of each round's difference to the uninstrumented block of the same
round (configurations in a shuffled order each round, in one process), about ±3 µs with 40
rounds; and each configuration's fastest block."""

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
GROQ_MODEL, CLAUDE_MODEL = "llama-3.3-70b-versatile", "claude-sonnet-4-5"


class MemoryPool:
    """Stands in for a transport's httpcore pool: reads the request, answers `body` as JSON."""

    def __init__(self, body: bytes) -> None:
        self.headers = [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]  # fmt: skip
        self.body = body

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        for _ in request.stream:  # type: ignore[union-attr]
            pass
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
    claude = anthropic.Anthropic(api_key="sk-ant-bench", base_url=url, max_retries=0,
                                 open_telemetry=False)  # fmt: skip
    claude._client._transport._pool = MemoryPool(anthropic_json(CLAUDE_MODEL))
    return {
        "groq": lambda: groq_client.chat.completions.create(
            model=GROQ_MODEL, messages=bench._PROMPT, max_tokens=64
        ),
        "anthropic": lambda: claude.messages.create(
            model=CLAUDE_MODEL, messages=bench._PROMPT, max_tokens=64
        ),
    }


def measure(rounds: int, block: int) -> dict[str, dict[str, list[float]]]:
    """µs per call of each block, by configuration and operation."""
    from opentelemetry.instrumentation.groq import GroqInstrumentor

    provider = bench._tracer_provider()
    groq_instrumentor, bare = GroqInstrumentor(), bench.BareSpans(provider)
    blocks: dict[str, dict[str, list[float]]] = {m: {n: [] for n in bench.PLAIN} for m in MODES}
    for _ in range(rounds):
        for mode in random.sample(MODES, len(MODES)):  # no configuration always runs first
            bench._switch(mode, provider, groq_instrumentor, bare)
            for name, call in _operations().items():
                for _ in range(5):  # warm whatever the configuration caches
                    call()
                started = time.perf_counter_ns()
                for _ in range(block):
                    call()
                blocks[mode][name].append((time.perf_counter_ns() - started) / block / 1e3)
    bench._switch("none", provider, groq_instrumentor, bare)
    return blocks


def _paired(blocks: list[float], baseline: list[float]) -> float:
    """The median of the rounds' differences: a round's drift moves both of its blocks."""
    return statistics.median(b - n for b, n in zip(blocks, baseline, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrumentation_cpu")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=100, help="calls per timed block")
    args = parser.parse_args()
    blocks = measure(args.rounds, args.block)
    for name in bench.PLAIN:
        added = "  ".join(
            f"{mode} {_paired(blocks[mode][name], blocks['none'][name]):+.1f} µs"
            for mode in MODES[1:]
        )
        fastest = "  ".join(f"{mode} {min(blocks[mode][name]):.0f}" for mode in MODES)
        print(f"{name}: added {added}  (fastest blocks: {fastest} µs)")


if __name__ == "__main__":
    main()
