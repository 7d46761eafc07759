"""The Bangkok Metropolitan Administration's licensing case service (TH/GOV/BMA/licensing).

A consumer of the hub with its own process, database and users: it reaches the registries
only through the hub node's public HTTP protocol and imports nothing from the hub's code, so
it shows what any agency's case system would have to do to join the federation.

Entry points: ``python -m case_service`` (the process), ``create_app`` (the aiohttp
application), ``CaseService`` (the workflow behind the routes) and ``CaseServiceClient`` (an
HTTP client of the routes for demos and scripts).
"""

from __future__ import annotations

from .app import create_app
from .client import CaseServiceClient, CaseServiceError
from .config import Settings, load_settings
from .service import CaseService

__all__ = [
    "CaseService",
    "CaseServiceClient",
    "CaseServiceError",
    "Settings",
    "create_app",
    "load_settings",
]
