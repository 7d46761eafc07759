"""The framed node-to-node channel (sans I/O): many exchanges multiplexed on one TLS
connection, chosen in the handshake by ALPN, instead of one HTTP/1.1 request per exchange.

A frame is a fixed header (payload length, stream id, kind; big-endian) and its payload. The
client node opens odd stream ids, one per exchange; a REQUEST frame carries the signed
envelope, the REPLY frame of the same stream carries what the HTTP path would have answered
(status, content type, body: the answer's envelope or an X-Road error in JSON). A REFUSED
frame (stream 0) answers every exchange of a connection the provider will not serve (its
certificate is not a registered node's), after which the provider closes it.

Anything else is a broken or hostile peer: the reader raises FrameError and the connection
is cut off (the other connections are not concerned).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ALPN",
    "HEADER",
    "REFUSED",
    "REPLY",
    "REQUEST",
    "Frame",
    "FrameError",
    "FrameHead",
    "FrameReader",
    "decode_reply",
    "encode_reply",
    "frame_head",
]

ALPN = "xroad-hub-frames/1"

REQUEST, REPLY, REFUSED = 1, 2, 3
_KINDS = frozenset((REQUEST, REPLY, REFUSED))

_HEAD = struct.Struct("!IIB")  # payload length, stream id, kind
HEADER = _HEAD.size
_REPLY_HEAD = struct.Struct("!HH")  # status, length of the content type
# Content type of a reply, at most (a node's are short: its envelope's or JSON's).
MAX_CONTENT_TYPE = 256
REPLY_OVERHEAD = _REPLY_HEAD.size + MAX_CONTENT_TYPE


class FrameError(Exception):
    """The peer broke the framing: the connection cannot be read any further."""


@dataclass(frozen=True, slots=True)
class FrameHead:
    length: int
    stream: int
    kind: int


@dataclass(frozen=True, slots=True)
class Frame:
    head: FrameHead
    payload: bytes


def frame_head(length: int, stream: int, kind: int) -> bytes:
    return _HEAD.pack(length, stream, kind)


def encode_reply(
    stream: int, status: int, content_type: str, body: bytes, kind: int = REPLY
) -> list[bytes]:
    """The parts of a REPLY (or REFUSED) frame: the body is not copied into one buffer."""
    ctype = content_type.encode("latin-1")[:MAX_CONTENT_TYPE]
    head = _REPLY_HEAD.pack(status, len(ctype)) + ctype
    return [frame_head(len(head) + len(body), stream, kind) + head, body]


def decode_reply(payload: bytes) -> tuple[int, str, bytes]:
    if len(payload) < _REPLY_HEAD.size:
        raise FrameError("reply frame shorter than its header")
    status, n = _REPLY_HEAD.unpack_from(payload)
    end = _REPLY_HEAD.size + n
    if n > MAX_CONTENT_TYPE or len(payload) < end:
        raise FrameError("reply frame with a bad content type")
    return status, payload[_REPLY_HEAD.size : end].decode("latin-1"), payload[end:]


class FrameReader:
    """Splits the bytes of a connection into frames. ``feed`` yields each frame's head as
    soon as it is known (the caller may then ``discard`` the payload: it is skipped, never
    held) and then the frame. A frame longer than ``max_length`` that the caller does not
    discard at its head is refused before its payload is read."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buf = bytearray()
        self._head: FrameHead | None = None
        self._skipping = False
        self._discard = 0  # payload bytes of the current frame still to skip

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and is not complete."""
        return bool(self._buf) or self._head is not None

    @property
    def buffered(self) -> int:
        """The bytes read and not yet yielded: of a frame whose head was yielded, its
        payload so far."""
        return len(self._buf)

    def discard(self) -> None:
        """Skip the payload of the frame whose head was yielded last."""
        assert self._head is not None
        self._skipping, self._discard = True, self._head.length

    def feed(self, data: bytes) -> Iterator[FrameHead | Frame]:
        buf = self._buf
        buf += data
        while True:
            head = self._head
            if head is None:
                if len(buf) < HEADER:
                    return
                length, stream, kind = _HEAD.unpack_from(buf)
                if kind not in _KINDS:
                    raise FrameError(f"unknown frame kind {kind}")
                del buf[:HEADER]
                head = self._head = FrameHead(length, stream, kind)
                yield head
                if length > self.max_length and not self._skipping:
                    raise FrameError(f"frame of {length} bytes, over the limit {self.max_length}")
            if self._skipping:
                n = min(len(buf), self._discard)
                del buf[:n]
                self._discard -= n
                if self._discard:
                    return
                self._head, self._skipping = None, False
                continue
            if len(buf) < head.length:
                return
            payload = bytes(buf[: head.length])
            del buf[: head.length]
            self._head = None
            yield Frame(head, payload)
