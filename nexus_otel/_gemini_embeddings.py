"""Gemini embeddings: `models/{model}:embedContent` (one content) and `:batchEmbedContents`
(`requests[]`, what google-genai's `models.embed_content` sends to the Developer API).

The Developer API reports no token usage for embeddings, so input tokens are estimated from the
request's text (and the span says so in `nexus.usage.source`); a reply that does carry
`usageMetadata.promptTokenCount` (Vertex AI's `embedContent`) is read as reported. Vectors
(`embedding.values`, `embeddings[].values`) are never read.
"""

from __future__ import annotations

import re

from nexus_otel._embeddings import EMBEDDINGS, EmbeddingsRequest
from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage, as_int, dig, text_of

OPERATION = EMBEDDINGS
DEFAULT_PROVIDER = "gcp.gemini"
_PATH = re.compile(r"/models/(?P<model>[^/:]+):(?:embedContent|batchEmbedContents)$")


def matches(path: str) -> bool:
    return _PATH.search(path) is not None


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    found = _PATH.search(path)
    requests = body.get("requests")
    if isinstance(requests, list):  # batchEmbedContents
        contents = [dig(request, "content") for request in requests]
    else:  # embedContent
        contents = [body.get("content")]
    return EmbeddingsRequest(
        model=found.group("model") if found else None,
        messages=contents,  # recorded only with content capture on
        texts=tuple(_text(content) for content in contents),
    )


def _text(content: object) -> str:
    return text_of(dig(content, "parts"))  # the text parts; images and the like are not read


def read_json(body: object, info: ResponseInfo) -> None:
    """The reply: usage where it is reported; the vectors are skipped, not read."""
    if isinstance(body, dict):
        prompt_tokens = dig(body, "usageMetadata", "promptTokenCount")
        if prompt_tokens is not None:
            info.usage = TokenUsage(input_tokens=as_int(prompt_tokens))
        error = dig(body, "error", "message")
        if isinstance(error, str):
            info.error_message = error
    info.complete = True


def new_stream_state() -> None:
    return None  # embeddings are not streamed


def read_event(event: str | None, data: object, info: ResponseInfo, state: None = None) -> None:
    """Embeddings are never streamed; an event is read as a reply of its own."""
    read_json(data, info)
