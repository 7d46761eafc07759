"""Per-client admission: how much of a node one authenticated caller may hold at once.

Each exchange is admitted before its body is read, with the bytes it may bring (its
Content-Length, or the body limit when it does not say), and counted until it is answered.
A caller over its number of exchanges or its bytes in flight is refused at once with
``*.TooManyRequests`` (HTTP 429, Retry-After), before anything of its request is read: one
client system (or one peer node) cannot take the memory and the parsing time others need.
"""

from __future__ import annotations

from aiohttp import web

from xroad_hub.errors import XRoadError

__all__ = ["TOO_MANY", "ClientLimits", "body_reservation"]

TOO_MANY = "TooManyRequests"


class ClientLimits:
    def __init__(self, max_concurrent: int, max_bytes: int, *, raise_as: str) -> None:
        if max_concurrent < 1 or max_bytes < 1:
            raise ValueError("per-client limits must be positive")
        self.max_concurrent = max_concurrent
        self.max_bytes = max_bytes
        self._raise_as = raise_as
        self._count: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def in_flight(self, key: str) -> tuple[int, int]:
        return self._count.get(key, 0), self._bytes.get(key, 0)

    def admit(self, key: str, reserve: int) -> _Admission:
        """A block holding one request of ``key`` and ``reserve`` bytes; entering it raises
        TooManyRequests when ``key``'s share is taken."""
        return _Admission(self, key, reserve)

    def _take(self, key: str, reserve: int) -> None:
        count, used = self.in_flight(key)
        # One request is always admitted alone (its size is bounded by the body limit).
        if count >= self.max_concurrent or (count and used + reserve > self.max_bytes):
            raise XRoadError(
                f"{self._raise_as}.{TOO_MANY}",
                f"too much at once from {key}: at most {self.max_concurrent} requests and"
                f" {self.max_bytes} bytes of request bodies in flight per client; retry when"
                " earlier requests have been answered",
                status=429,
            )
        self._count[key] = count + 1
        self._bytes[key] = used + reserve

    def _release(self, key: str, reserve: int) -> None:
        count, used = self.in_flight(key)
        if count <= 1:
            self._count.pop(key, None)
            self._bytes.pop(key, None)
        else:
            self._count[key] = count - 1
            self._bytes[key] = used - reserve


class _Admission:
    """``ClientLimits.admit``'s block (a class: one per exchange on each node, cheaper than
    a generator-based context manager)."""

    __slots__ = ("_held", "_key", "_limits", "_reserve")

    def __init__(self, limits: ClientLimits, key: str, reserve: int) -> None:
        self._limits, self._key, self._reserve = limits, key, reserve
        self._held = False

    def __enter__(self) -> None:
        self._limits._take(self._key, self._reserve)
        self._held = True

    def __exit__(self, *exc: object) -> None:
        if self._held:  # released once, however often it is left
            self._held = False
            self._limits._release(self._key, self._reserve)


def body_reservation(request: web.Request, limit: int) -> int:
    """The bytes a request's body may take: its Content-Length, or the whole limit for a
    chunked body (its size is known only once read); bodies over the limit are refused."""
    if request.content_length is not None:
        return min(request.content_length, limit)
    return limit if request.body_exists else 0
