"""The spellings of each token count that spans use, in order of preference: the GenAI
conventions' current names first, then older ones (OpenLLMetry, early conventions), Pydantic AI's
and OpenInference's. Read by `normalize`."""

from __future__ import annotations

from nexus_otel import attributes as a

# Each token count, with its spellings in order of preference.
INPUT = (a.GEN_AI_USAGE_INPUT_TOKENS, a.GEN_AI_USAGE_PROMPT_TOKENS, a.LLM_TOKEN_COUNT_PROMPT)
OUTPUT = (
    a.GEN_AI_USAGE_OUTPUT_TOKENS,
    a.GEN_AI_USAGE_COMPLETION_TOKENS,
    a.LLM_TOKEN_COUNT_COMPLETION,
)
CACHE_READ = (
    a.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    a.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS_OLD,
    a.LLM_TOKEN_COUNT_CACHE_READ,
    a.PYDANTIC_AI_CACHE_READ_TOKENS,
    a.PYDANTIC_AI_CACHE_READ_INPUT_TOKENS,
)
CACHE_WRITE = (
    a.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    a.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS,
    a.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS_OLD,
    a.LLM_TOKEN_COUNT_CACHE_WRITE,
    a.PYDANTIC_AI_CACHE_WRITE_TOKENS,
    a.PYDANTIC_AI_CACHE_CREATION_INPUT_TOKENS,
)
REASONING = (
    a.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    a.GEN_AI_USAGE_REASONING_TOKENS_OLD,
    a.LLM_USAGE_REASONING_TOKENS,
    a.LLM_TOKEN_COUNT_REASONING,
    a.PYDANTIC_AI_REASONING_TOKENS,
)
TOTAL = (a.GEN_AI_USAGE_TOTAL_TOKENS, a.LLM_USAGE_TOTAL_TOKENS, a.LLM_TOKEN_COUNT_TOTAL)
TOKEN_KEYS = frozenset((*INPUT, *OUTPUT, *CACHE_READ, *CACHE_WRITE, *REASONING, *TOTAL))
# In normalize._tokens' order: the first (current) spelling of each count, and every other spelling.
CURRENT_SPELLINGS = tuple(k[0] for k in (CACHE_READ, CACHE_WRITE, REASONING, INPUT, OUTPUT, TOTAL))
OTHER_SPELLINGS = TOKEN_KEYS - frozenset(CURRENT_SPELLINGS)
