"""Span attribute names: the one place both the instrumentation and the exporter read them from.

Standard names follow the OpenTelemetry GenAI semantic conventions (v1.41); older, newer and
third-party spellings that the exporter also accepts are listed next to them.
"""

from typing import Final

# --- OpenTelemetry GenAI semantic conventions (v1.41) ---------------------------------------
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"  # deprecated spelling of the provider
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
# The tier that served an OpenAI call (default, flex, priority, scale): flex and priority calls
# are priced apart (the conventions' OpenAI attribute).
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"  # our spans: written only when true
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # content: opt-in only
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # content: opt-in only
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"  # inclusive of cached input
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"  # inclusive of reasoning
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"  # newer
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
# Ours (no convention names it yet): how many of the cache writes went to a 1-hour cache
# (Anthropic's `cache_creation.ephemeral_1h_input_tokens`), within the cache writes; they cost
# more than 5-minute writes. Absent reads as 0: every write priced as a cache write.
NEXUS_USAGE_CACHE_WRITE_1H_INPUT_TOKENS: Final = "nexus.usage.cache_write_1h.input_tokens"
# Older spellings still sent by some instrumentations (OpenLLMetry, early semconv).
GEN_AI_USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
GEN_AI_USAGE_TOTAL_TOKENS: Final = "gen_ai.usage.total_tokens"
LLM_USAGE_TOTAL_TOKENS: Final = "llm.usage.total_tokens"
LLM_USAGE_REASONING_TOKENS: Final = "llm.usage.reasoning_tokens"  # older OpenLLMetry
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_read_input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_creation_input_tokens"
GEN_AI_USAGE_REASONING_TOKENS_OLD: Final = "gen_ai.usage.reasoning_tokens"
# Pydantic AI (and Logfire) before 1.78: input_tokens includes the cache, whose counts are only
# in `gen_ai.usage.details.*` (from 1.3 its own names; before, on Anthropic, the API's names).
PYDANTIC_AI_CACHE_READ_TOKENS: Final = "gen_ai.usage.details.cache_read_tokens"
PYDANTIC_AI_CACHE_WRITE_TOKENS: Final = "gen_ai.usage.details.cache_write_tokens"
PYDANTIC_AI_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.details.cache_read_input_tokens"
PYDANTIC_AI_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.details.cache_creation_input_tokens"
PYDANTIC_AI_REASONING_TOKENS: Final = "gen_ai.usage.details.reasoning_tokens"
# OpenInference (Arize, Phoenix) spellings.
LLM_PROVIDER: Final = "llm.provider"
LLM_SYSTEM: Final = "llm.system"
LLM_MODEL_NAME: Final = "llm.model_name"
LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
LLM_TOKEN_COUNT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
LLM_TOKEN_COUNT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
LLM_TOKEN_COUNT_REASONING: Final = "llm.token_count.completion_details.reasoning"
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
EMBEDDING_MODEL_NAME: Final = "embedding.model_name"  # OpenInference EMBEDDING spans' model
# OpenLLMetry (Traceloop): what a span of its framework instrumentations (CrewAI, LangChain, its
# decorators) is: `workflow`, `task`, `agent`, `tool`; the model calls inside are spans of
# their own.
TRACELOOP_SPAN_KIND: Final = "traceloop.span.kind"

SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"  # our spans: absent is 200
ERROR_TYPE: Final = "error.type"
# The error.type of a call the budget guard refused before any byte went to the provider.
BUDGET_EXCEEDED_ERROR: Final = "budget_exceeded"
SERVICE_NAME: Final = "service.name"  # resource attribute

# --- Cost: no standard attribute yet; these are the spellings in use ------------------------
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"  # OpenLIT, Langfuse
# Proposed (semantic-conventions-genai PR #443, not merged): the amount, its ISO 4217 currency
# (absent: USD), and who priced it: `provider` (its own charge) or `local` (a price table).
GEN_AI_USAGE_COST_AMOUNT: Final = "gen_ai.usage.cost.amount"
GEN_AI_USAGE_COST_CURRENCY: Final = "gen_ai.usage.cost.currency"
GEN_AI_USAGE_COST_SOURCE: Final = "gen_ai.usage.cost.source"
OPERATION_COST: Final = "operation.cost"  # Logfire
LLM_COST_TOTAL: Final = "llm.cost.total"  # OpenInference
NEXUS_COST_USD: Final = "nexus.cost.usd"  # ours
COST_ATTRIBUTES: Final = (
    NEXUS_COST_USD,
    GEN_AI_USAGE_COST_AMOUNT,
    GEN_AI_USAGE_COST,
    OPERATION_COST,
    LLM_COST_TOTAL,
)

# --- Ours, namespaced ------------------------------------------------------------------------
NEXUS_OPERATION: Final = "nexus.operation"  # business operation, e.g. fact_generation
NEXUS_CORRELATION_ID: Final = "nexus.correlation_id"  # e.g. carousel-123
NEXUS_USAGE_SOURCE: Final = "nexus.usage.source"  # response | tiktoken | chars
NEXUS_TIME_TO_FIRST_CHUNK: Final = "nexus.response.time_to_first_chunk"  # seconds, streams
USAGE_SOURCES: Final = ("response", "tiktoken", "chars")

# Attributes that carry prompt or completion text: never stored unless a user opts in.
CONTENT_ATTRIBUTE_PREFIXES: Final = (
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "llm.input_messages",
    "llm.output_messages",
    "llm.prompts",
    "llm.completions",
    "embedding.embeddings",  # OpenInference: each input's text and vector
    "input.value",
    "output.value",
)
