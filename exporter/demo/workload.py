"""The demo workload: carousel generation through the official Groq, OpenAI, Gemini and
Anthropic SDKs.

Each carousel (correlation id `carousel-N`) is four LLM calls: facts on Groq (as in the original
pipeline), near-duplicate facts dropped by their OpenAI embeddings, content expansion on Gemini,
captions on Claude. Some calls stream, some hit Claude's prompt cache, some think, and some fail
(429, 500, 503) on a fixed schedule, so every run shows all of them.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import groq
import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

import nexus_otel
from exporter.simulator import ProviderSimulator

SERVICE_NAME = "carousel-bot"
FACT_MODEL = "llama-3.3-70b-versatile"
EMBEDDING_MODEL = "text-embedding-3-small"
# Facts whose embeddings are at least this similar (cosine) say the same thing: one is kept.
DUPLICATE_SIMILARITY = 0.9
EXPANSION_MODEL = "gemini-2.5-flash"
CAPTION_MODEL = "claude-sonnet-4-5"
HASHTAG_MODEL = "o4-mini"  # through OpenAI's Responses API, with reasoning tokens
STREAM_EVERY = {"groq": 3, "gcp.gemini": 2, "anthropic": 3, "openai": 2}  # DemoWorkload._streams
# Every FAILURE_EVERY-th call fails, cycling through these answers. Several workers interleave
# their calls, so which of the five steps fails varies from one failure to the next.
FAILURE_EVERY = 8
FAILURES = ("429", "503", "429", "500")
TOPICS = (
    "coffee chemistry",
    "deep-sea creatures",
    "urban beekeeping",
    "the history of maps",
    "sleep science",
    "volcanoes",
    "tiny houses",
    "octopus intelligence",
    "sourdough",
    "the James Webb telescope",
    "ancient Rome's roads",
    "houseplants that clean air",
)
# Long enough (>1024 tokens) for Claude's prompt cache, as a real brand guide would be.
BRAND_GUIDE = (
    "You write Instagram carousel captions for a science-curious lifestyle brand. Voice: warm, "
    "precise, playful but never silly; short sentences; one emoji at most; end with a question "
    "that invites comments; never invent statistics; cite the fact the slide is built on. "
) * 24
API_ERRORS = (groq.APIError, openai.APIError, anthropic.APIError, genai_errors.APIError)


@dataclass
class CallRecord:
    """One LLM call as the workload saw it (the database's view is what the demo shows)."""

    at: float
    operation: str
    correlation_id: str
    provider: str
    stream: bool
    error: str | None = None


@dataclass
class WorkloadStats:
    carousels_started: int = 0
    carousels_finished: int = 0
    calls: int = 0
    failed_calls: int = 0
    recent: deque[CallRecord] = field(default_factory=lambda: deque(maxlen=50))
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: CallRecord) -> None:
        with self.lock:
            self.calls += 1
            self.failed_calls += record.error is not None
            self.recent.appendleft(record)


