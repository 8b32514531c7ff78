"""The nexus-otel server side: OTLP ingest, normalization, pricing, storage, metrics, API, CLI."""
