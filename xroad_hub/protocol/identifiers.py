"""X-Road identifiers: members, subsystems, services and nodes (security servers).

Every part of an identifier is restricted to ``A-Z a-z 0-9 ' ( ) + , - . = ?``. The
restriction is what keeps identifiers safe to use in URLs, file names, log keys and SQL
parameters, so parsing is strict and the only way to build an identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from xroad_hub.errors import ProtocolError

__all__ = [
    "MEMBER_SERVICES",
    "ClientId",
    "MemberId",
    "NodeId",
    "ServiceId",
    "SubsystemId",
    "parse_client_id",
    "parse_member_id",
    "parse_node_id",
    "parse_r1_service",
    "parse_service_id",
    "parse_subsystem_id",
    "valid_part",
]

# Identifiers are immutable and a node sees the same few over and over (its clients, its
# services, its peers): each parse function keeps its recent answers, so that an exchange's
# identifiers are parsed and checked once, not on every message. Refusals are not kept.
_cached = lru_cache(maxsize=2048)

_PART = re.compile(r"[A-Za-z0-9'()+,\-.=?]{1,255}")


def valid_part(part: str) -> bool:
    """True when ``part`` is a legal identifier part (``.`` and ``..`` never are)."""
    return bool(_PART.fullmatch(part)) and part not in (".", "..")


def _split(text: str, what: str, sizes: tuple[int, ...], *, decode: bool = False) -> list[str]:
    raw = text.split("/")
    if len(raw) not in sizes:
        raise ProtocolError(
            "BadRequest",
            f"malformed {what} identifier {text[:200]!r}: expected "
            f"{' or '.join(str(n) for n in sizes)} parts separated by '/'",
        )
    # r1 percent-encodes each part on its own, so decoding happens after splitting: an
    # encoded '/' inside a part then fails the character check instead of adding a part.
    try:
        parts = [unquote(p, errors="strict") for p in raw] if decode else raw
    except UnicodeDecodeError as exc:
        raise ProtocolError("BadRequest", f"{what} identifier is not UTF-8") from exc
    for part in parts:
        if not valid_part(part):
            raise ProtocolError(
                "BadRequest",
                f"illegal characters in {what} identifier part {part[:100]!r}; allowed are "
                "A-Z a-z 0-9 and ' ( ) + , - . = ?",
            )
    return parts


@dataclass(frozen=True, slots=True, order=True)
class MemberId:
    instance: str
    member_class: str
    member_code: str

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}"

    @property
    def member(self) -> MemberId:
        return self

    @property
    def object_type(self) -> str:
        return "MEMBER"


@dataclass(frozen=True, slots=True, order=True)
class SubsystemId:
    instance: str
    member_class: str
    member_code: str
    subsystem_code: str

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}/{self.subsystem_code}"

    @property
    def member(self) -> MemberId:
        # Asked several times per exchange (signers, access, revocation): one shared object.
        return _member_of(self.instance, self.member_class, self.member_code)

    @property
    def object_type(self) -> str:
        return "SUBSYSTEM"


ClientId = MemberId | SubsystemId
_member_of = _cached(MemberId)


@dataclass(frozen=True, slots=True, order=True)
class ServiceId:
    """A service: its provider (member or subsystem), code and optional version."""

    provider: ClientId
    service_code: str
    service_version: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.service_version}" if self.service_version else ""
        return f"{self.provider}/{self.service_code}{tail}"

    @property
    def unversioned(self) -> ServiceId:
        """Access rights are granted per service code, never per version."""
        if self.service_version is None:
            return self  # the same value (asked twice per exchange on a provider node)
        return ServiceId(self.provider, self.service_code)

    def r1_path(self) -> str:
        """The ``/r1/...`` path prefix, each part percent-encoded on its own."""
        parts = [*str(self.provider).split("/"), self.service_code]
        return "/r1/" + "/".join(quote(p, safe="") for p in parts)


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """A node (X-Road: security server), owned by a member."""

    owner: MemberId
    server_code: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.server_code}"


@_cached
def parse_member_id(text: str) -> MemberId:
    return MemberId(*_split(text, "member", (3,)))


@_cached
def parse_subsystem_id(text: str) -> SubsystemId:
    return SubsystemId(*_split(text, "subsystem", (4,)))


@_cached
def parse_client_id(text: str) -> ClientId:
    """``INSTANCE/CLASS/MEMBER[/SUBSYSTEM]``; each part may be percent-encoded (r1)."""
    parts = _split(text.strip(), "client", (3, 4), decode=True)
    return MemberId(*parts) if len(parts) == 3 else SubsystemId(*parts)


# Services of a member rather than a subsystem. X-Road keeps only its operational-monitoring
# metaservices there: they belong to the owner member of the security server they query.
MEMBER_SERVICES = frozenset({"getSecurityServerOperationalData", "getSecurityServerHealthData"})


@_cached
def parse_service_id(text: str) -> ServiceId:
    """``INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICECODE[/VERSION]`` (subsystem required here),
    or ``INSTANCE/CLASS/MEMBER/SERVICECODE`` for the member services of MEMBER_SERVICES."""
    raw = text.split("/")
    if len(raw) == 4 and raw[3] in MEMBER_SERVICES:
        parts = _split(text, "service", (4,))
        return ServiceId(MemberId(*parts[:3]), parts[3])
    parts = _split(text, "service", (5, 6))
    provider = SubsystemId(*parts[:4])
    return ServiceId(provider, parts[4], parts[5] if len(parts) == 6 else None)


@_cached
def parse_r1_service(raw: str) -> ServiceId:
    """``INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICECODE`` of an r1 URL, parts percent-encoded."""
    parts = _split(raw, "service", (5,), decode=True)
    return ServiceId(SubsystemId(*parts[:4]), parts[4])


@_cached
def parse_node_id(text: str) -> NodeId:
    parts = _split(text, "node", (4,))
    return NodeId(MemberId(*parts[:3]), parts[3])
