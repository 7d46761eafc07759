"""Signed-message envelopes: exact framing, strict bounds, body bound to the signed digest."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xroad_hub.protocol.message import (
    MAGIC,
    MAX_CERT,
    MAX_META,
    MAX_SIGNATURE,
    MessageError,
    body_digest,
    canonical,
    decode_envelope,
    encode_envelope,
)

SIG = bytes(range(70))
CERT = b"\x30\x82" + bytes(range(256)) * 2


def _meta(body: bytes, **extra: object) -> bytes:
    return canonical({"v": 1, "kind": "request", "body_sha512": body_digest(body), **extra})


def _envelope(body: bytes = b'{"hello":"world"}', **extra: object) -> tuple[bytes, bytes]:
    meta = _meta(body, **extra)
    return encode_envelope(meta, SIG, CERT, body), meta


def _error(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_envelope(data)
    return info.value


def test_canonical_is_sorted_and_compact() -> None:
    assert canonical({"b": 1, "a": [1, {"d": None, "c": "x"}]}) == (
        b'{"a":[1,{"c":"x","d":null}],"b":1}'
    )


def test_round_trip() -> None:
    body = b"\x00\x01binary body\xff"
    data, meta = _envelope(body, id="m-1", path="/p")
    env = decode_envelope(data)
    assert env.meta_bytes == meta
    assert env.meta == orjson.loads(meta)
    assert env.meta["id"] == "m-1"
    assert env.signature == SIG
    assert env.cert_der == CERT
    assert env.body == body


def test_exact_layout() -> None:
    body = b"B"
    meta = _meta(body)
    data = encode_envelope(meta, b"S", b"C", body)
    assert data == (
        b"XHM1"
        + struct.pack(">I", len(meta))
        + meta
        + struct.pack(">I", 1)
        + b"S"
        + struct.pack(">I", 1)
        + b"C"
        + b"B"
    )


def test_round_trip_empty_parts() -> None:
    meta = _meta(b"")
    env = decode_envelope(encode_envelope(meta, b"", b"", b""))
    assert (env.signature, env.cert_der, env.body) == (b"", b"", b"")


def test_round_trip_at_size_limits() -> None:
    body = b"x"
    meta = _meta(body, pad="p" * 1000)
    sig, cert = b"s" * MAX_SIGNATURE, b"c" * MAX_CERT
    env = decode_envelope(encode_envelope(meta, sig, cert, body))
    assert env.signature == sig and env.cert_der == cert


def test_truncated_everywhere() -> None:
    data, _ = _envelope()
    header_end = len(MAGIC) + 4 + len(_meta(b'{"hello":"world"}')) + 4 + len(SIG) + 4 + len(CERT)
    for cut in range(header_end):
        err = _error(data[:cut])
        assert err.code == "InvalidMessage", cut


def test_truncated_body_is_signature_error() -> None:
    data, _ = _envelope()
    err = _error(data[:-1])
    assert err.code == "InvalidSignatureValue"


@pytest.mark.parametrize("magic", [b"XHM2", b"xhm1", b"\x00HM1", b"", b"XHM"])
def test_wrong_magic(magic: bytes) -> None:
    data, _ = _envelope()
    err = _error(magic + data[4:])
    assert err.code == "InvalidMessage"
    assert "magic" in str(err)


@pytest.mark.parametrize(("which", "limit"), [(0, MAX_META), (1, MAX_SIGNATURE), (2, MAX_CERT)])
def test_oversized_lengths(which: int, limit: int) -> None:
    parts = [_meta(b""), b"s", b"c"]
    data = bytearray(b"XHM1")
    for i, p in enumerate(parts):
        n = limit + 1 if i == which else len(p)
        data += struct.pack(">I", n) + p
    # the data that follows is long enough; only the declared length is out of bounds
    data += b"\x00" * (limit + 10)
    err = _error(bytes(data))
    assert err.code == "InvalidMessage"
    assert "out of bounds" in str(err)


def test_length_past_end_of_data() -> None:
    meta = _meta(b"")
    data = b"XHM1" + struct.pack(">I", len(meta) + 1) + meta
    assert _error(data).code == "InvalidMessage"
    data = b"XHM1" + struct.pack(">I", 0xFFFFFFFF) + meta
    assert _error(data).code == "InvalidMessage"


@pytest.mark.parametrize(
    "meta", [b"not json", b"{", b"\xff\xfe", b"", b"[1,2]", b'"str"', b"42", b"null"]
)
def test_meta_not_a_json_object(meta: bytes) -> None:
    data = encode_envelope(meta, SIG, CERT, b"")
    err = _error(data)
    assert err.code == "InvalidMessage"


@pytest.mark.parametrize(
    "meta",
    [
        canonical({"v": 1}),
        canonical({"body_sha512": None}),
        canonical({"body_sha512": body_digest(b"other")}),
        canonical({"body_sha512": body_digest(b"body").lower()}),
    ],
)
def test_body_not_matching_digest(meta: bytes) -> None:
    err = _error(encode_envelope(meta, SIG, CERT, b"body"))
    assert err.code == "InvalidSignatureValue"


def test_appended_bytes_break_the_digest() -> None:
    data, _ = _envelope()
    assert _error(data + b"x").code == "InvalidSignatureValue"


def test_message_error_is_value_error() -> None:
    err = _error(b"nope")
    assert isinstance(err, ValueError)


@settings(max_examples=300, deadline=None, database=None)
@given(
    body=st.binary(max_size=64),
    sig=st.binary(max_size=72),
    cert=st.binary(max_size=64),
    data=st.data(),
)
def test_single_byte_flip_never_silently_same(
    body: bytes, sig: bytes, cert: bytes, data: st.DataObject
) -> None:
    meta = _meta(body, id="x")
    original = encode_envelope(meta, sig, cert, body)
    pos = data.draw(st.integers(0, len(original) - 1), label="pos")
    delta = data.draw(st.integers(1, 255), label="xor")
    flipped = bytearray(original)
    flipped[pos] ^= delta
    body_start = len(original) - len(body)
    try:
        env = decode_envelope(bytes(flipped))
    except MessageError as exc:
        assert exc.code in ("InvalidMessage", "InvalidSignatureValue")
        return
    # Decoded without error: something must differ from what was encoded...
    assert (env.meta_bytes, env.signature, env.cert_der, env.body) != (meta, sig, cert, body)
    # ...a flipped body byte is always caught by the signed digest...
    assert pos < body_start, "flipped body byte decoded without error"
    # ...and a change outside signature/cert shows in the signed part (meta or body).
    meta_end = len(MAGIC) + 4 + len(meta)
    if pos < meta_end:
        assert (env.meta_bytes, env.body) != (meta, body)
