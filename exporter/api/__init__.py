"""The FastAPI service: budgets, analytics, content ROI, alert history, reports, live feed."""

from exporter.api.app import create_api_app

__all__ = ["create_api_app"]
