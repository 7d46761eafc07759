"""The signed metadata types: one encode, byte for byte what nodes have always signed, and
one strict parse (a missing, unknown or mistyped field is InvalidMessage)."""

from __future__ import annotations

import dataclasses
import time
import uuid

import orjson
import pytest

from xroad_hub.errors import ProtocolError
from xroad_hub.protocol.exchange import AnswerMeta, RequestMeta, new_id
from xroad_hub.protocol.identifiers import parse_node_id, parse_service_id, parse_subsystem_id

# Bytes the consumer's inline dict literal produced before the types existed (canonical()
# of it): signatures, request hashes, logs and evidence bundles over them must keep verifying.
GOLDEN_REQUEST = (
    b'{"body_sha512":"z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGl'
    b'ODJ6+SfaPg==","client":"TH/GOV/DGA/devportal","created":1767225600.123456,"headers":[["Cont'
    b'ent-Type","application/json"],["Accept","application/json"]],"id":"m-1","issue":null,"kind":'
    b'"request","method":"POST","path":"/v1/pets/12%20b","query":"a=1&a=2","represented_party":"CO'
    b'M/0105744622488","request_id":"r-1","service":"TH/GOV/DBD/registry/echo","target_node":"TH/G'
    b'OV/DBD/hub1","user_id":"TH1101700203450","v":1}'
)
GOLDEN_REQUEST_ALL = (
    b'{"body_sha512":"z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGl'
    b'ODJ6+SfaPg==","client":"TH/GOV/DGA/devportal","created":1767225600.123456,"evidence_type":"'
    b'company","headers":[["Content-Type","application/json"],["Accept","application/json"]],"id":'
    b'"m-1","issue":null,"kind":"request","legal_basis":"Public Health Act B.E. 2535 s.38","method'
    b'":"POST","path":"/v1/pets/12%20b","protocol":"soap","purpose":"food-business-licence","purpo'
    b'se_default":true,"query":"a=1&a=2","represented_party":"COM/0105744622488","request_id":"r-1'
    b'","service":"TH/GOV/DBD/registry/echo","target_node":"TH/GOV/DBD/hub1","user_id":"TH11017002'
    b'03450","v":1}'
)
GOLDEN_ANSWER = (
    b'{"body_sha512":"def=","created":1767225600.5,"headers":[["Content-Type","application/json"]]'
    b',"id":"m-1","kind":"response","request_hash":"abc=","request_id":"r-1","service":"TH/GOV/DBD'
    b'/registry/echo/v1","status":200,"v":1}'
)

REQUEST = RequestMeta(
    id="m-1",
    request_id="r-1",
    client=parse_subsystem_id("TH/GOV/DGA/devportal"),
    service=parse_service_id("TH/GOV/DBD/registry/echo"),
    target_node=parse_node_id("TH/GOV/DBD/hub1"),
    method="POST",
    path="/v1/pets/12%20b",
    query="a=1&a=2",
    headers=(("Content-Type", "application/json"), ("Accept", "application/json")),
    user_id="TH1101700203450",
    issue=None,
    represented_party="COM/0105744622488",
    created=1767225600.123456,
    body_sha512="z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
)
ANSWER = AnswerMeta(
    id="m-1",
    request_id="r-1",
    service=parse_service_id("TH/GOV/DBD/registry/echo/v1"),
    status=200,
    headers=(("Content-Type", "application/json"),),
    request_hash="abc=",
    created=1767225600.5,
    body_sha512="def=",
)


def test_request_encodes_to_the_bytes_nodes_have_always_signed() -> None:
    assert REQUEST.encode() == GOLDEN_REQUEST
    full = dataclasses.replace(
        REQUEST,
        purpose="food-business-licence",
        legal_basis="Public Health Act B.E. 2535 s.38",
        evidence_type="company",
        purpose_default=True,
        protocol="soap",
    )
    assert full.encode() == GOLDEN_REQUEST_ALL


def test_answer_encodes_to_the_bytes_nodes_have_always_signed() -> None:
    assert ANSWER.encode() == GOLDEN_ANSWER


@pytest.mark.parametrize("golden", [GOLDEN_REQUEST, GOLDEN_REQUEST_ALL])
def test_request_round_trips(golden: bytes) -> None:
    meta = RequestMeta.parse(golden)
    assert meta.encode() == golden
    assert RequestMeta.parse(orjson.loads(golden)) == meta


def test_answer_round_trips() -> None:
    assert AnswerMeta.parse(GOLDEN_ANSWER) == ANSWER
    assert AnswerMeta.parse(GOLDEN_ANSWER).encode() == GOLDEN_ANSWER


