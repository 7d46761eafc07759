"""PostgreSQL for the central server's and the node's settings stores in tests: ``pg_schema``
gives a test a fresh schema (dropped after it), or skips the test when the server is
unreachable (fails under CI, as tests/messagelog_backends.py does for the message log).

Use it with ``pytest_plugins = ["tests.pg_stores"]``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

# Its PG_DSN and skip rule, imported in functions only: a module imported before pytest
# loads it as a plugin cannot have its asserts rewritten (an error with warnings as errors).
pytest_plugins = ["tests.messagelog_backends"]

__all__ = ["central_db", "drop_schema", "pg_dsn"]

_problem: list[str | None] = []


def pg_dsn() -> str:
    from tests.messagelog_backends import PG_DSN

    return PG_DSN


def _reachable() -> None:
    from tests.messagelog_backends import PG_DSN, skip_or_fail

    if not _problem:
        try:
            psycopg.connect(PG_DSN, connect_timeout=5).close()
            _problem.append(None)
        except psycopg.Error as exc:
            _problem.append(f"{type(exc).__name__}: {exc}")
    if _problem[0] is not None:
        skip_or_fail(PG_DSN, _problem[0])


def drop_schema(schema: str) -> None:
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name no other test uses; dropped (with what the test made in it) after."""
    _reachable()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgres"])
def central_db_args(request: pytest.FixtureRequest) -> dict[str, str]:
    """``init_central``'s keyword arguments for a central server's database: SQLite in its
    directory (none), or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return {}
    return {"db": pg_dsn(), "db_schema": request.getfixturevalue("pg_schema")}


@contextmanager
def central_db(server: Any) -> Iterator[Any]:
    """Raw access to a central server's tables behind its store (``?`` parameters,
    autocommit), as whoever holds the database could."""
    from xroad_hub.central.pgstore import PostgresCentralStore
    from xroad_hub.node.pgsettings import PgConnection

    from .sqlite_db import sqlite_db

    if isinstance(server.store, PostgresCentralStore):
        db = PgConnection(pg_dsn(), server.store.schema, purpose="test")
        try:
            yield db
        finally:
            db.close()
    else:
        with sqlite_db(server.dir.db) as conn:
            yield conn
