"""The ingest path: OTLP/HTTP in, spans decoded, normalized and priced, one row per call stored,
metrics derived."""
