"""The FastAPI service: budgets, analytics, content ROI, alert history, reports, live feed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.api.app import create_api_app

__all__ = ["create_api_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so modules such as exporter.budgets can use exporter.api.usage
    # without loading (and circling back through) the whole application.
    if name == "create_api_app":
        from exporter.api.app import create_api_app

        return create_api_app
    raise AttributeError(name)
