"""The signed metadata of one exchange between nodes, as types, sans-I/O.

A request travels from the client's node to the provider's node as an envelope
(message.py) whose signed part is the canonical JSON of a ``RequestMeta``; the answer comes
back with an ``AnswerMeta``. These bytes are what the members sign, what both nodes log,
what the request hash covers and what an evidence bundle carries years later, so:

- each type has exactly one ``encode`` (to the canonical signed bytes) and one ``parse``;
- ``encode`` writes the bytes nodes have always written: the optional request fields
  (purpose, legal basis, evidence type, the default-purpose flag, the protocol) are written
  only when present, so a message without them is byte for byte what older nodes signed;
- ``parse`` is strict: a missing, unknown or mistyped field is a ProtocolError
  ``InvalidMessage``. It checks the shape; what the values may say (a path without dot
  segments, headers without control characters) is checked by the node where it uses them.

Version 1 grows only by optional fields, each written only when present; anything else is a
new ``v``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from xroad_hub.errors import ProtocolError
from xroad_hub.protocol.identifiers import (
    ClientId,
    NodeId,
    ServiceId,
    parse_client_id,
    parse_node_id,
    parse_service_id,
)
from xroad_hub.protocol.message import canonical

__all__ = ["AnswerMeta", "Headers", "RequestMeta", "new_id"]

Headers = tuple[tuple[str, str], ...]


def new_id() -> str:
    """A version 7 UUID (RFC 9562) as text, for the ids a node gives its messages: 48 bits
    of Unix time in milliseconds, then 74 random bits.

    In time order to the millisecond (in random order within one) because both nodes' logs
    index the message id: a random id lands on a random page of that index, and each commit
    writes every page it touched in full (a 4 KiB WAL frame for a 40-byte entry, written
    again when the WAL is checkpointed), while ids in time order all land on the index's
    last page. Only ids a node makes gain: a client's own X-Road-Id is indexed as it comes.
    The time is no secret to the nodes (the signed metadata's ``created``); a backend sees
    it in the ids it is sent. Built as text, without a ``uuid.UUID``."""
    t = f"{time.time_ns() // 1_000_000:012x}"
    r = os.urandom(10).hex()
    return f"{t[:8]}-{t[8:]}-7{r[:3]}-{'89ab'[int(r[3], 16) & 3]}{r[4:7]}-{r[7:19]}"


_REQUEST_REQUIRED = frozenset(
    {
        "v", "kind", "id", "request_id", "client", "service", "target_node", "method", "path",
        "query", "headers", "user_id", "issue", "represented_party", "created", "body_sha512",
    }
)  # fmt: skip
_REQUEST_OPTIONAL = frozenset(
    {"purpose", "legal_basis", "evidence_type", "purpose_default", "protocol"}
)
_REQUEST_ALLOWED = _REQUEST_REQUIRED | _REQUEST_OPTIONAL
_ANSWER_FIELDS = frozenset(
    {
        "v", "kind", "id", "request_id", "service", "status", "headers", "request_hash",
        "created", "body_sha512",
    }
)  # fmt: skip
_Id = TypeVar("_Id")


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the client's node signs about one request (the body is covered by its digest)."""

    id: str  # the client's X-Road message id
    request_id: str  # the client node's own id of this exchange
    client: ClientId
    service: ServiceId
    target_node: NodeId  # the provider's node it is addressed to
    method: str
    path: str  # raw, percent-encoded remainder after the service code ("" or "/...")
    query: str
    headers: Headers  # what the service may see, already filtered by the client's node
    user_id: str | None
    issue: str | None
    represented_party: str | None
    created: float  # seconds since the epoch, the client node's clock
    body_sha512: str
    # Why the data is asked for; signed, logged, shown to citizens.
    purpose: str | None = None
    legal_basis: str | None = None
    evidence_type: str | None = None
    # The client named no purpose: its node applied the one registered for it.
    purpose_default: bool = False
    protocol: str = "rest"  # "rest" (r1) or "soap" (SOAP 4.0: the body is the SOAP message)

    def encode(self) -> bytes:
        """The canonical signed bytes."""
        doc: dict[str, Any] = {
            "v": 1,
            "kind": "request",
            "id": self.id,
            "request_id": self.request_id,
            "client": str(self.client),
            "service": str(self.service),
            "target_node": str(self.target_node),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "user_id": self.user_id,
            "issue": self.issue,
            "represented_party": self.represented_party,
            "created": self.created,
            "body_sha512": self.body_sha512,
        }
        for key, value in (
            ("purpose", self.purpose),
            ("legal_basis", self.legal_basis),
            ("evidence_type", self.evidence_type),
        ):
            if value is not None:
                doc[key] = value
        if self.purpose_default:
            doc["purpose_default"] = True
        if self.protocol != "rest":
            doc["protocol"] = self.protocol
        return canonical(doc)

    @classmethod
    def parse(cls, meta: bytes | Mapping[str, Any]) -> RequestMeta:
        """The request metadata of signed bytes (or of their decoded JSON object)."""
        doc = _fields(meta, "request", _REQUEST_REQUIRED, _REQUEST_ALLOWED)
        r = _Reader(doc, "request")
        purpose_default = doc.get("purpose_default", True)
        if purpose_default is not True:
            raise _invalid("request: purpose_default is true when present")
        protocol = r.text("protocol") if "protocol" in doc else "rest"
        if protocol != "soap" and "protocol" in doc:
            raise _invalid("request: protocol is 'soap' when present")
        return cls(
            id=r.text("id"),
            request_id=r.text("request_id"),
            client=r.ident("client", parse_client_id),
            service=r.ident("service", parse_service_id),
            target_node=r.ident("target_node", parse_node_id),
            method=r.text("method"),
            path=r.text("path"),
            query=r.text("query"),
            headers=r.headers("headers"),
            user_id=r.optional("user_id"),
            issue=r.optional("issue"),
            represented_party=r.optional("represented_party"),
            created=r.number("created"),
            body_sha512=r.text("body_sha512"),
            purpose=r.optional("purpose"),
            legal_basis=r.optional("legal_basis"),
            evidence_type=r.optional("evidence_type"),
            purpose_default="purpose_default" in doc,
            protocol=protocol,
        )


@dataclass(frozen=True, slots=True)
class AnswerMeta:
    """What the provider's node signs about its answer to one request."""

    id: str  # echoes the request's
    request_id: str  # echoes the request's
    service: ServiceId  # the service that answered, with the version it is served as
    status: int  # the service's HTTP status
    headers: Headers  # the service's answer headers, filtered by the provider's node
    request_hash: str  # rest.request_hash of the request's signed metadata and body
    created: float
    body_sha512: str

    def encode(self) -> bytes:
        """The canonical signed bytes."""
        return canonical(
            {
                "v": 1,
                "kind": "response",
                "id": self.id,
                "request_id": self.request_id,
                "service": str(self.service),
                "status": self.status,
                "headers": self.headers,
                "request_hash": self.request_hash,
                "created": self.created,
                "body_sha512": self.body_sha512,
            }
        )

    @classmethod
    def parse(cls, meta: bytes | Mapping[str, Any]) -> AnswerMeta:
        """The answer metadata of signed bytes (or of their decoded JSON object)."""
        r = _Reader(_fields(meta, "response", _ANSWER_FIELDS, _ANSWER_FIELDS), "answer")
        status = r.doc["status"]
        if type(status) is not int or not 100 <= status <= 599:
            raise _invalid("answer: status is not an HTTP status code")
        return cls(
            id=r.text("id"),
            request_id=r.text("request_id"),
            service=r.ident("service", parse_service_id),
            status=status,
            headers=r.headers("headers"),
            request_hash=r.text("request_hash"),
            created=r.number("created"),
            body_sha512=r.text("body_sha512"),
        )


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("InvalidMessage", message)


def _fields(
    meta: bytes | Mapping[str, Any],
    kind: str,
    required: frozenset[str],
    allowed: frozenset[str],
) -> Mapping[str, Any]:
    """The metadata object, when it has every ``required`` field and none but ``allowed``."""
    if isinstance(meta, bytes):
        try:
            meta = orjson.loads(meta)
        except orjson.JSONDecodeError:
            raise _invalid("metadata is not JSON") from None
        if not isinstance(meta, dict):
            raise _invalid("metadata is not a JSON object")
    if meta.get("v") != 1 or meta.get("kind") != kind:
        raise _invalid(f"not a version 1 {kind} message")
    keys = meta.keys()
    # Comparisons of the keys build no set (read on every message of both nodes); which
    # field is missing or unknown is worked out only for a message that is refused.
    if keys >= required and keys <= allowed:
        return meta
    if missing := required - keys:
        raise _invalid(f"{kind} lacks {', '.join(sorted(missing))}")
    unknown = keys - allowed
    raise _invalid(f"{kind} has unknown fields {', '.join(sorted(unknown)[:5])}")


class _Reader:
    """Typed access to the fields of a checked metadata object; a wrong type is an error."""

    def __init__(self, doc: Mapping[str, Any], what: str) -> None:
        self.doc, self.what = doc, what

    def _wrong(self, key: str, expected: str) -> ProtocolError:
        return _invalid(f"{self.what}: {key} is not {expected}")

    def text(self, key: str) -> str:
        value = self.doc[key]
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def optional(self, key: str) -> str | None:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, "a string or null")
        return value

    def number(self, key: str) -> float:
        value = self.doc[key]
        if type(value) not in (int, float):
            raise self._wrong(key, "a number")
        return value  # type: ignore[no-any-return]

    def headers(self, key: str) -> Headers:
        value = self.doc[key]
        if not isinstance(value, (list, tuple)):
            raise self._wrong(key, "a list of [name, value] strings")
        out = []
        for pair in value:
            # A plain loop: read on every message of both nodes.
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise self._wrong(key, "a list of [name, value] strings")
            name, v = pair
            if not (isinstance(name, str) and isinstance(v, str)):
                raise self._wrong(key, "a list of [name, value] strings")
            out.append((name, v))
        return tuple(out)

    def ident(self, key: str, parse: Callable[[str], _Id]) -> _Id:
        try:
            return parse(self.text(key))
        except ProtocolError as exc:
            raise _invalid(f"{self.what}: {key}: {exc.message}") from exc
