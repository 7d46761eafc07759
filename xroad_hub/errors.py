"""The errors of xroad-hub, in one hierarchy.

    HubError                     anything the hub itself reports (never a traceback for it)
    ├── ProtocolError            bytes that break a protocol: what to tell the peer, no side
    │   ├── MessageError           a node-to-node envelope (protocol/message.py)
    │   └── SoapError              an X-Road SOAP message (protocol/soap.py)
    ├── XRoadError               an X-Road fault: the code names who is to blame
    ├── ConfigError              a federation file or setting (federation.py)
    ├── Unavailable              a database the hub keeps its state in failed (HTTP 503)
    └── ...                      one per part: EvidenceError, LogError, SignatureError...

Parsers in ``xroad_hub.protocol`` raise ProtocolError and never decide whose fault it is:
the same identifier is the client system's mistake when it arrives in a request head, the
client node's when it arrives in signed metadata, and the provider node's in an answer. The
node decides at its boundary (``XRoadError.blame``), with the prefix of its side:

    Client.*               the client information system broke the protocol     -> 400
    Server.ClientProxy.*   the client's own node failed                         -> 500
    Server.ServerProxy.*   the provider's node failed, or its service did       -> 500

Dependencies' exceptions are translated where they are caught (one place per boundary); an
X-Road error is rendered only at the edge, as a REST error body or a SOAP Fault.
"""

from __future__ import annotations

import uuid

__all__ = [
    "CLIENT",
    "CLIENT_PROXY",
    "SERVER_PROXY",
    "ConfigError",
    "HubError",
    "ProtocolError",
    "Unavailable",
    "XRoadError",
    "blame_on",
]

CLIENT = "Client"
CLIENT_PROXY = "Server.ClientProxy"
SERVER_PROXY = "Server.ServerProxy"


class HubError(Exception):
    """An error the hub reports to a person or a peer: its message says what went wrong
    and, where there is one, what to do next. Anything else escaping is a bug."""


class ConfigError(HubError, ValueError):
    """A configuration (the federation file, a setting) is wrong; the message names the place
    and what to change."""


class Unavailable(HubError):
    """A database the hub keeps its state in cannot be reached or failed during an
    operation (a server restarted, a lock timed out): nothing the person did was wrong, and
    the same request may succeed once the database is back. Admin APIs answer 503."""


class ProtocolError(HubError, ValueError):
    """Input that breaks the protocol. ``code`` is the X-Road code without its side
    (``BadRequest``, ``InvalidMessage``...); ``message`` is what the peer is told."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class XRoadError(HubError):
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

    @classmethod
    def blame(cls, side: str, err: ProtocolError, *, context: str = "") -> XRoadError:
        """The X-Road error of a protocol error, blamed on ``side`` (CLIENT, CLIENT_PROXY or
        SERVER_PROXY); ``context`` says whose message it was ("answer of the provider's
        node")."""
        return cls(f"{side}.{err.code}", f"{context}: {err.message}" if context else err.message)

    def as_dict(self) -> dict[str, str]:
        return {"type": self.code, "message": self.message, "detail": self.detail}


class blame_on:
    """Inside this block, a protocol error is the fault of ``side``: it leaves as the X-Road
    error with that prefix. X-Road errors already decided pass unchanged.

    A class, not a generator: several blocks per exchange on every node, and a
    ``contextlib.contextmanager`` costs a generator and two objects each time."""

    __slots__ = ("context", "side")

    def __init__(self, side: str, *, context: str = "") -> None:
        self.side = side
        self.context = context

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, ProtocolError):
            raise XRoadError.blame(self.side, exc, context=self.context) from exc
