"""What a provider's wire format tells the instrumentation: `_openai`, `_anthropic` and `_gemini`
each implement `WireFormat` as a module (module functions are read as the protocol's methods)."""

from __future__ import annotations

from typing import Any, Protocol

from nexus_otel._usage import RequestInfo, ResponseInfo


class WireFormat(Protocol):
    """One request and response format, e.g. OpenAI-compatible chat completions."""

    OPERATION: str  # `gen_ai.operation.name` of its calls
    DEFAULT_PROVIDER: str  # the provider of a call nothing else names (host, SDK, mapping)

    def matches(self, path: str) -> bool:
        """Whether a POST to `path` is a call in this format."""
        ...

    def request_info(self, path: str, body: dict[str, object]) -> RequestInfo: ...

    def read_json(self, body: object, info: ResponseInfo) -> None:
        """A complete (non-streamed) response body."""
        ...

    def new_stream_state(self) -> Any:
        """What a stream's events must share to be read (Anthropic's running usage), or None
        where each event stands alone; made once per stream reading."""
        ...

    def read_event(self, event: str | None, data: object, info: ResponseInfo, state: Any) -> None:
        """One server-sent event of a stream; `state` is what `new_stream_state()` made."""
        ...
