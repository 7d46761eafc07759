"""The node's administration trail: every change chained to the one before and signed by
the node, so that an edited, deleted, reordered or forged change is found."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.node.admin import AdminAudit, AdminTrailBroken

NODE = "TH/GOV/DBD/hub1"


async def _trail(tmp_path: Path, key: ed25519.Ed25519PrivateKey, changes: int = 4) -> AdminAudit:
    audit = AdminAudit(tmp_path / "admin-audit.jsonl", NODE, key)
    for i in range(changes):
        await audit.record("alice", f"service.change{i}", timeout=i)
    return audit


def _lines(audit: AdminAudit) -> list[bytes]:
    return audit.path.read_bytes().splitlines(keepends=True)


async def test_an_untouched_trail_verifies_and_a_restart_continues_the_chain(
    tmp_path: Path,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    await _trail(tmp_path, key, 2)
    again = AdminAudit(tmp_path / "admin-audit.jsonl", NODE, key)  # the node restarted
    await again.record("bob", "maintenance.on", message="disk swap")
    report = again.verify(key.public_key())
    assert (report.entries, report.unchained) == (3, 0)
    assert [e["seq"] for e in again.entries()] == [1, 2, 3]
    assert report.head == hashlib.sha256(_lines(again)[-1]).hexdigest()


@pytest.mark.parametrize("tamper", ["delete", "edit", "swap", "forge", "insert"])
async def test_a_changed_trail_does_not_verify(tmp_path: Path, tamper: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    audit = await _trail(tmp_path, key)
    lines = _lines(audit)
    if tamper == "delete":
        del lines[1]
    elif tamper == "edit":  # the last line: no later line's link covers it, the signature does
        lines[-1] = lines[-1].replace(b'"alice"', b'"mallory"')
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "forge":  # a new last entry, well chained, signed by another key
        copy = tmp_path / "copy.jsonl"
        shutil.copy(audit.path, copy)
        forger = AdminAudit(copy, NODE, ed25519.Ed25519PrivateKey.generate())
        await forger.record("mallory", "access.grant", to="TH/GOV/X/spy")
        lines.append(copy.read_bytes().splitlines(keepends=True)[-1])
    else:  # an unchained line after chained ones, as if written by an old version
        lines.insert(2, json.dumps({"node": NODE, "admin": "mallory"}).encode() + b"\n")
    audit.path.write_bytes(b"".join(lines))
    with pytest.raises(AdminTrailBroken, match=r"does not follow|does not verify"):
        audit.verify(key.public_key())


async def test_lines_of_an_older_version_precede_the_chain_and_are_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "admin-audit.jsonl"
    old = {"at": "2026-12-01T00:00:00.000+00:00", "node": NODE, "admin": "a", "action": "x"}
    path.write_bytes(json.dumps(old).encode() + b"\n")
    path.chmod(0o600)
    key = ed25519.Ed25519PrivateKey.generate()
    audit = AdminAudit(path, NODE, key)
    await audit.record("alice", "service.add")
    report = audit.verify(key.public_key())
    assert (report.entries, report.unchained) == (1, 1)
    # The first chained line names the older line's hash: editing it breaks the chain too.
    path.write_bytes(path.read_bytes().replace(b'"action": "x"', b'"action": "y"'))
    with pytest.raises(AdminTrailBroken, match="does not follow"):
        audit.verify(key.public_key())


async def test_another_nodes_trail_is_not_taken_for_this_ones(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    await _trail(tmp_path, key)
    with pytest.raises(AdminTrailBroken, match="of node 'TH/GOV/DBD/hub1'"):
        AdminAudit(tmp_path / "admin-audit.jsonl", "TH/GOV/DGA/hub1", key).verify()
