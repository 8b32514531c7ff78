"""nexus_otel: exact LLM token and cost telemetry on OpenTelemetry."""

__all__: list[str] = []
