"""Which provider and wire format an HTTP request speaks, and what of it is safe to record.

Provider, in order: the `instrument(providers={"host:port": "groq"})` mapping (the app knows
what its gateways serve, whichever SDK it calls them with); the provider's own host; what the
official SDK says about itself (User-Agent `Groq/Python` or `AsyncGroq/Python`, `OpenAI/Python`,
`AzureOpenAI/Python`, `Anthropic/Python`, `google-genai-sdk/...`, else an `anthropic-version`
header or `x-goog-api-client: google-genai-sdk/...`); and last the wire format's own provider.
The wire format comes from the path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from nexus_otel import (
    _anthropic,
    _gemini,
    _gemini_embeddings,
    _openai,
    _openai_embeddings,
    _openai_responses,
)
from nexus_otel import attributes as a
from nexus_otel._llm_providers import normalize_provider, provider_from_host
from nexus_otel._wire import WireFormat


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    wire: WireFormat  # _openai, _anthropic or _gemini
    host: str
    port: int | None
    path: str  # remembered per path, so the request's path is read once a call
    # The span attributes every call to this target has, made once; copied, never changed.
    attributes: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.attributes[a.GEN_AI_PROVIDER_NAME] = self.provider
        self.attributes[a.GEN_AI_OPERATION_NAME] = self.wire.OPERATION
        self.attributes[a.SERVER_ADDRESS] = self.host
        if self.port is not None:
            self.attributes[a.SERVER_PORT] = self.port


WIRE_FORMATS: tuple[WireFormat, ...] = (_openai, _anthropic, _gemini, _openai_responses)
WIRE_FORMATS += (_openai_embeddings, _gemini_embeddings)
# The User-Agent's first word, read with one header lookup; the other headers are the fallback.
_SDK_AGENTS = {
    "Groq": "groq",
    "OpenAI": "openai",
    "AzureOpenAI": "azure.ai.openai",
    "Anthropic": "anthropic",
    "google-genai-sdk": "gcp.gemini",
}
_UNSEEN = object()
_REMEMBERED = 1024  # servers and paths per client: an app calls few; bounded all the same


class Detector:
    """`detect`, remembered per transport (one SDK client, or one httpx client an app shares) and
    server and path: an LLM call's request is read once, not on every call. Within a transport,
    the first request to a server and path decides its provider."""

    def __init__(self, providers: dict[str, str]) -> None:
        # Stored as the exporter stores them: `together` is recorded as `together_ai`.
        self.providers = {k: normalize_provider(v) for k, v in providers.items()}
        self._seen: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Target | None]] = (
            weakref.WeakKeyDictionary()
        )

    def target(self, transport: Any, request: Any) -> Target | None:
        if request.method != "POST":
            return None
        url = request.url
        path = url.path
        key = (url.host, url.port, path)
        seen = self._seen.get(transport)
        if seen is None:
            seen = self._seen.setdefault(transport, {})
        target = seen.get(key, _UNSEEN)
        if target is _UNSEEN:
            target = detect(request, self.providers, path)
            if len(seen) < _REMEMBERED:
                seen[key] = target
        return target  # type: ignore[return-value]


def wire_format(path: str) -> WireFormat | None:
    return next((w for w in WIRE_FORMATS if w.matches(path)), None)


def detect(request: Any, providers: dict[str, str], path: str | None = None) -> Target | None:
    """The LLM call `request` (an httpx or httpx2 Request) makes, or None for any other request.
    `path`: the URL's path, when the caller has read it already."""
    if request.method != "POST":
        return None
    url = request.url
    path = url.path if path is None else path
    wire = wire_format(path)
    if wire is None:
        return None
    host, port = url.host, url.port
    provider = (
        providers.get(f"{host}:{port}")
        or providers.get(host)
        or provider_from_host(host, path)
        or _from_sdk_headers(request.headers)
        or wire.DEFAULT_PROVIDER
    )
    return Target(provider, wire, host, port, path)


def _from_sdk_headers(headers: Any) -> str | None:
    sdk = headers.get("user-agent", "").partition("/")[0].removeprefix("Async")  # AsyncGroq/Python
    if sdk in _SDK_AGENTS:
        return _SDK_AGENTS[sdk]
    if "anthropic-version" in headers:
        return "anthropic"
    if "google-genai-sdk/" in headers.get("x-goog-api-client", ""):
        return "gcp.gemini"
    return None
