"""Runs every benchmark and prints each result next to its target.

`python -m bench` (or `make bench`) runs them all at full size; `--quick` shortens every one
(and the 5-minute memory soak to 30 s); `--only NAME ...` picks some.
"""

from __future__ import annotations

import argparse
import importlib
import platform
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from bench.common import Result
from exporter.demo.view import output_console

Runner = Callable[[Console, argparse.Namespace], list[Result]]


def _ingest(console: Console, args: argparse.Namespace) -> list[Result]:
    from bench import ingest

    return ingest.run(console, spans=args.spans, batch=args.batch, runs=args.runs or 5)


def _memory(console: Console, args: argparse.Namespace) -> list[Result]:
    from bench import memory

    return memory.run(
        console, seconds=args.soak_seconds, senders=args.senders, queue_max_rows=args.queue_rows
    )


def _optional(module: str) -> Runner:
    """A benchmark module with `run(console, args)`, looked up when it is run."""

    def runner(console: Console, args: argparse.Namespace) -> list[Result]:
        run: Runner = importlib.import_module(module).run
        return run(console, args)

    return runner


BENCHMARKS: dict[str, Runner] = {
    "ingest": _ingest,
    "instrumentation": _optional("bench.instrumentation"),
    "delivery": _optional("bench.delivery"),
    "api": _optional("bench.api"),
    "dashboards": _optional("bench.dashboards"),
    "page": _optional("bench.page"),
    "memory": _memory,
    "scrape": _optional("bench.scrape"),
    "faults": _optional("bench.faults"),
    "guard": _optional("bench.guard"),
    "reprice": _optional("bench.reprice"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run just these")
    parser.add_argument("--quick", action="store_true", help="shorter runs of every benchmark")
    parser.add_argument("--spans", type=int, default=None, help="spans per ingest run")
    parser.add_argument("--batch", type=int, default=1000, help="spans per OTLP request")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs of each side (ingest: 5, each run must pass)"
    )
    parser.add_argument("--soak-seconds", type=float, default=None, help="memory soak length")
    parser.add_argument("--senders", type=int, default=64, help="concurrent senders in the soak")
    parser.add_argument("--queue-rows", type=int, default=50_000, help="exporter queue bound")
    parser.add_argument("--calls", type=int, default=None, help="calls per instrumentation run")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=None, help="table sizes (api, dashboards)"
    )
    parser.add_argument(
        "--api-rows", type=int, nargs="+", default=None, help="api_calls sizes for the API only"
    )
    args = parser.parse_args(argv)
    if args.spans is None:
        args.spans = 50_000 if args.quick else 100_000
    if args.soak_seconds is None:
        args.soak_seconds = 30.0 if args.quick else 300.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = output_console()
    console.print(
        f"[dim]{platform.machine()}, {platform.processor() or 'cpu'}, Python "
        f"{platform.python_version()}; ratios are measured within one run[/]"
    )
    results: list[Result] = []
    for name in args.only or list(BENCHMARKS):
        try:
            results.extend(BENCHMARKS[name](console, args))
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("bench."):
                raise
            console.print(f"[yellow]{name}: no benchmark module {exc.name} in this tree[/]")
    table = Table(title="nexus-otel benchmarks")
    for column in ("benchmark", "result", "baseline", "ratio", "target", "ok"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, r.result, r.baseline, f"{r.ratio:.2f}", r.target, _verdict(r.ok))
    console.print(table)
    if any(r.ok is False for r in results):
        raise SystemExit(1)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"


if __name__ == "__main__":
    main()
