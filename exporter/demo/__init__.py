"""`nexus-otel demo`: a workload of real SDK calls against the provider simulator, shown live."""
