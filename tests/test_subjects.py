"""The data-subject index: the provider's node records whom each exchange concerns."""

from __future__ import annotations

import uuid

import orjson
import pytest

from xroad_hub.subjects import extract_subjects, parse_locator

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
