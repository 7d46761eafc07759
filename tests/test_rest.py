"""r1 sans-I/O: strict targets, X-Road-Client, header filtering, request hash, error bodies."""

from __future__ import annotations

import base64
import hashlib
import json
import xml.etree.ElementTree as ET

import pytest

from xroad_hub.errors import CLIENT, ProtocolError, XRoadError
from xroad_hub.protocol.identifiers import MemberId, ServiceId, SubsystemId
from xroad_hub.protocol.rest import (
    MAX_URI_LENGTH,
    error_response,
    filter_request_headers,
    filter_response_headers,
    parse_r1_target,
    request_hash,
    select_client,
)

BASE = "/r1/TH/GOV/DOPA/population/personInfo"
SERVICE = ServiceId(SubsystemId("TH", "GOV", "DOPA", "population"), "personInfo")


def _refused(raw_path: str, raw_query: str = "", code: str = "Client.BadRequest") -> XRoadError:
    """The error the client's node answers for a target its client system sent."""
    with pytest.raises(ProtocolError) as info:
        parse_r1_target(raw_path, raw_query)
    blamed = XRoadError.blame(CLIENT, info.value)
    assert blamed.code == code
    assert blamed.status == 400
    return blamed


# --- parse_r1_target: valid --------------------------------------------------------------


def test_plain_target() -> None:
    t = parse_r1_target(BASE)
    assert t.service == SERVICE
    assert t.service.service_version is None
    assert t.path == ""
    assert t.query == ""


def test_path_remainder_and_query_kept_raw() -> None:
    t = parse_r1_target(BASE + "/persons/%E0%B8%81/x%20y", "id=1&id=2&q=a%2Fb&&x")
    assert t.service == SERVICE
    assert t.path == "/persons/%E0%B8%81/x%20y"
    assert t.query == "id=1&id=2&q=a%2Fb&&x"


def test_trailing_slash_is_kept() -> None:
    assert parse_r1_target(BASE + "/").path == "/"
    assert parse_r1_target(BASE + "/a/").path == "/a/"


def test_pchar_sub_delims_in_path_allowed() -> None:
    t = parse_r1_target(BASE + "/a:b@c;d=e,f!$&'()*+~_-.x")
    assert t.path == "/a:b@c;d=e,f!$&'()*+~_-.x"


def test_dots_inside_segments_are_not_traversal() -> None:
    assert parse_r1_target(BASE + "/a..b/.x/x.").path == "/a..b/.x/x."
    # A segment of dots only is refused whatever their number: Windows servers trim
    # trailing dots and spaces, so "..." and ".. " are ".." there.


def test_identifier_parts_are_percent_decoded() -> None:
    t = parse_r1_target("/r1/TH/GOV/A%281%29/x%3Dy/q%27z")
    assert t.service == ServiceId(SubsystemId("TH", "GOV", "A(1)", "x=y"), "q'z")
    # and the r1_path of the result encodes back to the same target
    assert t.service.r1_path() == "/r1/TH/GOV/A%281%29/x%3Dy/q%27z"


def test_uri_length_limit_with_query() -> None:
    # "path?query" of exactly MAX_URI_LENGTH is fine, one more character is not
    path = BASE + "/x"
    query = "q=" + "a" * (MAX_URI_LENGTH - len(path) - 1 - 2)
    assert len(path) + 1 + len(query) == MAX_URI_LENGTH
    assert parse_r1_target(path, query).query == query
    err = _refused(path, query + "a")
    assert str(MAX_URI_LENGTH) in err.message


def test_uri_length_limit_long_path_refused() -> None:
    _refused(BASE + "/" + "a" * MAX_URI_LENGTH)
    _refused(BASE + "/" + "a" * (MAX_URI_LENGTH - len(BASE)))  # 2001 characters


def test_uri_length_checked_before_anything_else() -> None:
    # even a non-r1 path that is too long is refused for its length, not its prefix
    _refused("/r2/" + "a" * MAX_URI_LENGTH)


def test_uri_just_below_limit_accepted() -> None:
    path = BASE + "/" + "a" * (MAX_URI_LENGTH - len(BASE) - 2)
    assert len(path) == MAX_URI_LENGTH - 1
    assert parse_r1_target(path).path.startswith("/aaa")


def test_uri_of_exactly_max_length_without_query_accepted() -> None:
    path = BASE + "/" + "a" * (MAX_URI_LENGTH - len(BASE) - 1)
    assert len(path) == MAX_URI_LENGTH
    assert parse_r1_target(path).path.startswith("/aaa")


