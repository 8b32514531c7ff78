"""`operation()` as apps use it: one instance shared by threads and tasks, blocks left open,
generators decorated."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from exporter.simulator import ProviderSimulator
from tests.nexus_otel.clients import Call, run

Spans = Callable[..., InMemorySpanExporter]
USAGE = {"x-sim-usage": "input=900,output=250"}
SUMMARIZE = nexus_otel.operation("summarize", correlation_id="batch-7")  # as a module holds one


def test_one_instance_entered_by_interleaved_tasks(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    """Task A enters, task B enters, A leaves first: each leaves its own block."""
    memory = spans()

    async def task(entered: asyncio.Event, leave: asyncio.Event) -> nexus_otel.Operation:
        async with SUMMARIZE as op:
            entered.set()
            await leave.wait()
            await asyncio.to_thread(run, simulator, Call("groq", False, False, USAGE))
            assert nexus_otel.current_operation() is op
        assert nexus_otel.current_operation() is None
        return op

    async def main() -> list[nexus_otel.Operation]:
        a_in, a_out, b_in, b_out = (asyncio.Event() for _ in range(4))
        a = asyncio.create_task(task(a_in, a_out))
        await a_in.wait()
        b = asyncio.create_task(task(b_in, b_out))
        await b_in.wait()
        a_out.set()
        first = await a
        b_out.set()
        return [first, await b]

    first, second = asyncio.run(main())
    assert first is not second
    for op in (first, second):
        [call] = op.calls
        assert (call.operation, call.correlation_id, call.total_tokens) == (
            "summarize", "batch-7", 1150)  # fmt: skip
    assert len(memory.get_finished_spans()) == 2


def test_one_instance_entered_by_threads_at_once() -> None:
    both_inside = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def worker(leave_first: bool) -> None:
        try:
            with SUMMARIZE as op:
                both_inside.wait()
                if not leave_first:
                    both_inside.wait()  # the other thread has left its block by now
                assert nexus_otel.current_operation() is op
            if leave_first:
                both_inside.wait()
            assert nexus_otel.current_operation() is None
        except BaseException as error:  # the test reads it below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(first,)) for first in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_block_left_open_inside_does_not_keep_the_operation() -> None:
    """A generator suspended inside its own `with operation()` leaves that operation current in
    the consumer's context; the enclosing block still restores what was there before it."""

    def steps() -> Iterator[int]:
        with nexus_otel.operation("inner"):
            yield 1

    with SUMMARIZE as outer:
        suspended = steps()
        next(suspended)
        inner = nexus_otel.current_operation()
        assert inner is not None and inner.name == "inner" and inner.parent is outer
    assert nexus_otel.current_operation() is None


@pytest.mark.parametrize("is_async", [False, True], ids=["generator", "async_generator"])
def test_decorated_generators_tag_the_calls_their_body_makes(
    spans: Spans, simulator: ProviderSimulator, is_async: bool
) -> None:
    """A streaming endpoint is often a generator: its calls are its operation's, and the calls
    of the code reading it between two items are not."""
    spans()

    @nexus_otel.operation("chunks", correlation_id="req-5")
    def chunks() -> Iterator[nexus_otel.Operation | None]:
        run(simulator, Call("groq", False, False, USAGE))
        yield nexus_otel.current_operation()
        run(simulator, Call("openai", False, False, USAGE))
        yield nexus_otel.current_operation()

    @nexus_otel.operation("chunks", correlation_id="req-5")
    async def chunks_async() -> AsyncIterator[nexus_otel.Operation | None]:
        await asyncio.to_thread(run, simulator, Call("groq", False, False, USAGE))
        yield nexus_otel.current_operation()
        await asyncio.to_thread(run, simulator, Call("openai", False, False, USAGE))
        yield nexus_otel.current_operation()

    async def read_async() -> list[nexus_otel.Operation | None]:
        items = []
        async for item in chunks_async():
            await asyncio.to_thread(run, simulator, Call("anthropic", False, False, USAGE))
            items.append(item)
        return items

    with nexus_otel.operation("request") as outer:
        if is_async:
            items = asyncio.run(read_async())
        else:
            items = []
            for item in chunks():
                run(simulator, Call("anthropic", False, False, USAGE))  # the reader's own
                items.append(item)
        assert nexus_otel.current_operation() is outer
    first, second = items
    assert first is second and first is not None and first.parent is outer
    assert [(c.provider, c.operation, c.correlation_id) for c in first.calls] == [
        ("groq", "chunks", "req-5"), ("openai", "chunks", "req-5")]  # fmt: skip
    assert sorted((c.provider, c.operation) for c in outer.calls) == [
        ("anthropic", "request"), ("anthropic", "request"),
        ("groq", "chunks"), ("openai", "chunks")]  # fmt: skip


def test_a_decorated_generator_closed_early_or_thrown_into_runs_its_cleanup() -> None:
    seen: list[object] = []

    @nexus_otel.operation("steps")
    def steps() -> Iterator[int]:
        try:
            yield 1
            yield 2
        except KeyError as error:
            seen.append(("caught", str(error), nexus_otel.current_operation().name))  # type: ignore[union-attr]
            yield 3
        finally:
            seen.append(("finally", nexus_otel.current_operation().name))  # type: ignore[union-attr]

    closed = steps()
    assert next(closed) == 1
    closed.close()
    thrown = steps()
    assert next(thrown) == 1
    assert thrown.throw(KeyError("k")) == 3
    assert list(thrown) == []
    assert seen == [("finally", "steps"), ("caught", "'k'", "steps"), ("finally", "steps")]
    assert nexus_otel.current_operation() is None