def test_optional_request_fields_are_read() -> None:
    meta = RequestMeta.parse(GOLDEN_REQUEST_ALL)
    assert (meta.purpose, meta.purpose_default, meta.protocol) == (
        "food-business-licence",
        True,
        "soap",
    )
    plain = RequestMeta.parse(GOLDEN_REQUEST)
    assert (plain.purpose, plain.purpose_default, plain.protocol) == (None, False, "rest")


def _changed(golden: bytes, **changes: object) -> dict[str, object]:
    doc = orjson.loads(golden)
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return doc


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"v": 2}, "version 1 request"),
        ({"kind": "response"}, "version 1 request"),
        ({"client": _DROP}, "lacks client"),
        ({"user_id": _DROP}, "lacks user_id"),
        ({"created": _DROP}, "lacks created"),
        ({"secret": "x"}, "unknown fields secret"),
        ({"client": "TH/GOV/DGA/dev portal"}, "client"),
        ({"client": 7}, "client is not a string"),
        ({"service": "TH/GOV/DBD"}, "service"),
        ({"target_node": "nowhere"}, "target_node"),
        ({"id": None}, "id is not a string"),
        ({"method": ["GET"]}, "method is not a string"),
        ({"user_id": 5}, "user_id is not a string or null"),
        ({"created": "yesterday"}, "created is not a number"),
        ({"created": True}, "created is not a number"),
        ({"headers": "Accept: */*"}, "headers is not a list"),
        ({"headers": [["Accept"]]}, "headers is not a list"),
        ({"headers": [["Accept", 1]]}, "headers is not a list"),
        ({"purpose_default": False}, "purpose_default is true when present"),
        ({"protocol": "rest"}, "protocol is 'soap' when present"),
        ({"protocol": "grpc"}, "protocol is 'soap' when present"),
        ({"purpose": 1}, "purpose is not a string or null"),
    ],
)
def test_request_parse_is_strict(changes: dict[str, object], says: str) -> None:
    with pytest.raises(ProtocolError) as info:
        RequestMeta.parse(_changed(GOLDEN_REQUEST, **changes))
    assert info.value.code == "InvalidMessage"
    assert says in info.value.message


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"kind": "request"}, "version 1 response"),
        ({"status": "200"}, "status"),
        ({"status": 200.0}, "status"),
        ({"status": 99}, "status"),
        ({"status": True}, "status"),
        ({"request_hash": _DROP}, "lacks request_hash"),
        ({"service": _DROP}, "lacks service"),
        ({"headers": {"a": "b"}}, "headers is not a list"),
        ({"extra": 1}, "unknown fields extra"),
    ],
)
def test_answer_parse_is_strict(changes: dict[str, object], says: str) -> None:
    with pytest.raises(ProtocolError) as info:
        AnswerMeta.parse(_changed(GOLDEN_ANSWER, **changes))
    assert info.value.code == "InvalidMessage"
    assert says in info.value.message


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'"request"'])
def test_parse_of_what_is_not_an_object(data: bytes) -> None:
    for parse in (RequestMeta.parse, AnswerMeta.parse):
        with pytest.raises(ProtocolError) as info:
            parse(data)
        assert info.value.code == "InvalidMessage"


def test_node_ids_are_version_7_uuids_in_time_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids a node gives its messages: what ``str(uuid.UUID)`` writes, version 7 (RFC
    9562) with the millisecond they were made, random after it, so in time order across
    milliseconds (the logs' message-id index grows at its end)."""
    ids = [new_id() for _ in range(10000)]
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert abs((u.int >> 80) - time.time() * 1000) < 60_000  # this clock's time
    assert len(set(ids)) == len(ids)
    # Each of the 74 bits after the time is random: set in about half of the ids (a bit
    # that is not is 10 standard deviations from half).
    rand_a = [(uuid.UUID(text).int >> 64) & 0xFFF for text in ids]
    rand_b = [uuid.UUID(text).int & ((1 << 62) - 1) for text in ids]
    bits = [[v >> i & 1 for v in rand_a] for i in range(12)]
    bits += [[v >> i & 1 for v in rand_b] for i in range(62)]
    for bit in bits:
        assert abs(sum(bit) / len(ids) - 0.5) < 0.05
    # In time order across milliseconds (a clock that steps back between two calls is not
    # this test's concern: the clock is set here).
    monkeypatch.setattr(time, "time_ns", lambda: 1_767_225_600_123_999_999)
    first = [new_id() for _ in range(100)]
    monkeypatch.setattr(time, "time_ns", lambda: 1_767_225_600_124_000_000)
    second = [new_id() for _ in range(100)]
    assert {uuid.UUID(text).int >> 80 for text in first} == {1_767_225_600_123}
    assert max(first) < min(second)