# --- parse_r1_target: refused -----------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        "/..",
        "/.",
        "/a/../b",
        "/a/./b",
        "/%2e%2e",
        "/%2E%2E/etc",
        "/%2e",
        "/.%2e",
        "/%2e.",
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%5cb",
        "/a%00b",
        "/a//b",
        "//b",
        "//",
        "/a//",
        "/a/b//",
        "/a/..;/",
        "/a\\b",
        "/a b",
        "/a%zz",
        "/a%",
        "/a\x00b",
        "/a?b",
        "/a#b",
        "/\u0e01",
        "/..;",
        "/a/..;x/b",
        "/%2e%2e;",
        "/..%3b",
        "/%252e%252e",
        "/%EF%BC%8E%EF%BC%8E",
        "/%E2%80%A5",
        "/...",
        "/.%20",
        "/%c0%ae",
        "/a%252fb",
        "/a%255cb",
        "/a%2500",
        "/a%EF%BC%8Fb",
    ],
)
def test_dangerous_paths_refused(tail: str) -> None:
    _refused(BASE + tail)


@pytest.mark.parametrize(
    "target",
    [
        "/r1/TH/GOV/DOPA/popu_lation/personInfo",
        "/r1/TH/GOV/DOPA/popu%20lation/personInfo",
        "/r1/TH/GOV/DOPA/pop%2Fx/personInfo",
        "/r1/TH/GOV/DOPA/../personInfo",
        "/r1/TH/GOV/DOPA/%2e%2e/personInfo",
        "/r1/TH/GOV/DOPA/./personInfo",
        "/r1/TH/GOV/DOPA/population/",
        "/r1/TH//DOPA/population/personInfo",
        "/r1/TH/GOV/DOPA/population/%FF",
        "/r1/TH/GOV/DOPA/population/p%E0%B8%81",
        "/r1/TH/GOV/DOPA/population/person_info",
    ],
)
def test_illegal_identifier_parts_refused(target: str) -> None:
    _refused(target)


@pytest.mark.parametrize(
    "path",
    [
        "/r2/TH/GOV/DOPA/population/personInfo",
        "/TH/GOV/DOPA/population/x",
        "/r1",
        "",
        "r1/TH/GOV/DOPA/population/personInfo",
        "/R1/TH/GOV/DOPA/population/personInfo",
    ],
)
def test_non_r1_prefix_is_invalid_protocol_version(path: str) -> None:
    _refused(path, code="Client.InvalidProtocolVersion")


@pytest.mark.parametrize(
    "path", ["/r1/", "/r1/TH", "/r1/TH/GOV/DOPA", "/r1/TH/GOV/DOPA/population"]
)
def test_fewer_than_five_parts_refused(path: str) -> None:
    _refused(path)


# --- select_client ------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [""], ["   "], ["TH/GOV/DGA/portal", ""]])
def test_missing_client_header(values: list[str]) -> None:
    with pytest.raises(ProtocolError) as info:
        select_client(values)
    assert XRoadError.blame(CLIENT, info.value).code == "Client.MissingHeader"
    assert XRoadError.blame(CLIENT, info.value).status == 400


def test_last_client_header_wins() -> None:
    assert select_client(["TH/GOV/DGA/first", "TH/GOV/DGA/second"]) == SubsystemId(
        "TH", "GOV", "DGA", "second"
    )
    assert select_client(["TH/GOV/bad_one", "TH/GOV/DGA"]) == MemberId("TH", "GOV", "DGA")


def test_last_client_header_wins_even_when_invalid() -> None:
    with pytest.raises(ProtocolError) as info:
        select_client(["TH/GOV/DGA/good", "TH/GOV/DGA/bad_one"])
    assert info.value.code == "BadRequest"


# --- header filtering ------------------------------------------------------------------------

DROPPED = [
    ("Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authenticate", "Basic"),
    ("Proxy-Authorization", "Basic eA=="),
    ("TE", "trailers"),
    ("Trailer", "Expires"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "h2c"),
    ("Host", "internal.example"),
    ("User-Agent", "curl/8"),
    ("Server", "nginx/1.2"),
    ("Content-Length", "12"),
    ("connection", "close"),
    ("HOST", "x"),
]
XROAD = [
    ("X-Road-Client", "TH/GOV/DGA/x"),
    ("X-Road-Service", "TH/GOV/DOPA/population/personInfo"),
    ("X-Road-Id", "abc"),
    ("X-Road-UserId", "TH1101700203450"),
    ("X-Road-Issue", "case-1"),
    ("X-Road-Request-Id", "r"),
    ("X-Road-Request-Hash", "h"),
    ("X-Road-Error", "Server.ServerProxy.AccessDenied"),
    ("X-Road-Security-Server", "TH/GOV/DGA/hub1"),
    ("X-Road-Represented-Party", "GOV/X"),
    ("x-road-id", "lowercase"),
]
KEPT = [
    ("Content-Type", "application/json"),
    ("Accept", "application/xml"),
    ("Cache-Control", "no-cache"),
    ("If-None-Match", '"abc"'),
    ("ETag", '"e1"'),
    ("Expires", "0"),
    ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ("X-Custom", "one"),
    ("X-Custom", "two"),
    ("Authorization", "Bearer xyz"),
    ("Accept-Language", "th"),
]


