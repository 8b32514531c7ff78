"""What embeddings calls share, whatever their wire format: the operation name and the request.

An embeddings reply is the input's vectors and, from most providers, the input's token count:
nothing is generated, so output is 0. The vectors are never read into a span (they are large
and say nothing about cost), nor is the input unless content capture is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nexus_otel._usage import RequestInfo

EMBEDDINGS = "embeddings"  # gen_ai.operation.name of embeddings calls (GenAI conventions)


@dataclass(slots=True)
class EmbeddingsRequest(RequestInfo):
    """A request's input as separate texts, and as token ids where the app sent ids: each
    input is embedded (and billed) on its own, so each is estimated on its own, without the
    chat format's per-message overhead."""

    texts: tuple[str, ...] = ()
    token_ids: int = 0  # inputs given as token ids are billed one token per id

    def estimated_input_tokens(self, estimate: Callable[[str], int]) -> int:
        return sum(estimate(text) for text in self.texts) + self.token_ids
