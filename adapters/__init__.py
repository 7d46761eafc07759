"""Adapters: how a node reaches an agency's own system behind a service code.

An adapter turns one X-Road request into one call of the agency system and back. It is
deliberately tiny (one ``handle`` coroutine), so adding SOAP or flat-file systems never
touches the message-exchange layer.
"""

from .base import Adapter, AdapterRequest, AdapterResponse
from .rest import RestAdapter

__all__ = ["Adapter", "AdapterRequest", "AdapterResponse", "RestAdapter"]
