"""Identifier parsing: strict parts, exact part counts, BadRequest on anything else (the
client system's fault, Client.BadRequest, when its node reads it in a request head)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xroad_hub.errors import CLIENT, ProtocolError, XRoadError
from xroad_hub.protocol.identifiers import (
    MemberId,
    NodeId,
    ServiceId,
    SubsystemId,
    parse_client_id,
    parse_member_id,
    parse_node_id,
    parse_service_id,
    parse_subsystem_id,
    valid_part,
)

ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'()+,-.=?"

PARSERS = [
    parse_member_id,
    parse_subsystem_id,
    parse_client_id,
    parse_service_id,
    parse_node_id,
]


def _bad_request(fn, text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(text)
    assert info.value.code == "BadRequest"
    blamed = XRoadError.blame(CLIENT, info.value)
    assert (blamed.code, blamed.status) == ("Client.BadRequest", 400)
    return info.value


# --- valid parsing ---------------------------------------------------------------------------


def test_parse_member_id() -> None:
    m = parse_member_id("TH/GOV/DOPA")
    assert m == MemberId("TH", "GOV", "DOPA")
    assert str(m) == "TH/GOV/DOPA"
    assert m.member is m
    assert m.object_type == "MEMBER"


def test_parse_subsystem_id() -> None:
    s = parse_subsystem_id("TH/GOV/DOPA/population")
    assert s == SubsystemId("TH", "GOV", "DOPA", "population")
    assert s.member == MemberId("TH", "GOV", "DOPA")
    assert s.object_type == "SUBSYSTEM"
    assert str(s) == "TH/GOV/DOPA/population"


def test_parse_client_id_member_or_subsystem() -> None:
    assert parse_client_id("TH/GOV/DOPA") == MemberId("TH", "GOV", "DOPA")
    assert parse_client_id("TH/GOV/DOPA/population") == SubsystemId(
        "TH", "GOV", "DOPA", "population"
    )


def test_parse_client_id_strips_surrounding_whitespace() -> None:
    assert parse_client_id("  TH/GOV/DOPA/population \t") == SubsystemId(
        "TH", "GOV", "DOPA", "population"
    )


def test_parse_client_id_decodes_each_part() -> None:
    # r1 percent-encodes each part on its own; decoded parts must still be legal.
    assert parse_client_id("TH/GOV/DOPA/pop%28x%29") == SubsystemId("TH", "GOV", "DOPA", "pop(x)")


def test_parse_service_id_with_and_without_version() -> None:
    s = parse_service_id("TH/GOV/DOPA/population/personInfo/v1")
    assert s.provider == SubsystemId("TH", "GOV", "DOPA", "population")
    assert s.service_code == "personInfo"
    assert s.service_version == "v1"
    assert str(s) == "TH/GOV/DOPA/population/personInfo/v1"
    u = parse_service_id("TH/GOV/DOPA/population/personInfo")
    assert u.service_version is None
    assert str(u) == "TH/GOV/DOPA/population/personInfo"


def test_parse_node_id() -> None:
    n = parse_node_id("TH/GOV/DGA/hub1")
    assert n == NodeId(MemberId("TH", "GOV", "DGA"), "hub1")
    assert str(n) == "TH/GOV/DGA/hub1"


def test_every_allowed_character_is_accepted() -> None:
    part = ALLOWED
    assert valid_part(part)
    assert parse_member_id(f"{part}/{part}/{part}") == MemberId(part, part, part)


@pytest.mark.parametrize("part", ["a.b", "...", ".a", "a..", "'", "?", "=", "+"])
def test_dots_are_fine_inside_parts(part: str) -> None:
    assert valid_part(part)
    assert parse_member_id(f"TH/GOV/{part}").member_code == part


def test_part_length_limit() -> None:
    assert valid_part("a" * 255)
    assert not valid_part("a" * 256)
    _bad_request(parse_member_id, "TH/GOV/" + "a" * 256)


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_part",
    [
        "po_p",
        "po p",
        " pop",
        "pop ",
        "a\tb",
        "a\nb",
        "a\\b",
        "a%b",
        "a#b",
        "a&b",
        "a;b",
        "a:b",
        "a@b",
        "a*b",
        "a!b",
        "a~b",
        "ä",
        "a\x00b",
        "",
        ".",
        "..",
    ],
)
@pytest.mark.parametrize("fn", PARSERS)
def test_illegal_parts_rejected_in_every_kind(fn, bad_part: str) -> None:
    n = {
        parse_member_id: 3,
        parse_subsystem_id: 4,
        parse_client_id: 4,
        parse_service_id: 5,
        parse_node_id: 4,
    }[fn]
    parts = ["TH", "GOV", "DOPA", "population", "svc"][:n]
    for i in range(n):
        bad = list(parts)
        bad[i] = bad_part
        text = "/".join(bad)
        if fn is parse_client_id and text != text.strip():
            continue  # the client parser strips the whole header value, by design
        _bad_request(fn, text)


@pytest.mark.parametrize(
    "encoded",
    ["pop%2Fx", "pop%2fx", "%2E", "%2e%2e", "pop%5Cx", "pop%20x", "pop%5Fx", "pop%00", "%"],
)
def test_client_id_percent_encoded_illegal_parts_rejected(encoded: str) -> None:
    _bad_request(parse_client_id, f"TH/GOV/DOPA/{encoded}")
    _bad_request(parse_client_id, f"TH/GOV/{encoded}")


def test_client_id_encoded_slash_does_not_add_a_part() -> None:
    # %2F inside a part must fail the character check, not turn 3 parts into 4.
    err = _bad_request(parse_client_id, "TH/GOV/DOPA%2Fpopulation")
    assert "illegal" in err.message


def test_other_parsers_do_not_decode() -> None:
    _bad_request(parse_member_id, "TH/GOV/DOPA%28x%29")
    _bad_request(parse_service_id, "TH/GOV/DOPA/population/person%49nfo")


def test_client_id_invalid_utf8_escape_is_bad_request() -> None:
    _bad_request(parse_client_id, "TH/GOV/DOPA/%FF")


@pytest.mark.parametrize(
    ("fn", "texts"),
    [
        (parse_member_id, ["TH/GOV", "TH/GOV/DOPA/x", "TH", "", "TH/GOV/DOPA/"]),
        (parse_subsystem_id, ["TH/GOV/DOPA", "TH/GOV/DOPA/x/y", "/TH/GOV/DOPA"]),
        (parse_client_id, ["TH/GOV", "TH/GOV/DOPA/x/y", "", "TH//GOV/DOPA"]),
        (parse_service_id, ["TH/GOV/DOPA/x", "TH/GOV/DOPA/x/s/v/extra", "TH/GOV/DOPA/x/s/"]),
        (parse_node_id, ["TH/GOV/DGA", "TH/GOV/DGA/hub1/x"]),
    ],
)
def test_wrong_part_counts_rejected(fn, texts: list[str]) -> None:
    for text in texts:
        _bad_request(fn, text)


def test_service_id_requires_subsystem() -> None:
    # 4 parts would be member + service code: refused, a subsystem is mandatory.
    _bad_request(parse_service_id, "TH/GOV/DOPA/personInfo")


# --- ServiceId helpers ---------------------------------------------------------------------


def test_unversioned_drops_version_only() -> None:
    s = parse_service_id("TH/GOV/DOPA/population/personInfo/v2")
    u = s.unversioned
    assert u == ServiceId(SubsystemId("TH", "GOV", "DOPA", "population"), "personInfo")
    assert u.service_version is None
    assert u == parse_service_id("TH/GOV/DOPA/population/personInfo/v1").unversioned
    assert u.unversioned == u


def test_r1_path_plain() -> None:
    s = parse_service_id("TH/GOV/DOPA/population/personInfo/v1")
    # no version in r1 URLs
    assert s.r1_path() == "/r1/TH/GOV/DOPA/population/personInfo"


def test_r1_path_percent_encodes_each_part() -> None:
    s = ServiceId(SubsystemId("TH", "GOV", "A(1)", "x=y?"), "q'+,z")
    assert s.r1_path() == "/r1/TH/GOV/A%281%29/x%3Dy%3F/q%27%2B%2Cz"


def test_r1_path_member_provider() -> None:
    s = ServiceId(MemberId("TH", "GOV", "DOPA"), "svc")
    assert s.r1_path() == "/r1/TH/GOV/DOPA/svc"


def test_r1_path_parts_decode_back() -> None:
    # The encoded client part of an r1 path parses back to the same identifier.
    sub = SubsystemId("TH", "G.O=V", "A(1)", "x+y?")
    encoded = "/".join(ServiceId(sub, "s").r1_path().split("/")[2:6])
    assert parse_client_id(encoded) == sub


# --- round-trip property -------------------------------------------------------------------

part = st.text(alphabet=ALLOWED, min_size=1, max_size=20).filter(lambda p: p not in (".", ".."))


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(part, min_size=3, max_size=4))
def test_client_id_round_trip(parts: list[str]) -> None:
    text = "/".join(parts)
    parsed = parse_client_id(text)
    assert str(parsed) == text
    assert isinstance(parsed, MemberId if len(parts) == 3 else SubsystemId)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(part, min_size=5, max_size=6))
def test_service_id_round_trip(parts: list[str]) -> None:
    text = "/".join(parts)
    assert str(parse_service_id(text)) == text


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(part, min_size=4, max_size=4))
def test_node_and_subsystem_round_trip(parts: list[str]) -> None:
    text = "/".join(parts)
    assert str(parse_node_id(text)) == text
    assert str(parse_subsystem_id(text)) == text
    assert str(parse_member_id("/".join(parts[:3]))) == "/".join(parts[:3])


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1, max_size=10))
def test_valid_part_matches_the_character_rule(text: str) -> None:
    expected = all(c in ALLOWED for c in text) and len(text) <= 255 and text not in (".", "..")
    assert valid_part(text) is expected
