"""Merkle tree math against published RFC 6962 vectors, the RFC's own definitions and fuzzing.

The vectors are transparency-dev/merkle's ``testdata/``, carried in ``tests/data/rfc6962``
with their licence (see the README there); their absence is an error, not a skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xroad_hub.protocol.merkle import (
    EMPTY_ROOT,
    BlockTree,
    CompactRange,
    HashSource,
    LeavesNeeded,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent / "data" / "rfc6962"
TESTDATA = VECTORS / "testdata"
BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench_merkle.py"

if not TESTDATA.is_dir():
    pytest.fail(
        f"RFC 6962 test vectors not found at {TESTDATA}: they belong to the repository "
        "(tests/data/rfc6962); restore them from git",
        pytrace=False,
    )

# The reference tree behind the vectors: the 8 leaf inputs of the RFC 6962 test data
# (certificate-transparency merkle_tree_test.cc, kept in transparency-dev/merkle as
# testonly/constants.go LeafInputs/RootHashes). ROOTS[n] is the root of the first n leaves.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f")
]  # fmt: skip
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
REF_HASHES = [leaf_hash(d) for d in LEAF_INPUTS]


# --------------------------------------------------------------------------------------------
# The RFC 6962 section 2.1 definitions, transcribed recursively and hashed with hashlib
# directly, as an independent reference for the module's iterative code.
# --------------------------------------------------------------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(data: Sequence[bytes]) -> bytes:
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _k(len(data))
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: Sequence[bytes]) -> list[bytes]:
    if len(data) == 1:
        return []
    k = _k(len(data))
    if m < k:
        return [*ref_path(m, data[:k]), ref_mth(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_mth(data[:k])]


def ref_subproof(m: int, data: Sequence[bytes], whole: bool) -> list[bytes]:
    if m == len(data):
        return [] if whole else [ref_mth(data)]
    k = _k(len(data))
    if m <= k:
        return [*ref_subproof(m, data[:k], whole), ref_mth(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_mth(data[:k])]


def leaves(count: int, salt: bytes = b"") -> list[bytes]:
    """Distinct leaf inputs (distinct leaves keep "wrong index must fail" a true statement)."""
    return [salt + b"/" + i.to_bytes(4, "big") for i in range(count)]


# --------------------------------------------------------------------------------------------
# Published vectors
# --------------------------------------------------------------------------------------------


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _load(kind: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((TESTDATA / kind).rglob("*.json")):
        raw = json.loads(path.read_text())
        vector = dict(raw)
        vector["proof"] = [_b64(p) for p in raw["proof"] or []]
        for key in ("root", "leafHash", "root1", "root2"):
            if key in raw:
                vector[key] = _b64(raw[key])
        found.append((str(path.relative_to(TESTDATA)), vector))
    return found


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")
SUBTREE_INCLUSION = _load("subtreeinclusion")
SUBTREE_CONSISTENCY = _load("subtreeconsistency")
# A subtree [0, end) of a tree is the tree of size `end`, so subtree proofs that start at 0
# are plain proofs under other names; the others need subtree proofs, which we don't have.
SUBTREE_INCLUSION_AS_PLAIN = [
    (name, v) for name, v in SUBTREE_INCLUSION if v["start"] == 0 and v["end"] > 0
]
SUBTREE_CONSISTENCY_AS_PLAIN = [
    (name, v) for name, v in SUBTREE_CONSISTENCY if v["start"] == 0 and v["end"] > 0
]


def _ids(vectors: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in vectors]


def _happy(vectors: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Happy paths of the numbered folders, the ones built on the 8-leaf reference tree."""
    return [v for name, v in vectors if name.split("/")[1].isdigit() and not v["wantErr"]]


def test_every_vector_file_was_loaded() -> None:
    total = sum(1 for _ in TESTDATA.rglob("*.json"))
    loaded = INCLUSION + CONSISTENCY + SUBTREE_INCLUSION + SUBTREE_CONSISTENCY
    assert len(loaded) == total == 518
    assert (len(INCLUSION), len(CONSISTENCY)) == (98, 98)
    assert (len(SUBTREE_INCLUSION_AS_PLAIN), len(SUBTREE_CONSISTENCY_AS_PLAIN)) == (93, 91)
    for vectors in (INCLUSION, CONSISTENCY):
        assert {v["wantErr"] for _, v in vectors} == {True, False}
    assert {(v["leafIdx"], v["treeSize"]) for v in _happy(INCLUSION)} == {
        (0, 1), (0, 8), (5, 8), (2, 3), (1, 5),
    }  # fmt: skip
    assert {(v["size1"], v["size2"]) for v in _happy(CONSISTENCY)} == {
        (1, 1), (1, 8), (6, 8), (2, 5), (6, 7),
    }  # fmt: skip


