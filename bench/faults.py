"""The fault-injection test (tests/endurance/test_faults.py) as a longer soak: more calls per
second and several cycles of SIGKILL + restart and a 30 s database outage, every batch sent
twice. It passes when every span is stored exactly once and the totals match to the micro-dollar."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from rich.console import Console

from bench.common import Result


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    cycles = 1 if args.quick else 3
    rate = 150 if args.quick else 400
    console.print(
        f"[bold]faults[/]: {cycles} cycles of SIGKILL + 30 s database outage at {rate} calls/s, "
        "every batch sent twice"
    )
    env = {
        **os.environ,
        "NEXUS_FAULT_CYCLES": str(cycles),
        "NEXUS_FAULT_RATE": str(rate),
        "NEXUS_FAULT_STEADY_SECONDS": "10" if not args.quick else "3",
    }
    started = time.monotonic()
    with console.status("fault-injection soak running"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "timeout=1200",
                "tests/endurance/test_faults.py",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    elapsed = time.monotonic() - started
    passed = result.returncode == 0
    if not passed:
        console.print(result.stdout[-3000:])
    return [
        Result(
            f"fault soak, {cycles} x (kill + outage), duplicates",
            "exactly once, totals exact" if passed else "FAILED (see above)",
            f"{elapsed:.0f} s, ~{rate * elapsed:,.0f} calls",
            1.0 if passed else 0.0,
            "every span once, cost exact",
            passed,
        )
    ]
