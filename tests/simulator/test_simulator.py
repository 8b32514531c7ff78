"""The provider simulator, driven by the official SDKs: what they parse is what it says it sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import groq
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from exporter.simulator import ProviderSimulator, Usage

PROVIDERS = ["groq", "openai", "anthropic", "gemini"]
MODELS = {
    "groq": "llama-3.3-70b-versatile",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
}
PROMPT = [{"role": "user", "content": "Three surprising facts about coffee, one line each."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=7) as simulator:
        yield simulator


# -- what each SDK parsed, translated to OpenTelemetry semantics --------------------------------


def _from_openai(usage: Any) -> Usage:
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        cache_write_tokens=(getattr(prompt, "cache_write_tokens", None) or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
    )


def _from_anthropic(usage: Any) -> Usage:
    read, write = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    details = usage.output_tokens_details
    return Usage(
        input_tokens=usage.input_tokens + read + write,
        output_tokens=usage.output_tokens,
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=details.thinking_tokens if details else 0,
    )


def _from_gemini(usage: Any) -> Usage:
    thoughts = usage.thoughts_token_count or 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + (
        thoughts
    )
    return Usage(
        input_tokens=usage.prompt_token_count,
        output_tokens=usage.candidates_token_count + thoughts,
        cache_read_tokens=usage.cached_content_token_count or 0,
        reasoning_tokens=thoughts,
    )


# -- one call through each official SDK, sync or async, JSON or stream --------------------------


def _gemini_client(sim: ProviderSimulator, headers: dict[str, str]) -> genai.Client:
    options = types.HttpOptions(base_url=sim.gemini_base_url, api_version="v1beta", headers=headers)
    return genai.Client(api_key="test-key", http_options=options)


def call_sync(
    sim: ProviderSimulator, provider: str, stream: bool, headers: dict[str, str]
) -> Usage:
    model = MODELS[provider]
    if provider in ("groq", "openai"):
        client: Any = (
            groq.Groq(api_key="k", base_url=sim.groq_base_url, max_retries=0)
            if provider == "groq"
            else openai.OpenAI(api_key="k", base_url=sim.openai_base_url, max_retries=0)
        )
        if not stream:
            response = client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=400, extra_headers=headers
            )
            return _from_openai(response.usage)
        chunks = list(
            client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=400, stream=True, extra_headers=headers,
                extra_body={"stream_options": {"include_usage": True}},
            )
        )  # fmt: skip
        assert chunks[-1].choices == []
        return _from_openai(chunks[-1].usage)
    if provider == "anthropic":
        claude = anthropic.Anthropic(api_key="k", base_url=sim.anthropic_base_url, max_retries=0)
        kwargs: Any = {"model": model, "max_tokens": 400, "messages": PROMPT}
        if not stream:
            return _from_anthropic(claude.messages.create(**kwargs, extra_headers=headers).usage)
        with claude.messages.stream(**kwargs, extra_headers=headers) as events:
            return _from_anthropic(events.get_final_message().usage)
    gemini = _gemini_client(sim, headers)
    if not stream:
        return _from_gemini(
            gemini.models.generate_content(model=model, contents="hi").usage_metadata
        )
    last = list(gemini.models.generate_content_stream(model=model, contents="hi"))[-1]
    return _from_gemini(last.usage_metadata)


async def call_async(
    sim: ProviderSimulator, provider: str, stream: bool, headers: dict[str, str]
) -> Usage:
    model = MODELS[provider]
    if provider in ("groq", "openai"):
        client: Any = (
            groq.AsyncGroq(api_key="k", base_url=sim.groq_base_url, max_retries=0)
            if provider == "groq"
            else openai.AsyncOpenAI(api_key="k", base_url=sim.openai_base_url, max_retries=0)
        )
        if not stream:
            response = await client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=400, extra_headers=headers
            )
            return _from_openai(response.usage)
        response = await client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=400, stream=True, extra_headers=headers,
            extra_body={"stream_options": {"include_usage": True}},
        )  # fmt: skip
        chunks = [chunk async for chunk in response]
        return _from_openai(chunks[-1].usage)
    if provider == "anthropic":
        claude = anthropic.AsyncAnthropic(
            api_key="k", base_url=sim.anthropic_base_url, max_retries=0
        )
        kwargs: Any = {"model": model, "max_tokens": 400, "messages": PROMPT}
        if not stream:
            message = await claude.messages.create(**kwargs, extra_headers=headers)
            return _from_anthropic(message.usage)
        async with claude.messages.stream(**kwargs, extra_headers=headers) as events:
            return _from_anthropic((await events.get_final_message()).usage)
    gemini = _gemini_client(sim, headers).aio
    if not stream:
        response = await gemini.models.generate_content(model=model, contents="hi")
        return _from_gemini(response.usage_metadata)
    chunks = [
        c async for c in await gemini.models.generate_content_stream(model=model, contents="hi")
    ]
    return _from_gemini(chunks[-1].usage_metadata)


# -- wire fidelity: SDK-parsed usage == what the simulator reports ------------------------------

FULL = "input=1200,output=300,cache_read=1000,cache_write=0,reasoning=120"
EXPECTED_FULL = Usage(1200, 300, cache_read_tokens=1000, reasoning_tokens=120)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_sync_sdk_parses_exactly_the_usage_sent(
    sim: ProviderSimulator, provider: str, stream: bool
) -> None:
    parsed = call_sync(sim, provider, stream, {"x-sim-usage": FULL})
    recorded = sim.responses[-1]
    assert recorded.usage == EXPECTED_FULL == parsed
    assert (recorded.status, recorded.stream, recorded.interrupted) == (200, stream, False)
    assert recorded.model == MODELS[provider]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_async_sdk_parses_exactly_the_usage_sent(
    sim: ProviderSimulator, provider: str, stream: bool
) -> None:
    parsed = await call_async(sim, provider, stream, {"x-sim-usage": FULL})
    assert sim.responses[-1].usage == EXPECTED_FULL == parsed


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_realistic_usage_agrees_with_the_sdk(
    sim: ProviderSimulator, provider: str, stream: bool
) -> None:
    parsed = call_sync(sim, provider, stream, {})
    recorded = sim.responses[-1].usage
    assert recorded == parsed
    assert recorded is not None and recorded.input_tokens >= 5
    assert 1 <= recorded.output_tokens <= (400 if provider != "gemini" else 1024)


def test_cache_writes_reach_anthropic_and_openai_but_not_groq_or_gemini(
    sim: ProviderSimulator,
) -> None:
    headers = {"x-sim-usage": "input=3000,output=50,cache_write=2048"}
    assert call_sync(sim, "anthropic", True, headers).cache_write_tokens == 2048
    assert call_sync(sim, "openai", False, headers).cache_write_tokens == 2048
    # these wire formats cannot say it: the simulator records what was actually reported
    assert call_sync(sim, "groq", False, headers) == sim.responses[-1].usage
    assert sim.responses[-1].usage == Usage(3000, 50)
    assert call_sync(sim, "gemini", True, headers) == sim.responses[-1].usage == Usage(3000, 50)


# -- wire details the SDKs and instrumentations rely on -----------------------------------------


def _raw(sim: ProviderSimulator, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(sim.base_url + path, json=body, headers=headers, timeout=10)


def test_openai_stream_has_usage_chunk_only_when_asked_and_ends_with_done(
    sim: ProviderSimulator,
) -> None:
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "stream": True}
    plain = _raw(sim, "/openai/v1/chat/completions", body).text
    assert plain.endswith("data: [DONE]\n\n")
    assert '"usage"' not in plain and '"finish_reason":"stop"' in plain
    assert sim.responses[-1].usage is not None  # what it would have reported, in OTel terms
    body["stream_options"] = {"include_usage": True}
    asked = _raw(sim, "/openai/v1/chat/completions", body).text
    assert '"choices":[],"usage":{"prompt_tokens"' in asked
    assert asked.count('"object":"chat.completion.chunk"') >= 4


def test_groq_stream_reports_usage_in_x_groq_of_final_chunk(sim: ProviderSimulator) -> None:
    client = groq.Groq(api_key="k", base_url=sim.groq_base_url, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODELS["groq"], messages=PROMPT, stream=True,
            extra_headers={"x-sim-usage": "input=321,output=54"},
        )
    )  # fmt: skip
    assert chunks[0].x_groq is not None and chunks[0].x_groq.id.startswith("req_")
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert final.x_groq is not None and final.x_groq.usage is not None
    assert (final.x_groq.usage.prompt_tokens, final.x_groq.usage.completion_tokens) == (321, 54)
    assert all(chunk.usage is None for chunk in chunks)  # no include_usage: no usage chunk


def test_anthropic_stream_event_sequence_and_thinking_blocks(sim: ProviderSimulator) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=sim.anthropic_base_url, max_retries=0)
    with client.messages.stream(
        model=MODELS["anthropic"], max_tokens=2000, messages=PROMPT,
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers={"x-sim-usage": "input=500,output=800,reasoning=600"},
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.stop_reason == "end_turn" and message.id.startswith("msg_")
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 600


def test_anthropic_prompt_cache_is_written_once_then_read(sim: ProviderSimulator) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=sim.anthropic_base_url, max_retries=0)
    system = [{"type": "text", "text": "Brand voice guide. " * 400,
               "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    first = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system=system,
        messages=PROMPT,  # type: ignore[arg-type]
    )
    second = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system=system,
        messages=PROMPT,  # type: ignore[arg-type]
    )
    assert first.usage.cache_creation_input_tokens == 1900 == second.usage.cache_read_input_tokens
    assert first.usage.cache_read_input_tokens == 0 == second.usage.cache_creation_input_tokens
    short = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    uncached = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system=short,
        messages=PROMPT,  # type: ignore[arg-type]
    )
    assert uncached.usage.cache_creation_input_tokens == 0 == uncached.usage.cache_read_input_tokens


def test_gemini_stream_uses_alt_sse_and_running_totals(sim: ProviderSimulator) -> None:
    client = _gemini_client(sim, {"x-sim-usage": "input=900,output=400,reasoning=150"})
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True)
    )
    chunks = list(
        client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi", config=config)
    )
    recorded = sim.responses[-1]
    assert recorded.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert recorded.request_query == "alt=sse"
    assert chunks[0].candidates[0].content.parts[0].thought is True
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == sorted(counts) and counts[-1] == 250
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_gemini_is_also_served_under_v1(sim: ProviderSimulator) -> None:
    options = types.HttpOptions(base_url=sim.gemini_base_url)  # the SDK's default, /v1
    client = genai.Client(api_key="k", http_options=options)
    response = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert sim.responses[-1].path == "/v1/models/gemini-2.0-flash:generateContent"
    assert response.usage_metadata is not None and not response.usage_metadata.thoughts_token_count


# -- errors, interruptions, timeouts ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_errors_use_each_provider_error_body(sim: ProviderSimulator, status: int) -> None:
    headers = {"x-sim-error": str(status)}
    with pytest.raises(groq.APIStatusError) as groq_error:
        call_sync(sim, "groq", False, headers)
    assert groq_error.value.status_code == status
    if status == 429:
        assert groq_error.value.body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert groq_error.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.APIStatusError) as claude_error:
        call_sync(sim, "anthropic", True, headers)
    expected = {429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}[status]
    assert claude_error.value.body["error"]["type"] == expected  # type: ignore[index]
    request_id = claude_error.value.request_id
    assert request_id and request_id.startswith("req_011C")
    assert claude_error.value.body["request_id"] == request_id  # type: ignore[index]
    assert groq_error.value.response.headers["x-request-id"].startswith("req_")
    with pytest.raises(genai_errors.APIError) as gemini_error:
        call_sync(sim, "gemini", False, headers)
    assert gemini_error.value.code == status
    assert gemini_error.value.status == {
        429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}[status]  # fmt: skip
    assert [r.status for r in sim.responses[-3:]] == [status] * 3
    assert all(r.usage is None for r in sim.responses[-3:])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_interrupted_stream_cuts_the_connection_without_usage(
    sim: ProviderSimulator, provider: str
) -> None:
    cut = (httpx.RemoteProtocolError, httpx2.RemoteProtocolError)
    # The SDKs raise the cut itself or their own connection error caused by it (anthropic 2.17
    # wraps a failed body read in APIConnectionError).
    with pytest.raises((*cut, openai.APIConnectionError, anthropic.APIConnectionError)) as raised:
        call_sync(sim, provider, True, {"x-sim-error": "interrupt"})
    causes: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(e, cut) for e in causes), causes
    recorded = sim.responses[-1]
    assert (recorded.status, recorded.usage, recorded.interrupted) == (200, None, True)


def test_timeout_makes_the_sdk_time_out(sim: ProviderSimulator) -> None:
    client = openai.OpenAI(api_key="k", base_url=sim.openai_base_url, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, extra_headers={"x-sim-error": "timeout"}
        )


def test_latency_header_delays_the_first_byte(sim: ProviderSimulator) -> None:
    client = openai.OpenAI(api_key="k", base_url=sim.openai_base_url, max_retries=0, timeout=0.3)
    answered = len(sim.responses)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, extra_headers={"x-sim-latency": "1.5"}
        )
    fast = client.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, extra_headers={"x-sim-latency": "0"}
    )
    assert fast.choices[0].finish_reason in ("stop", "length")
    time.sleep(2)  # the abandoned request is not answered, so it never lands in `responses`
    assert sim.responses[-1].stream is False and len(sim.responses) == answered + 1


@pytest.mark.parametrize(
    ("header", "value", "needle"),
    [
        ("x-sim-usage", "input=10,output=5,cache_read=20", "cache_read + cache_write exceed input"),
        ("x-sim-usage", "input=10,output=5,reasoning=6", "reasoning exceeds output"),
        ("x-sim-usage", "inputs=10", "'inputs'"),
        ("x-sim-error", "418", "'418'"),
        ("x-sim-latency", "soon", "'soon'"),
    ],
)
def test_bad_control_headers_get_a_400_naming_the_value(
    sim: ProviderSimulator, header: str, value: str, needle: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as error:
        call_sync(sim, "anthropic", False, {header: value})
    assert needle in error.value.body["error"]["message"]  # type: ignore[index]
    assert sim.responses[-1].status == 400


def test_bad_request_body_gets_a_provider_400(sim: ProviderSimulator) -> None:
    response = _raw(sim, "/openai/v1/chat/completions", {"model": "gpt-4o-mini"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "messages" in response.json()["error"]["message"]


def test_same_seed_same_usage() -> None:
    def run() -> list[Usage | None]:
        with ProviderSimulator(seed=42) as simulator:
            for provider in PROVIDERS:
                call_sync(simulator, provider, True, {})
            return [r.usage for r in simulator.responses]

    first, second = run(), run()
    assert first == second and len(set(first)) == 4


def test_concurrent_async_calls_are_all_recorded() -> None:
    # its own simulator: answers the shared one still owes to timed-out clients cannot land here
    with ProviderSimulator(seed=3) as sim:

        async def many() -> list[Usage]:
            calls = [call_async(sim, p, s, {}) for p in PROVIDERS * 3 for s in (False, True)]
            return await asyncio.gather(*calls)

        parsed = asyncio.run(many())
        assert len(sim.responses) == 24
        reported = [r.usage for r in sim.responses]
        assert sorted(map(repr, parsed)) == sorted(map(repr, reported))
