"""Providers: the names calls are recorded under, the hosts and spellings that lead to them, and
the genai-prices provider each is priced as. The one table both the app-side instrumentation and
the exporter read, so a call is named and priced the same on both sides.

Names are the OpenTelemetry GenAI `gen_ai.provider.name` values (`gcp.gemini`, `aws.bedrock`).
"""

from __future__ import annotations

from typing import Final

# Each provider's own API host: the name its calls are recorded under, whatever the client says.
# fmt: off
PROVIDER_HOSTS: Final[dict[str, str]] = {
    "api.groq.com": "groq", "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini",
}
# Vertex AI answers on one host per region: `us-central1-aiplatform.googleapis.com` and so on.
VERTEX_AI_HOST_SUFFIX: Final = "-aiplatform.googleapis.com"

# Other spellings of a provider name (libraries, older conventions, people) → the name stored.
PROVIDER_ALIASES: Final[dict[str, str]] = {
    "claude": "anthropic",
    "gemini": "gcp.gemini", "google": "gcp.gemini", "google_genai": "gcp.gemini",
    "google.genai": "gcp.gemini", "gcp.gen_ai": "gcp.gemini", "google_ai_studio": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai", "vertexai": "gcp.vertex_ai", "google_vertexai": "gcp.vertex_ai",
    "azure": "azure.ai.openai", "az.ai.openai": "azure.ai.openai",
    "azure_openai": "azure.ai.openai", "az.ai.inference": "azure.ai.inference",
    "bedrock": "aws.bedrock", "mistral": "mistral_ai", "mistralai": "mistral_ai",
    "xai": "x_ai", "grok": "x_ai", "together": "together_ai",
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
}
# fmt: on

# gen_ai.operation.name values of spans around model calls that are no model call themselves
# (an agent's run, a tool's execution): never a row, never the span a call's usage goes on.
NOT_MODEL_CALLS: Final = frozenset({"invoke_agent", "create_agent", "execute_tool"})


def normalize_provider(value: str) -> str:
    """The name a provider's calls are stored under, from any spelling of it."""
    name = value.strip().lower()
    return PROVIDER_ALIASES.get(name, name)


def provider_from_host(host: str) -> str | None:
    """The provider whose own API `host` is, or None for any other host (a gateway, a proxy)."""
    host = host.lower()
    if host.endswith(VERTEX_AI_HOST_SUFFIX):
        return "gcp.vertex_ai"
    return PROVIDER_HOSTS.get(host)
