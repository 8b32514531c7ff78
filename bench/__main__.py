"""Runs every benchmark and prints each result next to its target."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from bench import ingest


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--spans", type=int, default=50_000, help="spans per ingest run")
    parser.add_argument("--batch", type=int, default=1000, help="spans per OTLP request")
    args = parser.parse_args()
    console = Console()
    results = ingest.run(console, spans=args.spans, batch=args.batch)
    table = Table(title="nexus-otel benchmarks")
    for column in ("benchmark", "result", "baseline", "ratio", "target", "ok"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.name, r.result, r.baseline, f"{r.ratio:.2f}", r.target, "yes" if r.ok else "NO"
        )
    console.print(table)


if __name__ == "__main__":
    main()
