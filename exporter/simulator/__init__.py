"""Local servers that speak the Groq/OpenAI, Anthropic and Gemini wire formats: chat, OpenAI's
Responses API (JSON and its event stream, stored and background responses), embeddings for
OpenAI-compatible clients and Gemini, and token counting.

The official SDKs talk to them unchanged (only their base URL differs), so tests, the demo and the
benchmarks exercise real client code. Each answer can be steered per request with headers:
`x-sim-usage` (token counts, OpenTelemetry semantics), `x-sim-error` (429, 500, 503, timeout,
interrupt) and `x-sim-latency` (seconds before the first byte).
"""

from exporter.simulator._model import SimulatedResponse, Usage
from exporter.simulator._server import ProviderSimulator

__all__ = ["ProviderSimulator", "SimulatedResponse", "Usage"]
