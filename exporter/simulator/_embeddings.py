"""Embeddings: OpenAI-compatible `POST .../embeddings` and Gemini `models/{model}:embedContent`
and `:batchEmbedContents`.

Vectors have DIMENSIONS values: each input's words hashed into buckets, then scaled to length 1,
so inputs sharing words are near one another (the demo deduplicates facts by them) and the same
input always gets the same vector. OpenAI reports usage (`prompt_tokens`, `total_tokens`, about
four characters a token, one a token id; `x-sim-usage` sets it, its output ignored); Gemini's
Developer API reports none, so its replies carry none, whatever `x-sim-usage` says.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator._model import BadRequest, Generator, Reply, Request, Usage

DIMENSIONS = 32  # small: tests and the demo need similar texts near, not a real model's 1536
GEMINI_METHODS = ("embedContent", "batchEmbedContents")
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
MAX_GEMINI_REQUESTS = 100  # Gemini's limit on the requests of one batchEmbedContents
_WORD = re.compile(r"\w+")


@dataclass
class EmbeddingsRequest(Request):
    """The inputs to embed: texts, or token ids written out as text (to hash them alike)."""

    inputs: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # per input: its ids, 0 for a text
    base64: bool = False  # OpenAI `encoding_format: base64`, what its SDK asks for by default
    method: str = ""  # Gemini's: one content or a batch


def parse_openai(body: dict[str, Any]) -> EmbeddingsRequest:
    model, given = body.get("model"), body.get("input")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required")
    if isinstance(given, str) or (isinstance(given, list) and given and _all_ints(given)):
        given = [given]
    if not isinstance(given, list) or not given or len(given) > MAX_INPUTS:
        raise BadRequest(f"'input' must be a string or a non-empty array of at most {MAX_INPUTS}")
    inputs, token_ids = [], []
    for item in given:
        if isinstance(item, str) and item:
            inputs.append(item)
            token_ids.append(0)
        elif isinstance(item, list) and item and _all_ints(item):
            inputs.append(" ".join(map(str, item)))
            token_ids.append(len(item))
        else:
            raise BadRequest("each input must be a non-empty string or array of token ids")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest(f"'encoding_format' {encoding!r}: expected 'float' or 'base64'")
    return _request(model, inputs, token_ids, base64=encoding == "base64")


def parse_gemini(body: dict[str, Any], model: str, method: str) -> EmbeddingsRequest:
    if method == "embedContent":
        contents = [body.get("content")]
    else:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise BadRequest("* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > MAX_GEMINI_REQUESTS:
            raise BadRequest(
                "* BatchEmbedContentsRequest.requests: at most "
                f"{MAX_GEMINI_REQUESTS} requests can be in one batch"
            )
        contents = [r.get("content") if isinstance(r, dict) else None for r in requests]
    texts = [_gemini_text(content) for content in contents]
    if not all(texts):
        raise BadRequest("* EmbedContentRequest.content: contents is not specified")
    return _request(model, texts, [0] * len(texts), method=method)


def _request(
    model: str, inputs: list[str], token_ids: list[int], **options: Any
) -> EmbeddingsRequest:
    chars = sum(len(text) for text in inputs)
    return EmbeddingsRequest(model, False, chars, len(inputs), inputs=inputs, token_ids=token_ids,
                             **options)  # fmt: skip


def _all_ints(items: list[Any]) -> bool:
    return all(type(item) is int for item in items)


def _gemini_text(content: object) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = [p.get("text") for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    return "".join(t for t in texts if isinstance(t, str))


def reply(gen: Generator, request: Request, given: Usage | None) -> Reply:
    """Input tokens as given, else about four characters a token (one per token id)."""
    assert isinstance(request, EmbeddingsRequest)
    if given is None:
        pairs = zip(request.inputs, request.token_ids, strict=True)
        given = Usage(sum(ids or max(1, len(text) // 4) for text, ids in pairs), 0)
    return Reply(request, Usage(given.input_tokens, 0), "")


def vector(text: str) -> list[float]:
    """The input's words hashed into DIMENSIONS buckets, scaled to length 1."""
    values = [0.0] * DIMENSIONS
    for word in _WORD.findall(text.lower()):
        values[zlib.crc32(word.encode()) % DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def openai_body(reply: Reply) -> dict[str, Any]:
    request = reply.request
    assert isinstance(request, EmbeddingsRequest)
    data = []
    for index, text in enumerate(request.inputs):
        values: Any = vector(text)
        if request.base64:  # little-endian float32, as OpenAI sends them
            values = base64.b64encode(struct.pack(f"<{DIMENSIONS}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": values})
    tokens = reply.usage.input_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": request.model, "usage": usage}


def gemini_body(reply: Reply) -> dict[str, Any]:
    request = reply.request
    assert isinstance(request, EmbeddingsRequest)
    if request.method == "embedContent":
        return {"embedding": {"values": vector(request.inputs[0])}}
    return {"embeddings": [{"values": vector(text)} for text in request.inputs]}