@pytest.mark.parametrize(("name", "v"), INCLUSION, ids=_ids(INCLUSION))
def test_inclusion_vector(name: str, v: dict[str, Any]) -> None:
    ok = verify_inclusion(v["leafHash"], v["leafIdx"], v["treeSize"], v["proof"], v["root"])
    assert ok is not v["wantErr"], v["desc"]


@pytest.mark.parametrize(("name", "v"), CONSISTENCY, ids=_ids(CONSISTENCY))
def test_consistency_vector(name: str, v: dict[str, Any]) -> None:
    ok = verify_consistency(v["size1"], v["size2"], v["root1"], v["root2"], v["proof"])
    assert ok is not v["wantErr"], v["desc"]


@pytest.mark.parametrize(
    ("name", "v"), SUBTREE_INCLUSION_AS_PLAIN, ids=_ids(SUBTREE_INCLUSION_AS_PLAIN)
)
def test_subtree_inclusion_vector_from_zero(name: str, v: dict[str, Any]) -> None:
    ok = verify_inclusion(v["leafHash"], v["leafIdx"], v["end"], v["proof"], v["root"])
    assert ok is not v["wantErr"], v["desc"]


@pytest.mark.parametrize(
    ("name", "v"), SUBTREE_CONSISTENCY_AS_PLAIN, ids=_ids(SUBTREE_CONSISTENCY_AS_PLAIN)
)
def test_subtree_consistency_vector_from_zero(name: str, v: dict[str, Any]) -> None:
    ok = verify_consistency(v["end"], v["size"], v["root1"], v["root2"], v["proof"])
    assert ok is not v["wantErr"], v["desc"]


def test_reference_tree_roots() -> None:
    for n, expected in enumerate(ROOTS):
        assert root(REF_HASHES[:n]) == expected == ref_mth(LEAF_INPUTS[:n])
    published = {v["treeSize"]: v["root"] for v in _happy(INCLUSION)}
    for v in _happy(CONSISTENCY):
        published |= {v["size1"]: v["root1"], v["size2"]: v["root2"]}
    assert len(published) >= 6
    for size, published_root in published.items():
        assert root(REF_HASHES[:size]) == published_root


def test_generated_proofs_equal_published_ones() -> None:
    for v in _happy(INCLUSION):
        assert v["leafHash"] == REF_HASHES[v["leafIdx"]]
        assert inclusion_proof(REF_HASHES, v["leafIdx"], v["treeSize"]) == v["proof"]
    for v in _happy(CONSISTENCY):
        assert consistency_proof(REF_HASHES, v["size1"], v["size2"]) == v["proof"]


# --------------------------------------------------------------------------------------------
# Against the RFC definitions, exhaustively on small trees
# --------------------------------------------------------------------------------------------


def test_empty_tree_root() -> None:
    assert root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert MemoryTree().root() == CompactRange().root() == EMPTY_ROOT


def test_every_way_of_building_gives_the_rfc_root_for_sizes_0_to_300() -> None:
    data = leaves(300)
    hashes = [leaf_hash(d) for d in data]
    compact, memory = CompactRange(), MemoryTree()
    for n in range(301):
        expected = ref_mth(data[:n])
        assert root(hashes[:n]) == expected
        assert compact.root() == expected, n
        assert memory.root() == expected == MemoryTree(hashes[:n]).root(), n
        assert len(compact.frontier) == n.bit_count()
        if n < 300:
            compact.append(hashes[n])
            memory.append(hashes[n])
    assert [memory.root(n) for n in range(301)] == [root(hashes[:n]) for n in range(301)]


def test_subtree_hash_of_every_range() -> None:
    data = leaves(33)
    tree = MemoryTree(leaf_hash(d) for d in data)
    for start in range(34):
        for end in range(start, 34):
            assert tree.subtree_hash(start, end) == ref_mth(data[start:end])


