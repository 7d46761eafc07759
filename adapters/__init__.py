"""Adapters: how a node reaches an agency's own system behind a service code.

An adapter turns one X-Road request into one call of the agency system and back. It is
deliberately tiny (one ``handle`` coroutine), so adding SOAP or flat-file systems never
touches the message-exchange layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Adapter, AdapterRequest, AdapterResponse

if TYPE_CHECKING:
    from .rest import RestAdapter

__all__ = ["Adapter", "AdapterRequest", "AdapterResponse", "RestAdapter"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the HTTP client stack it needs is not what a module that only
    # reads an adapter's settings (the configuration, every CLI command) should pay for.
    if name == "RestAdapter":
        from .rest import RestAdapter

        return RestAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
