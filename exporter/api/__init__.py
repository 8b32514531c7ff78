"""The FastAPI service: budgets, analytics, content ROI, alert history, reports, live feed.

Only the command line and the service wiring import this package: domain and ingest code do not.
"""

from exporter.api.app import create_api_app

__all__ = ["create_api_app"]