def test_all_inclusion_proofs_up_to_size_40() -> None:
    data = leaves(40)
    hashes = [leaf_hash(d) for d in data]
    tree = MemoryTree(hashes)
    for size in range(1, 41):
        size_root = ref_mth(data[:size])
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            assert proof == ref_path(index, data[:size]) == inclusion_proof(hashes[:size], index)
            assert verify_inclusion(hashes[index], index, size, proof, size_root)


def test_all_consistency_proofs_up_to_size_40() -> None:
    data = leaves(40)
    hashes = [leaf_hash(d) for d in data]
    tree = MemoryTree(hashes)
    for size in range(1, 41):
        size_root = ref_mth(data[:size])
        for old in range(1, size + 1):
            proof = consistency_proof(tree, old, size)
            assert (
                proof
                == ref_subproof(old, data[:size], True)
                == consistency_proof(hashes[:size], old)
            )
            assert verify_consistency(old, size, ref_mth(data[:old]), size_root, proof)


class CountingSource:
    """A HashSource that is not a MemoryTree: counts what proof generation asks for."""

    def __init__(self, tree: MemoryTree) -> None:
        self.tree, self.calls = tree, 0

    def __len__(self) -> int:
        return len(self.tree)

    def subtree_hash(self, start: int, end: int) -> bytes:
        self.calls += 1
        return self.tree.subtree_hash(start, end)


def test_proofs_take_one_subtree_lookup_per_proof_hash() -> None:
    tree = MemoryTree(leaf_hash(d) for d in leaves(5000))
    source = CountingSource(tree)
    assert isinstance(source, HashSource)
    for index in (0, 1, 2047, 4096, 4999):
        source.calls = 0
        proof = inclusion_proof(source, index)
        assert source.calls == len(proof) <= 13
        assert verify_inclusion(tree.leaf_hash_at(index), index, 5000, proof, tree.root())
    source.calls = 0
    proof = consistency_proof(source, 1234, 4321)
    assert source.calls == len(proof) <= 2 * 13
    assert verify_consistency(1234, 4321, tree.root(1234), tree.root(4321), proof)


def test_compact_range_resumes_from_saved_frontier() -> None:
    hashes = [leaf_hash(d) for d in leaves(77)]
    first = CompactRange()
    first.extend(hashes[:45])
    resumed = CompactRange(len(first), first.frontier)
    resumed.extend(hashes[45:])
    assert resumed.root() == root(hashes)
    with pytest.raises(ValueError):
        CompactRange(45, first.frontier[:-1])
    with pytest.raises(ValueError):
        CompactRange(-1)


def test_malformed_inputs_are_refused_when_building() -> None:
    hashes = [leaf_hash(d) for d in leaves(8)]
    for bad in (b"", b"x" * 31, b"x" * 33):
        with pytest.raises(ValueError):
            root([*hashes, bad])
        with pytest.raises(ValueError):
            MemoryTree([bad])
        with pytest.raises(ValueError):
            MemoryTree(hashes).append(bad)
        with pytest.raises(ValueError):
            CompactRange().append(bad)
    tree = MemoryTree(hashes)
    for index, size in ((8, 8), (-1, 8), (0, 0), (0, 9), (3, 2)):
        with pytest.raises(ValueError):
            inclusion_proof(tree, index, size)
    for old, size in ((0, 8), (5, 4), (1, 9), (-1, 8)):
        with pytest.raises(ValueError):
            consistency_proof(tree, old, size)
    with pytest.raises(ValueError):
        tree.subtree_hash(3, 9)
    with pytest.raises(IndexError):
        tree.leaf_hash_at(8)


