"""`nexus-otel`: the command line of the server side."""

from exporter.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
