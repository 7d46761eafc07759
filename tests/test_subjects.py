"""The data-subject index: the provider's node records whom each exchange concerns."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import orjson
import pytest

from xroad_hub.protocol.jsonbody import JsonBodyError, loads_json
from xroad_hub.protocol.subjects import (
    MAX_ANSWER_SUBJECTS,
    SubjectError,
    answer_subjects,
    extract_subjects,
    json_body_fields,
    parse_answer_locator,
    parse_locator,
)

from .conftest import Fed
from .sqlite_db import sqlite_db

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"
DEV = {"X-Road-Client": "TH/GOV/DGA/devportal"}


def test_locators_and_extraction() -> None:
    locs = [parse_locator(t) for t in ("path:2", "query:cid", "header:X-Subject")]
    got = extract_subjects(
        locs, "/persons/1101700203450/x", "cid=3100600123459&cid=&other=1",
        [("x-subject", "5100900123451"), ("X-Other", "no")],
    )  # fmt: skip
    assert got == ("1101700203450", "3100600123459", "5100900123451")
    assert extract_subjects(locs, "", "", []) == ()
    # Bounded and printable: padding goes, the rest is kept (escaped, cut) so the attempt
    # is on record.
    path1 = [parse_locator("path:1")]
    assert extract_subjects(path1, "/%0A", "", []) == ()
    assert extract_subjects(path1, "/" + "9" * 65, "", []) == ("9" * 64,)
    assert extract_subjects(path1, "/ab%01c", "", []) == ("ab\\x01c",)


@pytest.mark.parametrize(
    "written", ["1101700203450", "1-1017-00203-45-0", "1101700203450%00", "%201101700203450%20"]
)
def test_the_ways_one_id_is_written_are_one_subject(written: str) -> None:
    """The registry reads all of these as one person (DOL strips padding and dashes); so
    must the index, or the read would be missing from her data tracker."""
    got = extract_subjects([parse_locator("query:owner")], "", f"owner={written}", [])
    assert got == ("1101700203450",)


@pytest.mark.parametrize("text", ["path:0", "path:x", "cookie:1", "query:", "query:a b", "path"])
def test_bad_locators_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="locator"):
        parse_locator(text)


async def test_provider_node_indexes_the_subjects_of_each_exchange(fed: Fed, http) -> None:
    mid = "subj-" + uuid.uuid4().hex
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/1101700203450/house?cid=3100600123459"
    async with http.get(url, headers={**DEV, "X-Road-Id": mid}) as r:
        assert r.status == 200
    rows = await fed.federation.nodes[DBD].runtime.log.find(mid)
    assert orjson.loads(rows[0]["subjects"]) == ["1101700203450", "3100600123459"]
    assert orjson.loads(rows[0]["leaf"])["subjects"] == ["1101700203450", "3100600123459"]
    # The client's node does not know the provider's registration: it records none.
    client_rows = await fed.federation.nodes[DGA].runtime.log.find(mid)
    assert orjson.loads(client_rows[0]["subjects"]) == []
    path = fed.federation.nodes[DBD].runtime.log.path
    with sqlite_db(path) as conn:
        indexed = conn.execute(
            "SELECT e.message_id FROM exchange_subject s JOIN exchange e USING (leaf_index)"
            " WHERE s.subject = ?",
            ("1101700203450",),
        ).fetchall()
    assert (mid,) in indexed


# --- one reading of values and bodies (issue 10, item 4) ------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "".join(chr(0xFF10 + int(d)) for d in "1101700203450"),  # full-width digits
        "".join(chr(0x0E50 + int(d)) for d in "1101700203450"),  # Thai digits
        "+1101700203450",
        "001101700203450",
    ],
)
def test_numbers_a_service_parses_as_the_same_id_are_one_subject(written: str) -> None:
    """int() in Python and Long.parseLong in Java read these digits as the same number."""
    got = extract_subjects([parse_locator("query:owner")], "", f"owner={quote(written)}", [])
    assert got == ("1101700203450",)


def test_path_parameters_are_read_both_ways() -> None:
    # A servlet container reads the segment without ";x=1"; the index holds both readings.
    got = extract_subjects([parse_locator("path:1")], "/1101700203450;x=1", "", [])
    assert "1101700203450" in got


def test_json_body_fields_at_any_depth_and_numbers_as_digits() -> None:
    doc = loads_json(b'{"a": {"citizenId": 1101700203450}, "b": [{"citizenId": "x"}],'
                     b' "citizenIds": ["y", 1.1017002034500E12], "t": true}')  # fmt: skip
    fields = json_body_fields(doc)
    assert sorted(fields["citizenId"]) == ["1101700203450", "x"]
    assert fields["citizenIds"] == ["y", "1101700203450"]
    assert "t" not in fields


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": 1}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-32-le"),
        b'{"a": 1, "a": 2}',
        b'{"a": NaN}',
        b'{"a": "\xff"}',
    ],
)
def test_the_one_json_reading_refuses_what_parsers_read_differently(body: bytes) -> None:
    with pytest.raises(JsonBodyError):
        loads_json(body)


def test_answer_locators() -> None:
    locs = [parse_answer_locator("json:records[*].owner"), parse_answer_locator("xml:cid")]
    body = orjson.dumps({"records": [{"owner": "1101700203450"}, {"owner": 3100600123459}],
                         "nested": {"cid": ["5100900123451"]}})  # fmt: skip
    got = answer_subjects(locs, "application/json", body, strict=True)
    assert got == ("1101700203450", "3100600123459", "5100900123451")
    assert answer_subjects(locs, "application/json", b'{"records": []}', strict=True) == ()


def test_an_answer_that_cannot_be_read_for_its_persons_is_not_served() -> None:
    locs = [parse_answer_locator("json:records[*].owner")]
    unreadable = [
        ("text/csv", b"owner\n1101700203450\n"),
        ("application/json", '{"records": []}'.encode("utf-16")),
    ]
    for content_type, body in unreadable:
        with pytest.raises(SubjectError):
            answer_subjects(locs, content_type, body, strict=True)
        assert answer_subjects(locs, content_type, body, strict=False) == ()
    many = orjson.dumps({"records": [{"owner": str(i)} for i in range(MAX_ANSWER_SUBJECTS + 1)]})
    with pytest.raises(SubjectError, match="more than"):
        answer_subjects(locs, "application/json", many, strict=True)


@pytest.mark.parametrize("text", ["json:", "json:records[*]", "xml:a b", "csv:x", "records"])
def test_bad_answer_locators_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="locator"):
        parse_answer_locator(text)


@pytest.mark.parametrize(
    "query",
    [
        "CID=3100600123459",  # ASP.NET matches parameter names case-insensitively
        "cid%5B%5D=3100600123459",  # PHP, Rails and Express (qs) read cid[] as cid
        "cid%5B0%5D=3100600123459",
        "cid%20=3100600123459",  # PHP: ' ' and '.' in names become '_'; servers trim
    ],
)
async def test_spellings_of_the_subjects_parameter_servers_accept_are_logged(
    fed: Fed, http, query: str
) -> None:
    """The echo reads whom a request concerns from ``cid``: each spelling some server takes
    for ``cid`` reaches the service, so the node must log its value as the subject."""
    mid = "subj-" + uuid.uuid4().hex
    url = fed.url(DGA) + "/r1/TH/GOV/DBD/registry/echo/x?" + query
    async with http.get(url, headers={**DEV, "X-Road-Id": mid}) as r:
        assert r.status == 200
        assert (await r.json())["query"] == query  # the service got it as sent
    rows = await fed.federation.nodes[DBD].runtime.log.find(mid)
    assert "3100600123459" in orjson.loads(rows[0]["subjects"])


def test_a_header_spelt_with_underscores_is_the_subjects_header() -> None:
    """CGI and WSGI servers read X_Subject as X-Subject."""
    loc = [parse_locator("header:X-Subject")]
    assert extract_subjects(loc, "", "", [("x_subject", "3100600123459")]) == ("3100600123459",)