class CarouselWorkload:
    """A few worker threads generating carousels until told to stop."""

    def __init__(
        self, simulator: ProviderSimulator, *, workers: int = 3, seed: int = 0, first: int = 1
    ) -> None:
        self.simulator = simulator
        self.workers = workers
        self.seed = seed
        self.stats = WorkloadStats()
        self.on_carousel: Callable[[str, str], None] | None = None  # (correlation id, topic)
        self._numbers = itertools.count(first)
        self._call_numbers = itertools.count(1)
        self._attempts = {provider: itertools.count(0) for provider in STREAM_EVERY}
        self._threads: list[threading.Thread] = []
        self._groq = groq.Groq(
            api_key="demo-groq-key", base_url=simulator.groq_base_url, max_retries=0
        )
        self._openai = openai.OpenAI(
            api_key="demo-openai-key", base_url=simulator.openai_base_url, max_retries=0
        )
        self._claude = anthropic.Anthropic(
            api_key="demo-anthropic-key", base_url=simulator.anthropic_base_url, max_retries=0
        )
        options = types.HttpOptions(base_url=simulator.gemini_base_url, api_version="v1beta")
        self._gemini = genai.Client(api_key="demo-gemini-key", http_options=options)

    def start(self, stop: threading.Event) -> None:
        for index in range(self.workers):
            rng = random.Random(self.seed * 1000 + index)
            thread = threading.Thread(
                target=self._work, args=(stop, rng), name=f"carousel-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, stop: threading.Event, rng: random.Random) -> None:
        while not stop.is_set():
            try:
                self.carousel(next(self._numbers), rng)
            except Exception as exc:  # shown in the live view; the worker carries on
                self.stats.problems.appendleft(f"{type(exc).__name__}: {exc}")
                stop.wait(1)

    def carousel(self, number: int, rng: random.Random) -> bool:
        """Facts, then the distinct ones, then content, then a caption and its hashtags; a
        failed step abandons the carousel."""
        with self.stats.lock:
            self.stats.carousels_started += 1
        correlation_id = f"carousel-{number}"
        topic = rng.choice(TOPICS)
        facts = self._step(
            "fact_generation",
            "groq",
            correlation_id,
            self._streams("groq"),
            lambda h, s: self._facts(topic, h, s, rng),
        )
        if facts is None:
            return False
        distinct = self._step(
            "fact_dedup", "openai", correlation_id, False, lambda h, s: self._dedup(facts, h)
        )
        if distinct is None:
            return False
        content = self._step(
            "content_expansion",
            "gcp.gemini",
            correlation_id,
            self._streams("gcp.gemini"),
            lambda h, s: self._expand(distinct, number, h, s, rng),
        )
        if content is None:
            return False
        caption = self._step(
            "caption",
            "anthropic",
            correlation_id,
            self._streams("anthropic"),
            lambda h, s: self._caption(content, number, h, s, rng),
        )
        if caption is None:
            return False
        hashtags = self._step(
            "hashtags",
            "openai",
            correlation_id,
            self._streams("openai"),
            lambda h, s: self._hashtags(caption, h, s, rng),
        )
        if hashtags is None:
            return False
        with self.stats.lock:
            self.stats.carousels_finished += 1
        if self.on_carousel:
            self.on_carousel(correlation_id, topic)
        return True

    def _streams(self, provider: str) -> bool:
        """Whether this provider's next call streams: its second call and every third one on
        (every second on Gemini), counted per provider so even a short run streams on each."""
        attempt = next(self._attempts[provider])
        return attempt % STREAM_EVERY[provider] == 1

    def _step(
        self,
        operation: str,
        provider: str,
        correlation_id: str,
        stream: bool,
        call: Callable[[dict[str, str], bool], str],
    ) -> str | None:
        headers = {}
        if next(self._call_numbers) % FAILURE_EVERY == 0:
            headers["x-sim-error"] = FAILURES[(self.stats.calls // FAILURE_EVERY) % len(FAILURES)]
        record = CallRecord(time.time(), operation, correlation_id, provider, stream)
        try:
            with nexus_otel.operation(operation, correlation_id=correlation_id):
                return call(headers, stream)
        except API_ERRORS as exc:
            record.error = _describe(exc)
            return None
        finally:
            self.stats.add(record)

    def _facts(self, topic: str, headers: dict[str, str], stream: bool, rng: random.Random) -> str:
        headers["x-sim-latency"] = f"{rng.uniform(0.15, 0.6):.2f}"
        messages: Any = [
            {"role": "system", "content": "You are a meticulous fact finder. Cite sources."},
            {"role": "user", "content": f"Give five surprising, verifiable facts about {topic}."},
        ]
        if not stream:
            response = self._groq.chat.completions.create(
                model=FACT_MODEL, messages=messages, max_tokens=400, extra_headers=headers
            )
            return response.choices[0].message.content or ""
        chunks = self._groq.chat.completions.create(
            model=FACT_MODEL,
            messages=messages,
            max_tokens=400,
            stream=True,
            extra_headers=headers,
            extra_body={"stream_options": {"include_usage": True}},
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    def _dedup(self, facts: str, headers: dict[str, str]) -> str:
        """The facts without near-duplicates, told by their embeddings (one call for all)."""
        lines = [line for line in facts.splitlines() if line.strip()] or [facts or "-"]
        response = self._openai.embeddings.create(
            model=EMBEDDING_MODEL, input=lines, extra_headers=headers
        )
        kept: list[tuple[str, list[float]]] = []
        for line, item in zip(lines, response.data, strict=True):
            if all(_cosine(item.embedding, seen) < DUPLICATE_SIMILARITY for _, seen in kept):
                kept.append((line, item.embedding))
        return "\n".join(line for line, _ in kept)

    def _expand(
        self, facts: str, number: int, headers: dict[str, str], stream: bool, rng: random.Random
    ) -> str:
        headers["x-sim-latency"] = f"{rng.uniform(0.3, 0.9):.2f}"
        thinking = types.ThinkingConfig(include_thoughts=number % 4 == 1)
        config = types.GenerateContentConfig(
            max_output_tokens=1200,
            thinking_config=thinking,
            system_instruction="Expand each fact into a 40-word carousel slide.",
            http_options=types.HttpOptions(headers=headers),
        )
        prompt = f"Facts:\n{facts}"
        if not stream:
            response = self._gemini.models.generate_content(
                model=EXPANSION_MODEL, contents=prompt, config=config
            )
            return response.text or ""
        parts = self._gemini.models.generate_content_stream(
            model=EXPANSION_MODEL, contents=prompt, config=config
        )
        return "".join(chunk.text or "" for chunk in parts)

    def _caption(
        self, content: str, number: int, headers: dict[str, str], stream: bool, rng: random.Random
    ) -> str:
        headers["x-sim-latency"] = f"{rng.uniform(0.4, 1.1):.2f}"
        system: Any = [{"type": "text", "text": BRAND_GUIDE}]
        if number % 5 != 4:  # most calls mark the brand guide for Claude's prompt cache
            system[0]["cache_control"] = {"type": "ephemeral"}
        kwargs: Any = {
            "model": CAPTION_MODEL,
            "max_tokens": 300,
            "system": system,
            "extra_headers": headers,
            "messages": [{"role": "user", "content": f"Write the caption for:\n{content}"}],
        }
        if not stream:
            message = self._claude.messages.create(**kwargs)
        else:
            with self._claude.messages.stream(**kwargs) as events:
                message = events.get_final_message()
        return "".join(block.text for block in message.content if block.type == "text")

    def _hashtags(
        self, caption: str, headers: dict[str, str], stream: bool, rng: random.Random
    ) -> str:
        headers["x-sim-latency"] = f"{rng.uniform(0.2, 0.6):.2f}"
        kwargs: Any = {
            "model": HASHTAG_MODEL,
            "instructions": "Suggest five hashtags, space-separated.",
            "input": caption,
            "max_output_tokens": 200,
            "extra_headers": headers,
        }
        if not stream:
            return str(self._openai.responses.create(**kwargs).output_text)
        with self._openai.responses.stream(**kwargs) as events:
            return str(events.get_final_response().output_text)


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    return f"{status} {type(exc).__name__}" if status else type(exc).__name__