def test_malformed_inputs_are_not_proven() -> None:
    hashes = [leaf_hash(d) for d in leaves(8)]
    top = root(hashes)
    proof = inclusion_proof(hashes, 3)
    assert verify_inclusion(hashes[3], 3, 8, proof, top)
    assert not verify_inclusion(hashes[3], 3, 8, proof[:-1], top)
    assert not verify_inclusion(hashes[3], 3, 8, [*proof, proof[-1]], top)
    assert not verify_inclusion(hashes[3], -1, 8, proof, top)
    assert not verify_inclusion(hashes[3], 3, 0, proof, top)
    assert not verify_inclusion(hashes[3], 8, 8, proof, top)
    assert not verify_inclusion(hashes[3][:31], 3, 8, proof, top)
    assert not verify_inclusion(hashes[3], 3, 8, [p + b"\0" for p in proof], top)
    # One leaf: the leaf hash is the root and the proof is empty.
    assert verify_inclusion(hashes[0], 0, 1, [], hashes[0])
    assert not verify_inclusion(hashes[0], 0, 1, [hashes[1]], hashes[0])
    old = root(hashes[:3])
    proof = consistency_proof(hashes, 3)
    assert verify_consistency(3, 8, old, top, proof)
    assert not verify_consistency(0, 8, EMPTY_ROOT, top, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(8, 3, top, old, proof)
    assert not verify_consistency(8, 8, top, top, proof)
    assert verify_consistency(8, 8, top, top, [])
    assert not verify_consistency(3, 8, old[:31], top, proof)


def test_same_shaped_sizes_replay_alike() -> None:
    """Documented limit: the size is bound by the checkpoint, not by the proof alone."""
    hashes = [leaf_hash(d) for d in leaves(4)]
    proof = inclusion_proof(hashes, 0, 3)
    assert verify_inclusion(hashes[0], 0, 4, proof, root(hashes[:3]))
    assert not verify_inclusion(hashes[0], 0, 4, proof, root(hashes[:4]))


# --------------------------------------------------------------------------------------------
# Properties on random trees
# --------------------------------------------------------------------------------------------

MAX_LEAVES = 150
masks = st.integers(min_value=1, max_value=255)


def _flip(value: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(value)
    changed[position] ^= mask
    return bytes(changed)


@given(size=st.integers(1, MAX_LEAVES), salt=st.binary(max_size=8), data=st.data())
def test_inclusion_proofs_verify_and_any_change_breaks_them(
    size: int, salt: bytes, data: st.DataObject
) -> None:
    hashes = [leaf_hash(d) for d in leaves(size, salt)]
    tree = MemoryTree(hashes)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof, top, leaf = inclusion_proof(tree, index), tree.root(), hashes[index]
    assert verify_inclusion(leaf, index, size, proof, top)
    mask = data.draw(masks, label="mask")
    for i, sibling in enumerate(proof):
        for pos in range(len(sibling)):
            bad = [*proof[:i], _flip(sibling, pos, mask), *proof[i + 1 :]]
            assert not verify_inclusion(leaf, index, size, bad, top)
    for pos in range(32):
        assert not verify_inclusion(leaf, index, size, proof, _flip(top, pos, mask))
        assert not verify_inclusion(_flip(leaf, pos, mask), index, size, proof, top)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other")
        assert not verify_inclusion(leaf, other, size, proof, top)
        assert not verify_inclusion(hashes[other], other, size, proof, top)
    # Any other size, checked against that size's own root, must fail too.
    other_size = data.draw(st.integers(index + 1, MAX_LEAVES + 1), label="other_size")
    if other_size != size:
        other_root = MemoryTree(leaf_hash(d) for d in leaves(other_size, salt)).root()
        assert not verify_inclusion(leaf, index, other_size, proof, other_root)
    assert not verify_inclusion(leaf, index + size, size, proof, top)


@given(size=st.integers(2, MAX_LEAVES), salt=st.binary(max_size=8), data=st.data())
def test_consistency_proofs_verify_and_any_change_breaks_them(
    size: int, salt: bytes, data: st.DataObject
) -> None:
    tree = MemoryTree(leaf_hash(d) for d in leaves(size, salt))
    new = data.draw(st.integers(2, size), label="new")
    old = data.draw(st.integers(1, new - 1), label="old")
    proof = consistency_proof(tree, old, new)
    old_root, new_root = tree.root(old), tree.root(new)
    assert verify_consistency(old, new, old_root, new_root, proof)
    assert verify_consistency(new, new, new_root, new_root, consistency_proof(tree, new, new))
    mask = data.draw(masks, label="mask")
    for i, node in enumerate(proof):
        for pos in range(len(node)):
            bad = [*proof[:i], _flip(node, pos, mask), *proof[i + 1 :]]
            assert not verify_consistency(old, new, old_root, new_root, bad)
    for pos in range(32):
        assert not verify_consistency(old, new, _flip(old_root, pos, mask), new_root, proof)
        assert not verify_consistency(old, new, old_root, _flip(new_root, pos, mask), proof)
    assert not verify_consistency(old, new, new_root, old_root, proof)
    assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not verify_consistency(old, new, old_root, new_root, [*proof, proof[-1]])
    # Other sizes, each checked against its own true root, must fail.
    other_new = data.draw(st.integers(2, size), label="other_new")
    other_old = data.draw(st.integers(1, other_new - 1), label="other_old")
    if (other_old, other_new) != (old, new):
        other_roots = tree.root(other_old), tree.root(other_new)
        assert not verify_consistency(other_old, other_new, *other_roots, proof)


# --------------------------------------------------------------------------------------------
# The benchmark script keeps working (figures are not checked: shared machines are noisy)
# --------------------------------------------------------------------------------------------


def test_bench_merkle_smoke_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["leaves"] == 20_000
    assert report["proofs_verified"] == report["samples"] == 100


def _proved(tree: BlockTree, stored: Sequence[bytes], prove: Any) -> Any:
    """Run ``prove`` as a log does: load each block the tree asks for, then ask again."""
    for _ in range(3):  # a tree-shaped proof needs at most two blocks
        try:
            return prove()
        except LeavesNeeded as need:
            tree.load(need.start, stored[need.start : need.end])
    raise AssertionError("the proof kept asking for blocks")


@pytest.mark.parametrize("block_height", [1, 2, 3])
def test_block_tree_gives_every_proof_a_memory_tree_gives(block_height: int) -> None:
    data = leaves(40)
    hashes = [leaf_hash(d) for d in data]
    tree = BlockTree(block_height=block_height, cached_blocks=2)
    for size in range(1, 41):
        tree.append(hashes[size - 1])
        assert tree.root() == ref_mth(data[:size])  # never needs a load
        for old in range(1, size + 1):
            got = _proved(
                tree, hashes, lambda old=old, size=size: consistency_proof(tree, old, size)
            )
            assert got == ref_subproof(old, data[:size], True)
        for index in range(size):
            got = _proved(tree, hashes, lambda i=index, size=size: inclusion_proof(tree, i, size))
            assert got == ref_path(index, data[:size])
    # Built in bulk, then proving to older sizes too (a size inside a complete block).
    bulk = BlockTree(hashes[:5], block_height=block_height, cached_blocks=2)
    bulk.extend(hashes[5:])
    assert len(bulk) == 40
    for size in range(1, 41):
        assert _proved(bulk, hashes, lambda size=size: bulk.root(size)) == ref_mth(data[:size])
        for old in range(1, size + 1):
            got = _proved(
                bulk, hashes, lambda old=old, size=size: consistency_proof(bulk, old, size)
            )
            assert got == ref_subproof(old, data[:size], True)


def test_block_tree_asks_for_old_blocks_and_refuses_other_leaves() -> None:
    hashes = [leaf_hash(d) for d in leaves(1000)]
    tree = BlockTree(hashes)  # blocks of 256
    with pytest.raises(LeavesNeeded) as need:
        consistency_proof(tree, 300, 1000)
    assert (need.value.start, need.value.end) == (256, 512)
    assert consistency_proof(tree, 256, 1000) == consistency_proof(hashes, 256)  # roots only
    changed = list(hashes[256:512])
    changed[7] = leaf_hash(b"rewritten")
    for start, offered in ((256, changed), (256, hashes[256:511]), (300, hashes[300:556])):
        with pytest.raises(ValueError):
            tree.load(start, offered)
    with pytest.raises(ValueError):
        tree.load(768, hashes[768:1000])  # the last block is not complete: it is in memory
    tree.load(256, hashes[256:512])
    assert consistency_proof(tree, 300, 1000) == consistency_proof(hashes, 300)
    for bad in ({"block_height": 0}, {"cached_blocks": 1}):
        with pytest.raises(ValueError):
            BlockTree(**bad)


def test_block_tree_memory_is_a_fraction_of_a_memory_tree() -> None:
    """What a node's log holds for its tree: ~64 bytes an entry for a `MemoryTree`, well
    under one for a `BlockTree`, which keeps blocks of 256 leaves as their roots."""
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(1 << 16)]

    def held(build: Any) -> int:
        tracemalloc.start()
        try:
            tree = build()
            size, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(tree) == len(hashes)
        return size

    memory = held(lambda: MemoryTree(hashes))
    blocks = held(lambda: BlockTree(hashes))
    assert memory > 60 * len(hashes)
    assert blocks < 1 * len(hashes)
