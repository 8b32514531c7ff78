"""`operation()`: tag the LLM calls made inside a block and report what they cost.

The active operations live in a ContextVar, like the OpenTelemetry context: asyncio tasks inherit
them, and so does a thread started with `contextvars.copy_context().run(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

from nexus_otel._secrets import scrub_text

_F = TypeVar("_F", bound=Callable[..., Any])
# The innermost active operation; the per-call path reads it with `.get()`, without a frame.
CURRENT_OPERATION: contextvars.ContextVar[Operation | None] = contextvars.ContextVar(
    "nexus_otel_operation", default=None
)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One LLM call, as `operation()` reports it (the original clients' `metrics`)."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None  # None when the model is unpriced
    duration_ms: float
    success: bool
    error_type: str | None
    usage_source: str  # response | tiktoken | chars
    operation: str | None
    correlation_id: str | None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Operation:
    """The handle `with operation(...) as op` gives: the calls made inside, and their totals.

    Calls made in nested operations count here too."""

    def __init__(self, name: str, correlation_id: str | None, parent: Operation | None) -> None:
        # Both are recorded on every call's span: an app's tag must not carry a credential there.
        self.name = scrub_text(name)
        self.correlation_id: str | None = (
            scrub_text(correlation_id)
            if correlation_id
            else (parent.correlation_id if parent else None)
        )
        self.parent = parent
        self._calls: list[CallRecord] = []
        # Re-entrant: a call whose body the garbage collector releases unread is finished (and
        # added here) by whatever thread the collection runs in, even while it copies `calls`.
        self._lock = threading.RLock()

    @property
    def calls(self) -> list[CallRecord]:
        with self._lock:
            return list(self._calls)

    @property
    def input_tokens(self) -> int:
        return sum(c.input_tokens for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)

    @property
    def total_tokens(self) -> int:
        return sum(c.total_tokens for c in self.calls)

    @property
    def cost_usd(self) -> Decimal | None:
        """Total cost; None when any call was unpriced (a partial sum would understate it)."""
        total = Decimal(0)
        for call in self.calls:
            if call.cost_usd is None:
                return None
            total += call.cost_usd
        return total

    @property
    def duration_ms(self) -> float:
        return sum(c.duration_ms for c in self.calls)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.calls)

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "duration_ms": self.duration_ms,
            "success": self.success,
        }

    def _add(self, record: CallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    def __repr__(self) -> str:
        return f"Operation({self.name!r}, correlation_id={self.correlation_id!r}, {self.metrics})"


class operation:  # lower case: used like a function, `with operation(...)`
    """Tags every LLM call inside with `nexus.operation` and `nexus.correlation_id`.

    A context manager (sync or async) yielding an `Operation`, or a decorator of sync and async
    functions and generators (a fresh `Operation` per invocation; a generator's is current while
    its body runs, not while the code reading it does)."""

    def __init__(self, name: str, *, correlation_id: str | None = None) -> None:
        # Checked here, where the app's line is in the traceback: a span drops an attribute of
        # another type with only a log line, and the calls would go untagged.
        if not isinstance(name, str):
            raise TypeError(f"operation name must be text, not {type(name).__name__}: {name!r}")
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise TypeError(
                "correlation_id must be text or None, not"
                f" {type(correlation_id).__name__}: {correlation_id!r} (pass str(...))"
            )
        self.name = name
        self.correlation_id = correlation_id
        # By handle: one instance (a module-level `SUMMARIZE = operation(...)`) may be entered
        # in several threads and tasks at once, each leaving its own block in its own context.
        self._tokens: dict[Operation, contextvars.Token[Operation | None]] = {}

    def __enter__(self) -> Operation:
        handle = Operation(self.name, self.correlation_id, CURRENT_OPERATION.get())
        self._tokens[handle] = CURRENT_OPERATION.set(handle)
        return handle

    def __exit__(self, *exc: object) -> None:
        # The handle this block set is the current one in its context, or one of its parents
        # when a block inside was left open (a generator suspended in its own `with`).
        handle = CURRENT_OPERATION.get()
        while handle is not None and handle not in self._tokens:
            handle = handle.parent
        if handle is not None:
            CURRENT_OPERATION.reset(self._tokens.pop(handle))

    async def __aenter__(self) -> Operation:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, function: _F) -> _F:
        name, correlation_id = self.name, self.correlation_id
        if inspect.isgeneratorfunction(function):
            return cast(_F, _generator(function, name, correlation_id))
        if inspect.isasyncgenfunction(function):
            return cast(_F, _async_generator(function, name, correlation_id))
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with operation(name, correlation_id=correlation_id):
                    return await function(*args, **kwargs)

            return cast(_F, run_async)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with operation(name, correlation_id=correlation_id):
                return function(*args, **kwargs)

        return cast(_F, run)


class _Steps:
    """One invocation of a decorated generator: its handle, current while its body runs (each
    step, made the first) and not while it waits at a `yield` (then the code reading it runs,
    in the same context, and its calls are its own)."""

    def __init__(self, name: str, correlation_id: str | None) -> None:
        self.name, self.correlation_id = name, correlation_id
        self.handle: Operation | None = None

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The handle current while the body runs one step (made at the first)."""
        if self.handle is None:
            self.handle = Operation(self.name, self.correlation_id, CURRENT_OPERATION.get())
        token = CURRENT_OPERATION.set(self.handle)
        try:
            yield
        finally:
            CURRENT_OPERATION.reset(token)


def _generator(function: Callable[..., Any], name: str, cid: str | None) -> Callable[..., Any]:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        generator, steps = function(*args, **kwargs), _Steps(name, cid)
        method, given = generator.send, None
        while True:
            try:
                with steps.current():
                    item = method(given)
            except StopIteration as stop:
                return stop.value
            try:
                given, method = (yield item), generator.send
            except GeneratorExit:
                with steps.current():
                    generator.close()
                raise
            except BaseException as error:  # thrown in by the reader: into the body
                given, method = error, generator.throw

    return run


def _async_generator(
    function: Callable[..., Any], name: str, cid: str | None
) -> Callable[..., Any]:
    @functools.wraps(function)
    async def run(*args: Any, **kwargs: Any) -> Any:
        generator, steps = function(*args, **kwargs), _Steps(name, cid)
        method, given = generator.asend, None
        while True:
            try:
                with steps.current():
                    item = await method(given)
            except StopAsyncIteration:
                return
            try:
                given, method = (yield item), generator.asend
            except GeneratorExit:
                with steps.current():
                    await generator.aclose()
                raise
            except BaseException as error:
                given, method = error, generator.athrow

    return run


def current_operation() -> Operation | None:
    return CURRENT_OPERATION.get()


def record_call(record: CallRecord, innermost: Operation | None) -> None:
    """Adds a finished call to the operation it was made in and every one enclosing it."""
    handle = innermost
    while handle is not None:
        handle._add(record)
        handle = handle.parent
