"""OpenAI-compatible embeddings (`POST .../embeddings`): the request's input and the reply's
usage (`prompt_tokens`; `total_tokens` is the same count, nothing is generated).

`input` is a string, a list of strings, a list of token ids or a list of lists of token ids.
Vectors (`data[].embedding`, floats or a base64 string with `encoding_format: base64`) are
never read: a base64 vector stays the undecoded string the JSON parser gives.
"""

from __future__ import annotations

from nexus_otel._embeddings import EMBEDDINGS, EmbeddingsRequest
from nexus_otel._usage import RequestInfo, ResponseInfo, TokenUsage, as_int, dig

OPERATION = EMBEDDINGS
DEFAULT_PROVIDER = "openai"


def matches(path: str) -> bool:
    path = path.rstrip("/")
    # Ollama's own `/api/embeddings` speaks another format (its OpenAI-compatible one is
    # `/v1/embeddings`), as its `/api/chat` is not read as chat completions either.
    return path.endswith("/embeddings") and not path.endswith("/api/embeddings")


def request_info(path: str, body: dict[str, object]) -> RequestInfo:
    model, given = body.get("model"), body.get("input")
    inputs = given if isinstance(given, list) else [given]
    texts: list[str] = []
    token_ids = 0
    if inputs and all(type(item) is int for item in inputs):
        token_ids = len(inputs)  # one input given as token ids
    else:
        for item in inputs:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                token_ids += sum(1 for token in item if type(token) is int)
    return EmbeddingsRequest(
        model=model if isinstance(model, str) else None,
        messages=given,  # recorded only with content capture on
        texts=tuple(texts),
        token_ids=token_ids,
    )


def read_json(body: object, info: ResponseInfo) -> None:
    """The reply: its model and usage; the vectors are skipped, not read."""
    if isinstance(body, dict):
        model, usage = body.get("model"), body.get("usage")
        if isinstance(model, str):
            info.model = model
        if isinstance(usage, dict):
            info.usage = TokenUsage(input_tokens=as_int(usage.get("prompt_tokens")))
        error = dig(body, "error", "message")
        if isinstance(error, str):
            info.error_message = error
    info.complete = True


def new_stream_state() -> None:
    return None  # embeddings are not streamed


def read_event(event: str | None, data: object, info: ResponseInfo, state: None = None) -> None:
    """Embeddings are never streamed; an event is read as a reply of its own."""
    read_json(data, info)
