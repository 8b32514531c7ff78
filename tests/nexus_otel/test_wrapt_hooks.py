"""The two places that read wrapt's `_self_wrapper` (the wrapper function a FunctionWrapper
holds; wrapt has no public accessor for it), held to wrapt's major version in pyproject.

- `_sender`: a request the httpx instrumentation's wrapper would only pass on (its HTTP span
  suppressed) goes straight to the transport under it, skipping that wrapper's work per call.
- `unwrap_all`: our wrapper is removed only when it is the outermost one.

Both fall back safely (the suppression key; leaving our inactive wrapper in place), so a wrapt
that changed would cost speed or tidiness, not spans: these tests say when that happens."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import wrapt
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from nexus_otel._transport import _sender, unwrap_all

ROOT = Path(__file__).resolve().parents[2]


def test_wrapt_is_held_below_its_next_major_version() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (wrapt_requirement,) = [d for d in dependencies if d.startswith("wrapt")]
    upper = wrapt_requirement.split("<")[1]
    assert int(wrapt.__version__.split(".")[0]) < int(upper), (wrapt.__version__, upper)


def test_the_httpx_instrumentations_wrapper_is_recognised_and_skipped() -> None:
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument()
    try:
        transport = httpx.HTTPTransport()
        wrapped = transport.handle_request  # bound through the instrumentation's wrapper
        call: Any = SimpleNamespace(settings=SimpleNamespace(http_spans=False))
        send, token = _sender(call, wrapped)
        assert token is None
        assert send == wrapped.__wrapped__
        assert send.__func__ is httpx.HTTPTransport.handle_request.__wrapped__
    finally:
        instrumentor.uninstrument()


def test_our_wrapper_is_removed_only_when_outermost() -> None:
    class Transport:
        def handle_request(self, request: object) -> object:
            return request

    original = Transport.__dict__["handle_request"]

    def ours(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    ours.__module__ = "nexus_otel._transport"  # as the wrappers `wrap_module` makes are
    wrapt.wrap_function_wrapper(Transport, "handle_request", ours)
    assert unwrap_all([(Transport, "handle_request")]) is True
    assert Transport.__dict__["handle_request"] is original

    wrapt.wrap_function_wrapper(Transport, "handle_request", ours)
    wrapt.wrap_function_wrapper(Transport, "handle_request", lambda w, i, a, k: w(*a, **k))
    assert unwrap_all([(Transport, "handle_request")]) is False
    assert isinstance(Transport.__dict__["handle_request"], wrapt.FunctionWrapper)
