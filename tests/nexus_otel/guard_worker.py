"""An app process for the budget guard tests: threads making calls through the real openai SDK
to the provider simulator, instrumented with the guard. Prints one JSON line of what happened.

    python -m tests.nexus_otel.guard_worker '<json config>'

Config: api_url, endpoint, base_url, address, service, model, threads, max_tokens, usage (the
x-sim-usage header), prompt, calls (per thread; 0: until blocked), guard, fail, hold (seconds
to sleep after the calls, for a test that kills the process then).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import openai

import nexus_otel


def main(config: dict[str, Any]) -> None:
    nexus_otel.instrument(
        config["service"],
        endpoint=config["endpoint"],
        providers={config["address"]: "openai"},
        spool=False,
        budget_guard=config["guard"],
        budget_fail=config.get("fail", "open"),
        api_url=config["api_url"],
    )
    client = openai.OpenAI(base_url=config["base_url"], api_key="sk-test-guard-0000", max_retries=0)
    sent, blocked, errors = [0], [], []
    lock = threading.Lock()

    def thread() -> None:
        made = 0
        while config["calls"] == 0 or made < config["calls"]:
            made += 1
            try:
                client.chat.completions.create(
                    model=config["model"],
                    messages=[{"role": "user", "content": config["prompt"]}],
                    max_tokens=config["max_tokens"],
                    extra_headers={"x-sim-usage": config["usage"]},
                )
            except nexus_otel.BudgetExceeded as exc:
                with lock:
                    blocked.append(
                        {
                            "budget": exc.budget,
                            "spend": str(exc.spend_usd),
                            "reserved": str(exc.reserved_usd),
                            "limit": str(exc.limit_usd),
                            "estimate": str(exc.estimate_usd),
                        }
                    )
                if config["calls"] == 0:
                    return
                continue
            except Exception as exc:  # reported, so the test names it
                with lock:
                    errors.append(repr(exc))
                return
            with lock:
                sent[0] += 1

    threads = [threading.Thread(target=thread) for _ in range(config["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"sent": sent[0], "blocked": blocked, "errors": errors}), flush=True)
    if config.get("hold"):
        time.sleep(config["hold"])  # killed meanwhile by the test
    nexus_otel.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
