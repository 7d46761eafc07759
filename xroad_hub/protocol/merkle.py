"""RFC 9162 (RFC 6962 section 2.1) Merkle tree math for the tamper-evident message log.

Pure functions and in-memory structures only: storage and networking live elsewhere.
"""

# Theory of operation
# -------------------
# The log is a list of leaves D[0:n]. Its tree head is MTH(D[0:n]) where
#   MTH({})      = SHA-256()                        (the empty string)
#   MTH({d})     = SHA-256(0x00 || d)               ("leaf hash")
#   MTH(D[0:n])  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   ("node hash")
# with k the largest power of two smaller than n. The two prefixes keep a leaf from ever
# being taken for a node (second-preimage attacks). Because k is a power of two, every
# left-hand subtree is *perfect* (2**h leaves, starting at a multiple of 2**h) and only the
# right edge of the tree is ragged. Three consequences shape this module:
#
# - Perfect subtrees never change once their last leaf is appended, so they can be cached
#   forever (`MemoryTree`), and a proof needs at most one ragged subtree (on the right
#   edge), itself O(log n) cached perfect ones. Proof generation is therefore O(log n)
#   hashes whatever the size of the log, given a `HashSource` that answers subtree hashes.
# - The root of D[0:n] is a right fold over the perfect subtrees that make up n, one per
#   set bit of n, largest first (the "frontier" or compact range). Appending a leaf merges
#   equal-sized perfect subtrees like a binary counter carries, so `CompactRange` keeps
#   O(log n) hashes and gives every new tree head in O(log n).
# - A verifier replays a proof bottom-up, using the bits of the leaf index (inclusion) or
#   of the old size (consistency) to know whether each proof hash is a left or a right
#   sibling, exactly as RFC 9162 sections 2.1.3.2 and 2.1.4.2 describe. Verification never
#   raises: anything malformed (wrong hash length, wrong proof length, index out of range)
#   is simply "not proven".
#
# What a proof does NOT bind: an inclusion proof binds the leaf, its index and the root,
# but two sizes whose paths have the same shape (e.g. index 0 in trees of 3 and 4 leaves)
# replay identically, so the size must come from the same signed checkpoint as the root.

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "BlockTree",
    "CompactRange",
    "HashSource",
    "LeavesNeeded",
    "MemoryTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (for n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes; the empty tree's root is SHA-256 of the empty string.

    Pairs neighbours level by level and carries an odd last node up unchanged, which builds
    exactly the RFC tree (it splits at the largest power of two) without recursion.
    """
    level = list(leaf_hashes)
    for value in level:
        _check_hash(value, "leaf hash")
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


@runtime_checkable
class HashSource(Protocol):
    """Anything that knows a log's leaves well enough to give MTH(D[start:end]).

    Proof generation only asks for subtrees of the tree (``start`` a multiple of the
    smallest power of two >= ``end - start``), at most O(log n) of them per proof, so a
    source backed by a database of stored perfect-subtree hashes fits as well as `MemoryTree`.
    """

    def __len__(self) -> int:
        """The number of leaves available."""
        ...

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for 0 <= start <= end <= len(self)."""
        ...


