"""Wrapping httpx and httpx2 transports: one LLMCall per LLM request, its body read on the side.

`HTTPTransport.handle_request` and `AsyncHTTPTransport.handle_async_request` are wrapped (wrapt,
as opentelemetry-instrumentation-httpx does). While the request is sent, its byte stream is one
that yields the body unchanged and then prepares the call (reads the request, starts the span):
the server is at work on the reply by then, so that work costs the app no time. The response's
byte stream is replaced by one that yields every chunk unchanged, as soon as it arrives, and
copies it to the call's parser; the call ends when the SDK has read the body to the end, closed
it, or the read failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import wrapt

from nexus_otel._body import decoder
from nexus_otel._budget import BudgetExceeded, Guard, admit, admit_async
from nexus_otel._call import CallSettings, LLMCall
from nexus_otel._detect import Detector
from nexus_otel._internal import guarded, internal_error

_HTTPX_INSTRUMENTATION = "opentelemetry.instrumentation.httpx"


class Interceptor:
    """What the wrappers consult on each request; `enabled` turns them into pass-throughs."""

    def __init__(self, settings: CallSettings, providers: dict[str, str]) -> None:
        self.settings = settings
        self.detector = Detector(providers)
        self.enabled = True
        self.guard: Guard | None = None  # the budget guard, when on

    def admit(self, call: LLMCall) -> None:
        """Checks the call against the budgets before its request is sent; raises
        BudgetExceeded (the call then ends, as failed, before any byte is sent)."""
        guard = self.guard
        if guard is None:
            return
        try:
            admit(guard, call)
        except BudgetExceeded as exc:
            guarded(call.finish, exc)
            raise
        except Exception:
            internal_error(admit)

    async def admit_async(self, call: LLMCall) -> None:
        """`admit` for a call made in an event loop (a refill does not block the loop)."""
        guard = self.guard
        if guard is None:
            return
        try:
            await admit_async(guard, call)
        except BudgetExceeded as exc:
            guarded(call.finish, exc)
            raise
        except Exception:
            internal_error(admit_async)

    def begin(self, transport: Any, request: Any) -> LLMCall | None:
        if not self.enabled:
            return None
        target = self.detector.target(transport, request)
        if target is None:
            return None
        return LLMCall(target, request, self.settings)


def _sender(call: LLMCall, wrapped: Any) -> tuple[Callable[..., Any], object | None]:
    """What sends the call's request, and the token `call.activate()` gave, if it was needed.

    Without HTTP spans, a request met by the httpx instrumentation's own wrapper goes straight to
    the transport under it: that wrapper would only see its suppression key and call the
    transport itself, at the cost of its partial, its context lookup and our key's attach."""
    if not call.settings.http_spans:
        wrapper = getattr(wrapped, "_self_wrapper", None)
        function = getattr(wrapper, "func", wrapper)  # it wraps a functools.partial
        if getattr(function, "__module__", None) == _HTTPX_INSTRUMENTATION:
            return wrapped.__wrapped__, None
    return wrapped, call.activate()


