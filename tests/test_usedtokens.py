"""Spent one-use token ids: durable across restarts, shared by the processes of a node."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xroad_hub.node.usedtokens import SQLiteUsedTokens, TokenStoreError

from .sqlite_db import sqlite_db

# Far enough ahead that no token in these tests expires before it is checked, however long
# the suite ran before them (a module constant of +300 s was in the past after a 7-minute run).
LATER = time.time() + 24 * 3600


async def test_an_id_is_claimed_once_also_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "used-tokens.sqlite"
    store = SQLiteUsedTokens(path)
    assert await store.claim("c|1", LATER)
    assert not await store.claim("c|1", LATER)
    assert await store.claim("c|2", LATER)
    await store.close()
    # A new instance on the same file is the node after a restart.
    again = SQLiteUsedTokens(path)
    assert not await again.claim("c|1", LATER)
    assert not await again.claim("c|2", LATER)
    await again.close()


async def test_the_file_is_private(tmp_path: Path) -> None:
    store = SQLiteUsedTokens(tmp_path / "used-tokens.sqlite")
    await store.claim("c|1", LATER)
    for name in ("used-tokens.sqlite", "used-tokens.sqlite-wal"):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    await store.close()


async def test_two_connections_claiming_the_same_ids_one_wins_each(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens.sqlite"
    a, b = SQLiteUsedTokens(path), SQLiteUsedTokens(path)
    await a.open()
    await b.open()
    ids = [f"c|{i}" for i in range(100)]
    won_a, won_b = await asyncio.gather(
        asyncio.gather(*(a.claim(i, LATER) for i in ids)),
        asyncio.gather(*(b.claim(i, LATER) for i in ids)),
    )
    assert all(x != y for x, y in zip(won_a, won_b, strict=True))
    await a.close()
    await b.close()


_CLAIMER = """
import asyncio, sys
from pathlib import Path
from xroad_hub.node.usedtokens import SQLiteUsedTokens

async def main() -> None:
    store = SQLiteUsedTokens(Path(sys.argv[1]))
    await store.open()
    sys.stdin.readline()  # start together
    won = [i for i in range(300) if await store.claim(f"c|{i}", 4e9)]
    await store.close()
    print(" ".join(map(str, won)))

asyncio.run(main())
"""


def test_two_processes_claiming_the_same_ids_one_wins_each(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    outs = [p.communicate("go\n", timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    won = [{int(x) for x in out.split()} for out in outs]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(300))


async def test_expired_ids_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens.sqlite"
    store = SQLiteUsedTokens(path)
    assert await store.claim("c|old", time.time() - 1)
    store._next_purge = 0.0  # the next claim purges
    assert await store.claim("c|new", LATER)
    with sqlite_db(path) as db:
        rows = {r[0] for r in db.execute("SELECT token_id FROM used_token")}
    assert rows == {"c|new"}
    await store.close()


async def test_a_store_that_cannot_be_opened_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteUsedTokens(tmp_path / "file" / "used-tokens.sqlite")
    with pytest.raises(TokenStoreError, match="cannot open"):
        await store.claim("c|1", LATER)
