"""Providers: the names calls are recorded under, the hosts and spellings that lead to them, and
the genai-prices provider each is priced as. The one table both the app-side instrumentation and
the exporter read, so a call is named and priced the same on both sides.

Names are the OpenTelemetry GenAI `gen_ai.provider.name` well-known values (`gcp.gemini`,
`mistral_ai`, `x_ai`, `azure.ai.openai`); a provider the conventions do not list has a lowercase
name of its own (`together_ai`, `fireworks`, `openrouter`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

# A reported cost above this is taken for a unit mistake (cents, micro-dollars, credits of another
# kind): no call costs $1,000. Both sides ignore it and price the call from its tokens.
MAX_REPORTED_COST_USD: Final = Decimal(1000)

# Each provider's own API host: the name its calls are recorded under, whatever the client says.
# fmt: off
PROVIDER_HOSTS: Final[dict[str, str]] = {
    "api.groq.com": "groq", "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini",
    # OpenAI-compatible APIs
    "api.deepseek.com": "deepseek", "api.mistral.ai": "mistral_ai", "api.x.ai": "x_ai",
    "api.together.xyz": "together_ai", "api.together.ai": "together_ai",
    "api.fireworks.ai": "fireworks", "openrouter.ai": "openrouter",
    "api.openrouter.ai": "openrouter",
}
# Vertex AI answers on one host per region: `us-central1-aiplatform.googleapis.com` and so on.
VERTEX_AI_HOST_SUFFIX: Final = "-aiplatform.googleapis.com"
# Azure answers on one host per resource (`<resource>.openai.azure.com`; newer resources and
# Azure AI Foundry `<resource>.cognitiveservices.azure.com` and `<resource>.services.ai.azure.com`,
# the hosts genai-prices lists for Azure). On the Foundry host, only paths under `/openai/` are
# the Azure OpenAI API; its other paths (`/models/...`) are the Azure AI model inference API.
AZURE_OPENAI_HOST_SUFFIXES: Final = (".openai.azure.com", ".cognitiveservices.azure.com")
AZURE_AI_FOUNDRY_HOST_SUFFIX: Final = ".services.ai.azure.com"

# Other spellings of a provider name (libraries, older conventions, people) → the name stored.
PROVIDER_ALIASES: Final[dict[str, str]] = {
    "claude": "anthropic",
    "gemini": "gcp.gemini", "google": "gcp.gemini", "google_genai": "gcp.gemini",
    "google.genai": "gcp.gemini", "gcp.gen_ai": "gcp.gemini", "google_ai_studio": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai", "vertexai": "gcp.vertex_ai", "google_vertexai": "gcp.vertex_ai",
    "google_vertex_ai": "gcp.vertex_ai",
    "azure": "azure.ai.openai", "az.ai.openai": "azure.ai.openai",
    "azure_openai": "azure.ai.openai", "az.ai.inference": "azure.ai.inference",
    "bedrock": "aws.bedrock", "mistral": "mistral_ai", "mistralai": "mistral_ai",
    "xai": "x_ai", "grok": "x_ai", "together": "together_ai", "together-ai": "together_ai",
    "togetherai": "together_ai", "fireworks_ai": "fireworks", "fireworks-ai": "fireworks",
    "open_router": "openrouter",
}

# Provider names (and deprecated gen_ai.system spellings) → genai-prices provider ids. Names not
# listed go through genai-prices' own provider matching (exact id, then its fuzzy rules). Azure
# must be listed: the fuzzy rules would read "azure.ai.openai" as "openai".
PRICE_PROVIDER_IDS: Final[dict[str, str]] = {
    "anthropic": "anthropic", "openai": "openai", "groq": "groq", "deepseek": "deepseek",
    "cohere": "cohere", "perplexity": "perplexity", "aws.bedrock": "aws",
    "azure.ai.openai": "azure", "az.ai.openai": "azure",
    "azure.ai.inference": "azure", "az.ai.inference": "azure",
    # genai-prices has one "google" provider, priced for both AI Studio and Vertex AI
    "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
    "gemini": "google", "vertex_ai": "google",
    "mistral_ai": "mistral", "x_ai": "x-ai", "xai": "x-ai",
    "together_ai": "together", "fireworks": "fireworks", "openrouter": "openrouter",
}
# fmt: on

# gen_ai.operation.name values of spans around model calls that are no model call themselves
# (an agent's run, a workflow's, a tool's execution, a retrieval), or of calls that bill no
# tokens (`fetch_response`: a stored response retrieved again, whose usage was counted when it
# was made): never a row, never the span a call's usage goes on. Such spans may repeat their
# calls' usage (OpenLIT's LangGraph `invoke_workflow` span carries its last call's model and
# tokens, its pydantic-ai `execute_task` span the run's summed usage): as rows, they counted
# those tokens twice. Besides the conventions' names, OpenLIT's spellings of an agent's run and
# of its steps around a model call (`model_request` names a model and holds no usage).
NOT_MODEL_CALLS: Final = frozenset(
    {
        "invoke_agent", "create_agent", "execute_tool", "fetch_response", "invoke_workflow",
        "retrieval", "execute_task", "model_request", "user_prompt_processing",
        "tool_coordination",
    }
)  # fmt: skip
# OpenLLMetry's `traceloop.span.kind` values of spans around model calls (a workflow's run, a
# task's, an agent's, a tool's): never a row, as NOT_MODEL_CALLS. Its CrewAI instrumentation puts
# `gen_ai.system` and the agent's model, and sometimes the run's usage, on them.
NOT_MODEL_CALL_KINDS: Final = frozenset({"workflow", "task", "agent", "tool"})
# Span names of SDKs' own tracing for calls that bill no tokens but name a model (the Anthropic
# SDK's span of `messages.count_tokens` carries `gen_ai.request.model` and no operation name;
# `sessions.create` names its agent's model): never a row.
NOT_MODEL_CALL_SPANS: Final = frozenset(
    {"anthropic.messages.count_tokens", "anthropic.sessions.create"}
)


# Every spelling normalize_provider reads, lower case: the aliases, and each alias and name calls
# are stored under written out in words, a space for each `_` ("Vertex AI", "Mistral AI",
# "Azure OpenAI", as some instrumentations write them). One lookup, whatever the spelling.
_NAMES: Final = frozenset(
    (*PROVIDER_ALIASES.values(), *PROVIDER_HOSTS.values(), *PRICE_PROVIDER_IDS)
)
_SPELLINGS: Final[dict[str, str]] = {
    **{name.replace("_", " "): name for name in _NAMES if "_" in name and "." not in name},
    **{a.replace("_", " "): name for a, name in PROVIDER_ALIASES.items() if "." not in a},
    **PROVIDER_ALIASES,
}


def normalize_provider(value: str) -> str:
    """The name a provider's calls are stored under, from any spelling of it; an unknown one is
    kept as written, in lower case."""
    name = value.strip().lower()
    return _SPELLINGS.get(name, name)


def provider_from_host(host: str, path: str = "") -> str | None:
    """The provider whose own API `host` is, or None for any other host (a gateway, a proxy).
    `path`, when known, tells the two APIs of an Azure AI Foundry host apart."""
    host = host.lower()
    found = PROVIDER_HOSTS.get(host)
    if found is not None:
        return found
    if host.endswith(VERTEX_AI_HOST_SUFFIX):
        return "gcp.vertex_ai"
    if host.endswith(AZURE_OPENAI_HOST_SUFFIXES):
        return "azure.ai.openai"
    if host.endswith(AZURE_AI_FOUNDRY_HOST_SUFFIX):
        return "azure.ai.openai" if path.startswith("/openai/") else "azure.ai.inference"
    return None