def _interleave() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    drops = DROPPED + XROAD
    for i in range(max(len(drops), len(KEPT))):
        if i < len(drops):
            out.append(drops[i])
        if i < len(KEPT):
            out.append(KEPT[i])
    return out


def test_filter_request_headers_drops_and_keeps_in_order() -> None:
    # Towards the service, credentials never pass (see test_e2e_traversal.py).
    assert filter_request_headers(_interleave()) == [h for h in KEPT if h[0] != "Authorization"]


def test_filter_response_headers_drops_and_keeps_in_order() -> None:
    assert filter_response_headers(_interleave()) == KEPT


def test_filter_request_headers_drop_param() -> None:
    out = filter_request_headers(_interleave(), drop=frozenset({"x-custom"}))
    assert out == [h for h in KEPT if h[0] not in ("Authorization", "X-Custom")]


def test_filter_headers_empty() -> None:
    assert filter_request_headers([]) == []
    assert filter_response_headers(iter([])) == []


def test_filter_keeps_values_unchanged() -> None:
    headers = [
        ("X-Weird", "  spaced , value ;q=1 "),
        ("Content-Type", "text/plain; charset=tis-620"),
    ]
    assert filter_request_headers(headers) == headers


# --- request hash -----------------------------------------------------------------------------


def test_request_hash_with_body() -> None:
    meta, body = b'{"a":1}', b"hello body"
    expected = base64.b64encode(
        hashlib.sha512(hashlib.sha512(meta).digest() + hashlib.sha512(body).digest()).digest()
    ).decode()
    assert request_hash(meta, body) == expected


def test_request_hash_without_body() -> None:
    meta = b'{"a":1}'
    assert request_hash(meta, b"") == base64.b64encode(hashlib.sha512(meta).digest()).decode()


def test_request_hash_is_sensitive_to_headers_and_body() -> None:
    h = request_hash(b"m", b"b")
    assert request_hash(b"m2", b"b") != h
    assert request_hash(b"m", b"b2") != h
    assert request_hash(b"m", b"") != h
    assert len(base64.b64decode(h)) == 64


# --- error_response --------------------------------------------------------------------------


def test_error_response_json_default() -> None:
    err = XRoadError.server_proxy("AccessDenied", "no access for you")
    for accept in (None, "", "*/*", "application/json", "application/json, application/xml"):
        status, headers, body = error_response(err, accept)
        assert status == 500
        assert headers["X-Road-Error"] == "Server.ServerProxy.AccessDenied"
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {
            "type": "Server.ServerProxy.AccessDenied",
            "message": "no access for you",
            "detail": err.detail,
        }


@pytest.mark.parametrize("accept", ["application/xml", "text/xml", "Application/XML;q=0.9"])
def test_error_response_xml_when_asked(accept: str) -> None:
    err = XRoadError.client("BadRequest", "bad <thing> & 'stuff'")
    status, headers, body = error_response(err, accept)
    assert status == 400
    assert headers["X-Road-Error"] == "Client.BadRequest"
    assert "xml" in headers["Content-Type"]
    root = ET.fromstring(body)
    assert root.tag == "error"
    assert root.findtext("type") == "Client.BadRequest"
    assert root.findtext("message") == "bad <thing> & 'stuff'"
    assert root.findtext("detail") == err.detail


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (XRoadError.client("MissingHeader", "m"), 400),
        (XRoadError.client("InvalidProtocolVersion", "m"), 400),
        (XRoadError.client_proxy("InternalError", "m"), 500),
        (XRoadError.server_proxy("ServiceFailed", "m"), 500),
        (XRoadError("Server.ClientProxy.LoggingFailed.TimestamperFailed", "m"), 500),
        (XRoadError("ClientX.Weird", "m"), 500),
    ],
)
def test_error_status_by_category(err: XRoadError, status: int) -> None:
    got, headers, _ = error_response(err, None)
    assert got == status
    assert headers["X-Road-Error"] == err.code


def test_error_detail_is_a_fresh_id_unless_given() -> None:
    a, b = XRoadError.client("BadRequest", "m"), XRoadError.client("BadRequest", "m")
    assert a.detail != b.detail
    assert XRoadError("Client.BadRequest", "m", detail="d-1").as_dict()["detail"] == "d-1"


def test_underscore_spellings_of_xroad_headers_are_filtered_too() -> None:
    # WSGI/CGI backends read X_Road_UserId as X-Road-UserId.
    headers = [("X_Road_UserId", "forged"), ("x_road_purpose", "forged"), ("X_Custom", "kept")]
    assert filter_request_headers(headers) == [("X_Custom", "kept")]
    assert filter_response_headers(headers) == [("X_Custom", "kept")]
