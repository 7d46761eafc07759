"""Reading whole HTTP bodies with a size cap (aiohttp's ``read(n)`` returns what has arrived
so far, not n bytes, so a capped read must loop to the end)."""

from __future__ import annotations

from aiohttp import StreamReader

from xroad_hub.errors import HubError

__all__ = ["BodyTooLarge", "read_capped"]


class BodyTooLarge(HubError, ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


async def read_capped(stream: StreamReader, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
