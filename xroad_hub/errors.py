"""The one error type of xroad-hub: an X-Road fault code with a message for the caller.

Code prefixes say who is at fault, exactly as in X-Road:

    Client.*               the client information system broke the protocol     -> 400
    Server.ClientProxy.*   the client's own node failed                         -> 500
    Server.ServerProxy.*   the provider's node failed, or its service did       -> 500

Dependencies' exceptions are translated into XRoadError where they are caught (one place per
boundary); the error is rendered only at the edge, as a REST error body or SOAP Fault.
"""

from __future__ import annotations

import uuid

__all__ = ["CLIENT", "CLIENT_PROXY", "SERVER_PROXY", "XRoadError"]

CLIENT = "Client"
CLIENT_PROXY = "Server.ClientProxy"
SERVER_PROXY = "Server.ServerProxy"


class XRoadError(Exception):
    """An X-Road fault: ``code`` like ``Server.ServerProxy.AccessDenied``."""

    def __init__(
        self, code: str, message: str, *, detail: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # The detail id lets an operator find this fault in the node's log.
        self.detail = detail or str(uuid.uuid4())
        self._status = status

    @property
    def status(self) -> int:
        """HTTP status of the REST rendering: 400 for client faults, otherwise 500, unless
        the error says otherwise (429 for a client over its limits: retry later)."""
        if self._status is not None:
            return self._status
        return 400 if self.code.startswith(CLIENT + ".") else 500

    @classmethod
    def client(cls, code: str, message: str) -> XRoadError:
        return cls(f"{CLIENT}.{code}", message)

    @classmethod
    def client_proxy(cls, code: str, message: str) -> XRoadError:
        return cls(f"{CLIENT_PROXY}.{code}", message)

    @classmethod
    def server_proxy(cls, code: str, message: str) -> XRoadError:
        return cls(f"{SERVER_PROXY}.{code}", message)

    def as_dict(self) -> dict[str, str]:
        return {"type": self.code, "message": self.message, "detail": self.detail}
