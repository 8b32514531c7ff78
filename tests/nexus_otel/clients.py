"""The official SDKs pointed at the provider simulator: one call, sync or async, JSON or stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import anthropic
import groq
import openai
from google import genai
from google.genai import types

from exporter.simulator import ProviderSimulator

GROQ_KEY = "gsk_test_groq_secret_5f2c1e"
OPENAI_KEY = "sk-test-openai-secret-9a7d3b"
ANTHROPIC_KEY = "sk-ant-test-anthropic-secret-41be"
GEMINI_KEY = "AIzaTestGeminiSecret0c8d77"
SECRETS = (GROQ_KEY, OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY)

MODELS = {
    "groq": "llama-3.3-70b-versatile",
    "openai": "o4-mini",
    "anthropic": "claude-sonnet-4-5",
    "gcp.gemini": "gemini-2.5-flash",
}
MESSAGES = [
    {"role": "system", "content": "You write carousel slides."},
    {"role": "user", "content": "Five facts about octopuses, one line each."},
]


@dataclass
class Call:
    provider: str
    is_async: bool
    stream: bool
    headers: dict[str, str]
    include_usage: bool = True
    anthropic_tracing: bool = True
    timeout: float = 20.0


def run(sim: ProviderSimulator, call: Call) -> str:
    """Makes the call through the provider's official SDK; returns the text the app received."""
    function = {
        "groq": _openai_style,
        "openai": _openai_style,
        "anthropic": _anthropic,
        "gcp.gemini": _gemini,
    }[call.provider]
    if call.is_async:
        return asyncio.run(function(sim, call))  # type: ignore[no-any-return]
    result = function(sim, call)
    assert isinstance(result, str)
    return result


def _openai_style(sim: ProviderSimulator, call: Call) -> Any:
    if call.provider == "groq":
        client_class: Any = groq.AsyncGroq if call.is_async else groq.Groq
        client = client_class(api_key=GROQ_KEY, base_url=sim.groq_base_url, max_retries=0,
                              timeout=call.timeout)  # fmt: skip
    else:
        client_class = openai.AsyncOpenAI if call.is_async else openai.OpenAI
        client = client_class(api_key=OPENAI_KEY, base_url=sim.openai_base_url, max_retries=0,
                              timeout=call.timeout)  # fmt: skip
    kwargs: dict[str, Any] = {"model": MODELS[call.provider], "messages": MESSAGES,
                              "max_tokens": 400, "extra_headers": call.headers}  # fmt: skip
    if call.stream:
        kwargs["stream"] = True
        if call.include_usage:
            kwargs["extra_body"] = {"stream_options": {"include_usage": True}}

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    if call.is_async:

        async def go() -> str:
            response = await client.chat.completions.create(**kwargs)
            if not call.stream:
                return response.choices[0].message.content or ""
            return text([chunk async for chunk in response])

        return go()
    response = client.chat.completions.create(**kwargs)
    return text(list(response)) if call.stream else response.choices[0].message.content or ""


def _anthropic(sim: ProviderSimulator, call: Call) -> Any:
    options: dict[str, Any] = {"api_key": ANTHROPIC_KEY, "base_url": sim.anthropic_base_url,
                               "max_retries": 0, "timeout": call.timeout}  # fmt: skip
    if not call.anthropic_tracing:
        options["open_telemetry"] = False
    kwargs: dict[str, Any] = {"model": MODELS["anthropic"], "max_tokens": 400,
                              "system": MESSAGES[0]["content"], "messages": MESSAGES[1:],
                              "extra_headers": call.headers}  # fmt: skip
    if call.is_async:
        client: Any = anthropic.AsyncAnthropic(**options)

        async def go() -> str:
            if not call.stream:
                message = await client.messages.create(**kwargs)
                return "".join(b.text for b in message.content if b.type == "text")
            async with client.messages.stream(**kwargs) as stream:
                return "".join([text async for text in stream.text_stream])

        return go()
    client = anthropic.Anthropic(**options)
    if not call.stream:
        message = client.messages.create(**kwargs)
        return "".join(b.text for b in message.content if b.type == "text")
    with client.messages.stream(**kwargs) as stream:
        return "".join(stream.text_stream)


def _gemini(sim: ProviderSimulator, call: Call) -> Any:
    http = types.HttpOptions(
        base_url=sim.gemini_base_url, api_version="v1beta", headers=call.headers,
        timeout=int(call.timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1),
    )  # fmt: skip
    client = genai.Client(api_key=GEMINI_KEY, http_options=http)
    config = types.GenerateContentConfig(system_instruction=MESSAGES[0]["content"],
                                         max_output_tokens=400)  # fmt: skip
    kwargs: dict[str, Any] = {"model": MODELS["gcp.gemini"], "contents": MESSAGES[1]["content"],
                              "config": config}  # fmt: skip
    if call.is_async:

        async def go() -> str:
            if not call.stream:
                response = await client.aio.models.generate_content(**kwargs)
                return response.text or ""
            chunks = await client.aio.models.generate_content_stream(**kwargs)
            return "".join([c.text or "" async for c in chunks])

        return go()
    if not call.stream:
        return client.models.generate_content(**kwargs).text or ""
    return "".join(c.text or "" for c in client.models.generate_content_stream(**kwargs))