class _SubtreeHashing:
    """`root` and `subtree_hash` of a tree of ``_size`` leaves, over its ``_hash`` of
    non-empty ranges within bounds."""

    __slots__ = ()
    _size: int

    def root(self, size: int | None = None) -> bytes:
        """The tree head of the first ``size`` leaves (default: all), in O(log n)."""
        return self.subtree_hash(0, self._size if size is None else size)

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); cached perfect subtrees make tree subtrees O(log n)."""
        if not 0 <= start <= end <= self._size:
            raise ValueError(f"range [{start}, {end}) out of bounds for size {self._size}")
        return EMPTY_ROOT if start == end else self._hash(start, end)

    def _hash(self, start: int, end: int) -> bytes:
        raise NotImplementedError


class MemoryTree(_SubtreeHashing):
    """An append-only in-memory tree that caches every perfect subtree.

    Level ``h`` holds the hashes of all complete subtrees of 2**h leaves, packed in one
    ``bytearray`` (32 bytes each, ~2 * 32 bytes per leaf in all), so any subtree hash costs
    O(log n) node hashes and a proof at a million leaves takes microseconds.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        hashes = list(leaf_hashes)
        for value in hashes:
            _check_hash(value, "leaf hash")
        self._size = len(hashes)
        self._levels: list[bytearray] = [bytearray(b"".join(hashes))]
        # Bulk build: the two children of a node are adjacent in the level below, so the
        # node hash input is the prefix and one 64-byte slice.
        below = self._levels[0]
        while len(below) >= 2 * HASH_SIZE:
            pairs = len(below) // (2 * HASH_SIZE)
            with memoryview(below) as view:
                above = bytearray(
                    b"".join(
                        _sha256(_NODE_PREFIX + view[i : i + 2 * HASH_SIZE]).digest()
                        for i in range(0, pairs * 2 * HASH_SIZE, 2 * HASH_SIZE)
                    )
                )
            self._levels.append(above)
            below = above

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash, completing whichever perfect subtrees it closes."""
        _check_hash(leaf_hash, "leaf hash")
        levels = self._levels
        levels[0] += leaf_hash
        index, height = self._size, 0
        while index & 1:  # the new node is a right child: its parent is now complete
            start = (index - 1) * HASH_SIZE
            parent = _sha256(_NODE_PREFIX + levels[height][start : start + 2 * HASH_SIZE])
            if height + 1 == len(levels):
                levels.append(bytearray())
            levels[height + 1] += parent.digest()
            index >>= 1
            height += 1
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order."""
        for value in leaf_hashes:
            self.append(value)

    def leaf_hash_at(self, index: int) -> bytes:
        """The leaf hash stored at ``index``."""
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} out of range for size {self._size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _hash(self, start: int, end: int) -> bytes:
        count = end - start
        if count & (count - 1) == 0 and start % count == 0:
            height = count.bit_length() - 1
            offset = (start >> height) * HASH_SIZE
            return bytes(self._levels[height][offset : offset + HASH_SIZE])
        k = _split(count)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))


