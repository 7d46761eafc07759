"""``with sqlite_db(path) as conn:`` commits and closes; ``with sqlite3.connect(path)`` only
commits, and Python 3.13 warns (ResourceWarning, an error in this suite) about every
connection left for the garbage collector."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["sqlite_db"]


@contextmanager
def sqlite_db(path: Any, **kwargs: Any) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, **kwargs)
    try:
        with conn:  # commit, or roll back on an exception
            yield conn
    finally:
        conn.close()