def wrap_module(module: ModuleType, interceptor: Interceptor) -> list[tuple[Any, str]]:
    """Wraps the module's transports; returns what was wrapped, for `unwrap_all`."""
    sync_sent, async_sent = _request_stream_classes(module)
    sync_stream, async_stream = _stream_classes(module)
    decode = decoder(module)

    def handle_request(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        request = args[0] if args else kwargs["request"]
        try:
            call = interceptor.begin(instance, request)
        except Exception:
            internal_error(interceptor.begin)
            call = None
        if call is None:
            return wrapped(*args, **kwargs)
        interceptor.admit(call)
        send, token = _sender(call, wrapped)
        body = request.stream
        request.stream = sync_sent(body, call)
        try:
            try:
                response = send(*args, **kwargs)
            finally:
                request.stream = body
                if token is not None:
                    call.deactivate(token)
        except BaseException as exc:
            guarded(call.finish, exc)
            raise
        try:
            call.on_response(response.status_code, response.headers, decode)
        except Exception:
            internal_error(call.on_response)
        response.stream = sync_stream(response.stream, call)
        return response

    async def handle_async_request(
        wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        request = args[0] if args else kwargs["request"]
        try:
            call = interceptor.begin(instance, request)
        except Exception:
            internal_error(interceptor.begin)
            call = None
        if call is None:
            return await wrapped(*args, **kwargs)
        await interceptor.admit_async(call)
        send, token = _sender(call, wrapped)
        body = request.stream
        request.stream = async_sent(body, call)
        try:
            try:
                response = await send(*args, **kwargs)
            finally:
                request.stream = body
                if token is not None:
                    call.deactivate(token)
        except BaseException as exc:
            guarded(call.finish, exc)
            raise
        try:
            call.on_response(response.status_code, response.headers, decode)
        except Exception:
            internal_error(call.on_response)
        response.stream = async_stream(response.stream, call)
        return response

    wrapt.wrap_function_wrapper(module, "HTTPTransport.handle_request", handle_request)
    wrapt.wrap_function_wrapper(
        module, "AsyncHTTPTransport.handle_async_request", handle_async_request
    )
    return [
        (module.HTTPTransport, "handle_request"),
        (module.AsyncHTTPTransport, "handle_async_request"),
    ]


def unwrap_all(wrapped: list[tuple[Any, str]]) -> bool:
    """Removes our wrappers where they are outermost; False when another wrapper sits on top."""
    clean = True
    for owner, name in wrapped:
        current = owner.__dict__.get(name)
        wrapper = getattr(current, "_self_wrapper", None)
        if isinstance(current, wrapt.FunctionWrapper) and wrapper.__module__ == __name__:
            setattr(owner, name, current.__wrapped__)
        else:
            clean = False
    return clean


def _request_stream_classes(module: ModuleType) -> tuple[type, type]:
    """Request bodies sent unchanged; once the last chunk is sent, the call is prepared, while
    the server works on the reply (with HTTP/1.1 and a known length, the request is complete on
    the wire by then)."""

    class SentStream(module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, call: LLMCall) -> None:
            self._inner, self._call = inner, call

        def __iter__(self) -> Iterator[bytes]:
            yield from self._inner
            guarded(self._call.prepare)  # in flight: its frame costs the call no time

    class AsyncSentStream(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, call: LLMCall) -> None:
            self._inner, self._call = inner, call

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._inner:
                yield chunk
            guarded(self._call.prepare)

    return SentStream, AsyncSentStream


def _stream_classes(module: ModuleType) -> tuple[type, type]:
    """Byte streams subclassing the module's own bases (httpx checks them with isinstance)."""

    class TapStream(module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, call: LLMCall) -> None:
            self._inner, self._call = inner, call

        def __iter__(self) -> Iterator[bytes]:
            call = self._call
            try:
                for chunk in self._inner:
                    try:
                        call.on_chunk(chunk)
                    except Exception:
                        internal_error(call.on_chunk)
                    yield chunk
            except GeneratorExit:  # the reader stopped early: a partial body, not a failure
                guarded(call.finish)
                raise
            except BaseException as exc:
                guarded(call.finish, exc)
                raise
            try:
                call.finish()
            except Exception:
                internal_error(call.finish)

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                try:
                    self._call.finish()
                except Exception:
                    internal_error(self._call.finish)

        __del__ = _finish_dropped

    class AsyncTapStream(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, call: LLMCall) -> None:
            self._inner, self._call = inner, call

        async def __aiter__(self) -> AsyncIterator[bytes]:
            call = self._call
            try:
                async for chunk in self._inner:
                    try:
                        call.on_chunk(chunk)
                    except Exception:
                        internal_error(call.on_chunk)
                    yield chunk
            except GeneratorExit:
                guarded(call.finish)
                raise
            except BaseException as exc:
                guarded(call.finish, exc)
                raise
            try:
                call.finish()
            except Exception:
                internal_error(call.finish)

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                try:
                    self._call.finish()
                except Exception:
                    internal_error(self._call.finish)

        __del__ = _finish_dropped

    return TapStream, AsyncTapStream


def _finish_dropped(stream: Any) -> None:
    """A response body let go of without being read to the end or closed (a stream the app
    never iterated, dropped when an exception left the block that made it): the request was
    sent, and billed, so the call ends as one closed early. A body read or closed was finished
    already: this returns at the call's first check."""
    call = getattr(stream, "_call", None)  # absent when its __init__ never ran
    if call is not None:
        guarded(call.finish)
