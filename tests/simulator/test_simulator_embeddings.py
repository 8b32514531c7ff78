"""The simulator's embeddings endpoints, driven by the official SDKs and raw HTTP."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator

import groq
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from exporter.simulator import ProviderSimulator, Usage

DIMENSIONS = 32  # what the simulator promises: small fixed vectors
FACTS = ["Octopuses have three hearts.", "octopuses have THREE hearts", "Honey never spoils."]


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=5) as simulator:
        yield simulator


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors have length 1


def openai_client(sim: ProviderSimulator, base_url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=base_url or sim.openai_base_url, max_retries=0)


def test_openai_sdk_gets_vectors_and_the_usage_asked_for(sim: ProviderSimulator) -> None:
    response = openai_client(sim).embeddings.create(
        model="text-embedding-3-small", input=FACTS,
        extra_headers={"x-sim-usage": "input=17,output=5"},  # output: nothing is generated
    )  # fmt: skip
    assert [d.index for d in response.data] == [0, 1, 2]
    vectors = [d.embedding for d in response.data]
    assert all(len(v) == DIMENSIONS for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1, rel_tol=1e-5) for v in vectors)
    # The same words (whatever their case) are the same vector; other words are far.
    assert cosine(vectors[0], vectors[1]) == pytest.approx(1, abs=1e-5)
    assert cosine(vectors[0], vectors[2]) < 0.5
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (17, 17)
    assert response.model == "text-embedding-3-small"
    recorded = sim.responses[-1]
    assert (recorded.path, recorded.model, recorded.usage) == (
        "/openai/v1/embeddings", "text-embedding-3-small", Usage(17, 0))  # fmt: skip


def test_base64_vectors_are_little_endian_float32(sim: ProviderSimulator) -> None:
    client = openai_client(sim)
    floats = client.embeddings.create(model="m", input=FACTS[0], encoding_format="float")
    raw = client.embeddings.create(model="m", input=FACTS[0], encoding_format="base64")
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    decoded = list(struct.unpack(f"<{DIMENSIONS}f", base64.b64decode(encoded)))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)  # float32 rounding


def test_realistic_usage_counts_texts_and_token_ids(sim: ProviderSimulator) -> None:
    client = openai_client(sim)
    response = client.embeddings.create(model="m", input=[[1, 2, 3], [4, 5]])
    assert response.usage.prompt_tokens == 5  # one a token id
    response = client.embeddings.create(model="m", input="abcdefgh")
    assert response.usage.prompt_tokens == 2  # about four characters a token


def test_groq_style_and_v1_paths(sim: ProviderSimulator) -> None:
    groq_client = groq.Groq(api_key="k", base_url=sim.groq_base_url, max_retries=0)
    groq_client.embeddings.create(model="nomic-embed-text-v1_5", input=FACTS[0])
    assert sim.responses[-1].path == "/openai/v1/embeddings"
    openai_client(sim, sim.base_url + "/v1").embeddings.create(model="m", input=FACTS[0])
    assert sim.responses[-1].path == "/v1/embeddings"


@pytest.mark.parametrize("contents", [FACTS[0], FACTS], ids=["single", "batch"])
def test_gemini_sdk_gets_vectors_and_no_usage(sim: ProviderSimulator, contents: object) -> None:
    http = types.HttpOptions(base_url=sim.gemini_base_url, api_version="v1beta")
    client = genai.Client(api_key="k", http_options=http)
    result = client.models.embed_content(model="gemini-embedding-001", contents=contents)
    count = 1 if isinstance(contents, str) else len(FACTS)
    assert result.embeddings is not None and len(result.embeddings) == count
    assert all(len(e.values or []) == DIMENSIONS for e in result.embeddings)
    assert result.usage_metadata is None
    recorded = sim.responses[-1]
    assert recorded.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert (recorded.wire_format, recorded.usage) == ("gemini", None)


def test_gemini_embed_content_answers_one_embedding(sim: ProviderSimulator) -> None:
    url = sim.base_url + "/v1beta/models/gemini-embedding-001:embedContent"
    response = httpx.post(url, json={"content": {"parts": [{"text": FACTS[2]}]}})
    assert response.status_code == 200 and list(response.json()) == ["embedding"]
    assert len(response.json()["embedding"]["values"]) == DIMENSIONS


def test_errors_use_each_provider_error_body(sim: ProviderSimulator) -> None:
    with pytest.raises(openai.RateLimitError):
        openai_client(sim).embeddings.create(model="m", input="x",
                                             extra_headers={"x-sim-error": "429"})  # fmt: skip
    http = types.HttpOptions(base_url=sim.gemini_base_url, api_version="v1beta",
                             headers={"x-sim-error": "503"},
                             retry_options=types.HttpRetryOptions(attempts=1))  # fmt: skip
    client = genai.Client(api_key="k", http_options=http)
    with pytest.raises(genai_errors.ServerError) as error:
        client.models.embed_content(model="gemini-embedding-001", contents="x")
    assert error.value.status == "UNAVAILABLE"
    assert [(r.status, r.usage) for r in sim.responses[-2:]] == [(429, None), (503, None)]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/openai/v1/embeddings", {"input": "x"}, "'model' is required"),
        ("/openai/v1/embeddings", {"model": "m", "input": []}, "'input' must be"),
        ("/openai/v1/embeddings", {"model": "m", "input": [""]}, "each input must be"),
        ("/openai/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "int8"},
         "'encoding_format' 'int8'"),
        ("/v1beta/models/gemini-embedding-001:batchEmbedContents", {"requests": []},
         "requests is not specified"),
        ("/v1beta/models/gemini-embedding-001:embedContent", {"content": {"parts": []}},
         "content: contents is not specified"),
        ("/v1beta/models/gemini-embedding-001:batchEmbedContents",
         {"requests": [{"content": {"parts": [{"text": "x"}]}}] * 101},
         "at most 100 requests can be in one batch"),
        ("/openai/v1/embeddings", {"model": "m", "input": ["x"] * 2049}, "at most 2048"),
    ],
)  # fmt: skip
def test_bad_bodies_get_a_provider_400(
    sim: ProviderSimulator, path: str, body: dict[str, object], needle: str
) -> None:
    response = httpx.post(sim.base_url + path, json=body)
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
