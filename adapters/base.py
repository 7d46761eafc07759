"""The adapter interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from xroad_hub.protocol.soap import SoapMessage

__all__ = ["Adapter", "AdapterRequest", "AdapterResponse"]


@dataclass(frozen=True, slots=True)
class AdapterRequest:
    method: str
    path: str  # raw, percent-encoded remainder after the service code ("" or "/...")
    query: str  # raw query string, unchanged
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # X-Road SOAP 4.0 requests: the message as parsed and checked by the node (the body is
    # the whole HTTP body, attachments included); None for REST (r1) requests.
    soap: SoapMessage | None = None


@dataclass(frozen=True, slots=True)
class AdapterResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Adapter(Protocol):
    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Call the agency system. Transport failures raise ``Server.ServerProxy.*`` errors;
        the system's own error answers are returned as responses (passed through)."""
        ...

    async def close(self) -> None: ...
