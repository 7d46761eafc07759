"""Key indexes: every key of one field, sorted, in one ``bytes`` object.

The blob holds two arrays of ``n`` entries (``n`` indexed records): first the canonical
keys, each padded with NUL to the field's widest key, in key order; then the record
numbers in the same order (4-byte unsigned, native byte order: the blob only travels
between processes of one machine), in file order within a key. A lookup is two binary
searches over the keys (first and last entry of the key): O(log n), about 20 probes for a
million keys, and the count of a key is known without touching its records. Memory is
``n * (width + 4)`` bytes, a fraction of what a dict of a million ``bytes`` keys costs.

Building never sorts a million ``bytes`` objects when keys repeat (citizen ids of owners,
office codes): the distinct keys are sorted and ranked, and the record numbers are sorted
by their key's rank, a small int, which the interpreter compares several times faster;
each key's run in the keys array is one repeated ``bytes``.
"""

from __future__ import annotations

import bisect
import operator
import struct
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

__all__ = ["KeyIndex", "build_index"]

_SAMPLE = 4096  # keys looked at to guess whether (nearly) every key is distinct


class _Keys(Sequence[bytes]):
    """The keys array as a sequence, for ``bisect`` (no copy of the blob)."""

    __slots__ = ("_blob", "_n", "_width")

    def __init__(self, blob: bytes, width: int, n: int) -> None:
        self._blob, self._width, self._n = blob, width, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        w = self._width
        return self._blob[i * w : i * w + w]


class KeyIndex:
    """Sorted (key, record number) entries of one field; immutable once built."""

    __slots__ = ("_keys", "_recnos", "blob", "width")

    def __init__(self, width: int, blob: bytes) -> None:
        self.width = width
        self.blob = blob
        n = len(blob) // (width + 4)
        self._keys = _Keys(blob, width, n)
        self._recnos = memoryview(blob)[n * width :].cast("I")

    def __len__(self) -> int:
        return len(self._keys)

    def _range(self, key: bytes) -> tuple[int, int]:
        if len(key) > self.width or not key:
            return 0, 0
        padded = key.ljust(self.width, b"\x00")
        lo = bisect.bisect_left(self._keys, padded)
        hi = bisect.bisect_right(self._keys, padded, lo)
        return lo, hi

    def count(self, key: bytes) -> int:
        """How many records hold ``key``."""
        lo, hi = self._range(key)
        return hi - lo

    def records(self, key: bytes, start: int = 0, stop: int | None = None) -> list[int]:
        """Record numbers holding ``key`` in file order, ``[start:stop]`` of them."""
        lo, hi = self._range(key)
        a = lo + start
        b = hi if stop is None else min(hi, lo + stop)
        if a >= b:
            return []
        return self._recnos[a:b].tolist()

    @property
    def nbytes(self) -> int:
        return len(self.blob)


def _padded(keys: list[bytes], width: int, longest: int, pad: Callable[[bytes], bytes]) -> bytes:
    """The keys NUL-padded to ``width``, joined: when none is shorter than the width (none
    is longer, ``longest``, and the joined length says so), the join alone, without a
    million pads."""
    joined = b"".join(keys)
    if len(joined) == width * len(keys) and longest <= width:
        return joined
    return b"".join(map(pad, keys))


def build_index(keys: list[bytes], width: int | None = None) -> KeyIndex:
    """An index of ``keys[record number]`` (canonical keys); empty keys are not indexed."""
    longest = max(map(len, keys), default=0)
    if width is None:
        width = longest or 1
    pad = struct.Struct(f"{width}s").pack  # NUL-pads to the width
    # Hashing a million keys only to learn they are all distinct: a sample says so first.
    sample = keys[:_SAMPLE]
    distinct_keys: set[bytes] = set()
    grouped = False
    if len(set(sample)) * 16 < len(sample) * 15:
        # The one pass that hashes the million keys (each keeps its hash for the next).
        distinct_keys = set(keys)
        grouped = len(distinct_keys) * 2 <= len(keys)
    if grouped:
        # Repeating keys: record numbers sorted by their key's rank (stable: file order).
        # (A counting sort, a list per key appended to, measured slower than this sort.)
        distinct = sorted(distinct_keys)
        rank = dict(zip(distinct, range(len(distinct)), strict=True))
        ranks = list(map(rank.__getitem__, keys))
        order = sorted(range(len(keys)), key=ranks.__getitem__)
        counts = Counter(ranks)
        key_blob = b"".join([pad(key) * counts[r] for r, key in enumerate(distinct) if key])
    elif all(map(operator.le, keys, islice(keys, 1, None))):
        # Already in key order (deed numbers of a registry's export): nothing to sort.
        order = range(len(keys))
        key_blob = _padded(keys, width, longest, pad)
    else:
        # (Nearly) distinct keys: sorted directly.
        order = sorted(range(len(keys)), key=keys.__getitem__)
        key_blob = _padded(list(map(keys.__getitem__, order)), width, longest, pad)
    unkeyed = keys.count(b"")  # empty keys sort first
    if unkeyed:
        order = order[unkeyed:]
        if not grouped:  # the grouped keys left theirs out
            key_blob = key_blob[unkeyed * width :]
    if isinstance(order, range):
        recnos = array("I", order)
    else:
        recnos = array("I")
        recnos.fromlist(order)  # a third faster than iterating the list
    return KeyIndex(width, key_blob + recnos.tobytes())


def iter_keys(index: KeyIndex) -> Iterator[bytes]:
    """Distinct keys in order (for tests and reports)."""
    last = None
    keys = index._keys
    for i in range(len(keys)):
        key = keys[i].rstrip(b"\x00")
        if key != last:
            last = key
            yield key