class LeavesNeeded(LookupError):
    """A `BlockTree` needs the leaf hashes ``D[start:end]`` (one block) to answer: read them
    from where the leaves are stored, hand them to `BlockTree.load` and ask again."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__(f"leaf hashes {start}..{end - 1} are not in memory")
        self.start, self.end = start, end


class BlockTree(_SubtreeHashing):
    """An append-only tree for a log whose leaf hashes are stored elsewhere (a database).

    A `MemoryTree` of every leaf costs ~64 bytes an entry for ever: 64 MB a million
    exchanges, most of a node's memory after a few months. This tree keeps in memory only
    the perfect subtrees of ``2**block_height`` leaves and up (a `MemoryTree` over the
    blocks' roots, ~64 / 2**block_height bytes an entry), the leaves of the last, incomplete
    block, and a few recently used blocks. The tree head never needs more (the blocks'
    roots and the last block make the frontier); a proof reaching into an older block
    raises `LeavesNeeded`, and the caller loads that block's leaf hashes from storage.
    `load` checks them against the block's root, so storage changed after the tree was
    built is caught rather than proved from. A proof of tree subtrees touches at most two
    older blocks (the edges of the old and new sizes), so ``cached_blocks`` >= 2 always
    lets it finish; a load is one indexed read, so few are kept. The tree head (`root()`)
    never needs a load; a subtree or an older size reaching into an older block may raise
    `LeavesNeeded`.
    """

    __slots__ = ("_blocks", "_cache", "_cached", "_height", "_last", "_size")

    def __init__(
        self, leaf_hashes: Iterable[bytes] = (), *, block_height: int = 8, cached_blocks: int = 4
    ) -> None:
        if block_height < 1 or cached_blocks < 2:
            raise ValueError("a block tree needs block_height >= 1 and cached_blocks >= 2")
        self._height = block_height
        self._cached = cached_blocks
        self._blocks = MemoryTree()  # its leaves are the blocks' roots
        self._last = MemoryTree()  # the incomplete last block
        self._cache: dict[int, MemoryTree] = {}  # recently used complete blocks, oldest first
        self._size = 0
        self.extend(leaf_hashes)

    @classmethod
    def from_blocks(
        cls,
        block_roots: Iterable[bytes],
        last_block: Iterable[bytes] = (),
        *,
        block_height: int = 8,
        cached_blocks: int = 4,
    ) -> BlockTree:
        """The tree of complete blocks with these roots followed by the leaf hashes of an
        incomplete last block (stored roots: a proof without reading every leaf)."""
        last = list(last_block)
        if len(last) >> block_height:
            raise ValueError(f"an incomplete block holds fewer than {1 << block_height} leaves")
        tree = cls(last, block_height=block_height, cached_blocks=cached_blocks)
        tree._blocks = MemoryTree(block_roots)
        tree._size += len(tree._blocks) << block_height
        return tree

    def __len__(self) -> int:
        return self._size

    @property
    def complete_blocks(self) -> int:
        """How many blocks of ``2**block_height`` leaves the tree has completed."""
        return len(self._blocks)

    def block_root(self, block: int) -> bytes:
        """The root of complete block ``block``."""
        return self._blocks.leaf_hash_at(block)

    def block_roots(self, start: int = 0) -> list[bytes]:
        """The roots of the complete blocks from block ``start`` on, in order (what a log
        stores so that readers can prove without reading every leaf)."""
        return [self.block_root(i) for i in range(start, self.complete_blocks)]

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash."""
        self._last.append(leaf_hash)
        self._size += 1
        if len(self._last) == 1 << self._height:
            self._close_block()

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order; whole blocks are hashed in one pass each
        (start-up rebuilds a log's tree this way)."""
        per_block = 1 << self._height
        hashes = leaf_hashes if isinstance(leaf_hashes, list) else list(leaf_hashes)
        for value in hashes:  # all or nothing: a bad hash must not leave half a batch in
            _check_hash(value, "leaf hash")
        done = 0
        while done < len(hashes):
            room = per_block - len(self._last)
            if room == per_block and len(hashes) - done >= per_block:
                self._last = MemoryTree(hashes[done : done + per_block])
            else:
                self._last.extend(hashes[done : done + room])
            added = min(room, len(hashes) - done)
            done += added
            self._size += added
            if len(self._last) == per_block:
                self._close_block()

    def _close_block(self) -> None:
        self._blocks.append(self._last.root())
        self._last = MemoryTree()

    def load(self, start: int, leaf_hashes: Sequence[bytes]) -> None:
        """Hand over the stored leaf hashes of the block that starts at ``start`` (what a
        `LeavesNeeded` asked for). ValueError if they are not that block's leaves."""
        per_block = 1 << self._height
        block = start >> self._height
        if start % per_block or block >= len(self._blocks):
            raise ValueError(f"no complete block of this tree starts at leaf {start}")
        tree = MemoryTree(leaf_hashes)
        if len(tree) != per_block or tree.root() != self._blocks.leaf_hash_at(block):
            raise ValueError(
                f"the stored leaf hashes of entries {start}..{start + per_block - 1} are not "
                "the ones this tree was built from: the log changed on disk"
            )
        self._cache.pop(block, None)
        self._cache[block] = tree
        while len(self._cache) > self._cached:
            del self._cache[next(iter(self._cache))]  # the least recently used

    def _hash(self, start: int, end: int) -> bytes:
        count, height = end - start, self._height
        block = start >> height
        if count >> height and count & (count - 1) == 0 and start % count == 0:
            return self._blocks.subtree_hash(block, end >> height)  # whole blocks, perfect
        if (end - 1) >> height == block:  # within one block
            offset = block << height
            return self._block(block).subtree_hash(start - offset, end - offset)
        k = _split(count)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def _block(self, block: int) -> MemoryTree:
        if block == len(self._blocks):
            return self._last
        tree = self._cache.pop(block, None)
        if tree is None:
            start = block << self._height
            raise LeavesNeeded(start, start + (1 << self._height))
        self._cache[block] = tree  # now the most recently used
        return tree


class CompactRange:
    """Append-only tree head builder keeping only the right-edge frontier, O(log n) hashes.

    ``frontier`` holds the roots of the perfect subtrees that make up the current size, one
    per set bit, largest (leftmost) first. This is all a log writer needs to produce a new
    tree head after every append without reading older leaves back.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self, size: int = 0, frontier: Iterable[bytes] = ()) -> None:
        """Start empty, or resume from a saved (size, frontier) pair."""
        nodes = list(frontier)
        if size < 0 or len(nodes) != size.bit_count():
            raise ValueError(f"a frontier for size {size} has {max(size, 0).bit_count()} hashes")
        for value in nodes:
            _check_hash(value, "frontier hash")
        self._size = size
        self._frontier = nodes

    def __len__(self) -> int:
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, largest first (what to persist to resume later)."""
        return tuple(self._frontier)

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash: merge equal-sized subtrees like a binary counter carry."""
        _check_hash(leaf_hash, "leaf hash")
        node, carry = leaf_hash, self._size
        while carry & 1:
            node = node_hash(self._frontier.pop(), node)
            carry >>= 1
        self._frontier.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order: the same tree as appending them one by one.

        In runs of perfect subtrees, each hashed level by level in one comprehension: the
        auditor's tree-only pass adds a whole log this way, and one `append` per leaf (a
        call and a carry loop each) cost as much as hashing the leaves."""
        hashes = list(leaf_hashes)
        for value in hashes:
            _check_hash(value, "leaf hash")
        done, total = 0, len(hashes)
        while done < total:
            size = self._size
            # The largest block of 2**h leaves that fits and starts on a multiple of 2**h
            # (where a perfect subtree of that height starts): size's lowest set bit.
            block = size & -size if size else 1 << ((total - done).bit_length() - 1)
            while block > total - done:
                block >>= 1
            level = hashes[done : done + block]
            while len(level) > 1:
                level = [
                    _sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
                    for i in range(0, len(level), 2)
                ]
            node, carry = level[0], size // block
            while carry & 1:
                node = node_hash(self._frontier.pop(), node)
                carry >>= 1
            self._frontier.append(node)
            self._size += block
            done += block

    def root(self) -> bytes:
        """The current tree head, folding the frontier from the right."""
        if not self._frontier:
            return EMPTY_ROOT
        result = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            result = node_hash(left, result)
        return result


def _as_source(tree: HashSource | Sequence[bytes]) -> HashSource:
    # The exact-type test first: isinstance against a runtime-checkable Protocol inspects
    # the class's members on every call, which costs more than the proofs of a small batch.
    if type(tree) is MemoryTree or isinstance(tree, HashSource):
        return tree
    return MemoryTree(tree)


def inclusion_proof(
    tree: HashSource | Sequence[bytes], index: int, size: int | None = None
) -> list[bytes]:
    """The RFC 6962 audit path PATH(index, D[0:size]), lowest sibling first.

    ``tree`` is a `HashSource` (O(log n) subtree lookups) or a plain list of leaf hashes
    (hashed in full, O(n)). ``size`` defaults to every leaf the source has; pass an older
    size to prove inclusion in an older checkpoint.
    """
    source = _as_source(tree)
    size = len(source) if size is None else size
    if not 0 <= index < size <= len(source):
        raise ValueError(f"no leaf {index} in a tree of {size} (source has {len(source)})")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            path.append(source.subtree_hash(mid, hi))
            hi = mid
        else:
            path.append(source.subtree_hash(lo, mid))
            lo = mid
    path.reverse()
    return path


def consistency_proof(
    tree: HashSource | Sequence[bytes], old_size: int, size: int | None = None
) -> list[bytes]:
    """The RFC 6962 consistency proof PROOF(old_size, D[0:size]), lowest node first.

    Proves that the tree of ``old_size`` leaves is a prefix of the tree of ``size`` leaves
    (default: every leaf of the source). Requires 0 < old_size <= size; equal sizes give an
    empty proof. An empty old tree has nothing to prove (RFC 9162 requires 0 < first).
    """
    source = _as_source(tree)
    size = len(source) if size is None else size
    if not 0 < old_size <= size <= len(source):
        raise ValueError(f"no consistency proof from {old_size} to {size} (has {len(source)})")
    proof: list[bytes] = []
    lo, hi = 0, size
    old_is_whole_subtree = True  # SUBPROOF's flag b: old root is known to the verifier
    while old_size != hi:  # old_size is always within [lo, hi] from here on
        mid = lo + _split(hi - lo)
        if old_size <= mid:
            proof.append(source.subtree_hash(mid, hi))
            hi = mid
        else:
            proof.append(source.subtree_hash(lo, mid))
            lo = mid
            old_is_whole_subtree = False
    if not old_is_whole_subtree:
        proof.append(source.subtree_hash(lo, hi))
    proof.reverse()
    return proof


def root_from_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """The root that ``proof`` leads to from leaf ``index`` of a ``size``-leaf tree, or None
    when the proof cannot belong to such a tree.

    RFC 9162 section 2.1.3.2, iteratively; rejects index >= size, proofs of the wrong
    length and hashes that are not 32 bytes.
    """
    if not 0 <= index < size or len(leaf_hash) != HASH_SIZE:
        return None
    fn, sn, result = index, size - 1, leaf_hash
    for sibling in proof:
        if sn == 0 or len(sibling) != HASH_SIZE:
            return None
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while fn and not fn & 1:  # climb to where this subtree is a right child
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return result if sn == 0 else None


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True if ``proof`` shows that leaf ``index`` of the ``size``-leaf tree ``root`` is
    ``leaf_hash``."""
    computed = root_from_inclusion(leaf_hash, index, size, proof)
    return computed is not None and computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 section 2.1.4.2 for 0 < old_size < new_size. Equal sizes are consistent with
    an empty proof and equal roots only. An empty old tree is rejected: there is nothing
    to verify, and a caller relying on it would accept any new tree.
    """
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if not proof or any(len(node) != HASH_SIZE for node in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a perfect subtree: its root seeds
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(node, fr)
            sr = node_hash(node, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, node)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
