"""The HTTP search service (``clipfuse serve``): search API, ingestion, health, metrics, web page.

Needs the ``service`` extra (FastAPI, uvicorn, python-multipart, prometheus-client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipfuse.service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from clipfuse.service.app import create_app

        return create_app
    raise AttributeError(name)
