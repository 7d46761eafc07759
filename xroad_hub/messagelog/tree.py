"""The message log's Merkle tree as a node keeps it: the upper levels in memory, older
leaf hashes read back from the log's rows when a proof reaches them.

A node serves consistency proofs to its witness for as long as it runs, and a proof may
reach any old entry; keeping every leaf hash in memory for that cost ~64 bytes an entry
(~20 MB a node at 300k exchanges, more every day). `merkle.BlockTree` keeps blocks of 256
leaves as their roots (~0.25 bytes an entry); a proof that needs an older block's leaves
costs one indexed read of 256 32-byte hashes, checked against the root kept in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

from xroad_hub.messagelog.layout import TREE_BLOCK_HEIGHT
from xroad_hub.messagelog.reader import stored_leaf_hash
from xroad_hub.messagelog.store import LogError
from xroad_hub.protocol import merkle

__all__ = ["LeafHashRows", "LogTree"]

# Reads the (leaf_index, leaf_hash) rows of entries start..end-1, in index order.
LeafHashRows = Callable[[int, int], Awaitable[Sequence[Sequence[object]]]]

# A consistency proof needs the leaves of at most two blocks: where the old and the new size
# fall. Proofs are made one at a time, so the tree (which keeps more) holds both at once.
_LOADS = 2


class LogTree:
    """The tree of a log's committed entries (leaf i at index i)."""

    __slots__ = ("_proving", "_read", "_tree", "_where", "stored_blocks")

    def __init__(self, read: LeafHashRows, where: str) -> None:
        self._read = read
        self._where = where  # names the log in errors
        self._tree = merkle.BlockTree(block_height=TREE_BLOCK_HEIGHT)
        self._proving = asyncio.Lock()
        # How many blocks' roots the log has stored (all complete ones once it has opened).
        self.stored_blocks = 0

    def blocks_to_repair(
        self, stored: Iterable[Sequence[object]]
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """At open, from the log's stored (block, root) rows: the complete blocks with no
        stored root, to be written, and whether rows of blocks the log has not completed
        are there, to be dropped (then the log holds a root for every complete block; with
        neither, nothing needs writing). A stored root that differs from the rebuilt
        tree's is left as it is: the row or the root may be the one that was changed, and
        only the signed checkpoints can tell (exports check against them and fall back to
        the leaves)."""
        held = {block for block, _ in stored}
        self.stored_blocks = count = self._tree.complete_blocks
        missing = [(b, self._tree.block_root(b)) for b in range(count) if b not in held]
        stray = any(not (type(b) is int and 0 <= b < count) for b in held)
        return missing, stray

    def unsaved_blocks(self) -> list[tuple[int, bytes]]:
        """(block, root) of the complete blocks whose roots the log has not stored yet."""
        start = self.stored_blocks
        return list(enumerate(self._tree.block_roots(start), start=start))

    def saved(self, blocks: list[tuple[int, bytes]]) -> None:
        """The log stored these block roots (from `unsaved_blocks`)."""
        if blocks:
            self.stored_blocks = max(self.stored_blocks, blocks[-1][0] + 1)

    def __len__(self) -> int:
        return len(self._tree)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append committed entries' leaf hashes, in index order."""
        self._tree.extend(leaf_hashes)

    def head(self) -> tuple[int, bytes]:
        """Size and RFC 9162 root (never reads the log)."""
        return len(self._tree), self._tree.root()

    async def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """RFC 9162 proof that the tree of ``old_size`` entries is a prefix of ``size``'s."""
        async with self._proving:
            for loads in range(_LOADS + 1):
                try:
                    return merkle.consistency_proof(self._tree, old_size, size)
                except merkle.LeavesNeeded as need:
                    if loads == _LOADS:
                        break
                    await self._load(need.start, need.end)
        raise LogError(f"{self._where}: a consistency proof needed more than {_LOADS} blocks")

    async def _load(self, start: int, end: int) -> None:
        rows = await self._read(start, end)
        try:
            hashes = [stored_leaf_hash(index, value) for index, value in rows]
        except ValueError as exc:  # its message says what to do
            raise LogError(f"{self._where}: {exc}") from exc
        try:
            if [row[0] for row in rows] != list(range(start, end)):
                raise ValueError(f"entries {start}..{end - 1} are not all there: rows were removed")
            self._tree.load(start, hashes)
        except ValueError as exc:
            raise LogError(
                f"{self._where}: {exc}; keep it for audit ('xroad-hub audit verify' lists "
                "what is wrong)"
            ) from exc
