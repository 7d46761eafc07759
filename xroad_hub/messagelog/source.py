"""Where an auditor's log is: a SQLite file, or a node's schema in a PostgreSQL database.

``open_reader`` turns what a user typed (a path, or a ``postgresql://`` DSN with the node
or schema) into a `LogReader`; ``reading`` lets the functions that read a log take either
a source or a reader someone already opened (and close only what they opened).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from xroad_hub.messagelog.postgres import (
    PostgresLogReader,
    is_dsn,
    log_schemas,
    schema_for_node,
    validate_schema_name,
)
from xroad_hub.messagelog.reader import LogAddress, LogReader, LogReadError
from xroad_hub.messagelog.sqlite import SQLiteLogReader

__all__ = ["LogOpener", "LogSource", "log_schema", "open_address", "open_reader", "reading"]

# What the node's APIs hold: a function opening a fresh reader (the message log's
# ``reader`` method), called per request in a worker thread.
LogOpener: TypeAlias = Callable[[], LogReader]
# A log file, a PostgreSQL DSN, a reader already open, or a function that opens one.
LogSource: TypeAlias = Path | str | LogReader | LogOpener


def open_reader(
    target: Path | str, *, schema: str | None = None, node: str | None = None
) -> LogReader:
    """A reader of the log at ``target``: a SQLite file, or a ``postgresql://`` DSN whose
    log is in ``schema``, else in the schema of ``node``, else in the database's only log.
    Raises LogReadError saying what to pass when that is not enough."""
    if isinstance(target, Path) or not is_dsn(target):
        path = Path(target)
        if not path.is_file():
            raise LogReadError(
                f"no log file at {path}; name a node's messagelog.sqlite or a PostgreSQL "
                "database (postgresql://...)"
            )
        return SQLiteLogReader(path)
    return PostgresLogReader(target, schema=log_schema(target, schema=schema, node=node))


def open_address(address: LogAddress) -> LogReader:
    """A reader of the log another reader's ``address()`` names, at its snapshot."""
    if address.schema is None:
        return SQLiteLogReader(Path(address.target))
    return PostgresLogReader(address.target, schema=address.schema, snapshot=address.snapshot)


def log_schema(dsn: str, *, schema: str | None = None, node: str | None = None) -> str:
    """The schema of the log the user named in the database at ``dsn``: ``schema``, else
    that of ``node``, else the database's only log. LogReadError saying what to pass when
    that is not enough."""
    if schema is not None:
        try:
            return validate_schema_name(schema)
        except ValueError as exc:
            raise LogReadError(str(exc)) from exc
    if node is not None:
        return schema_for_node(node)
    found = log_schemas(dsn)
    if len(found) != 1:
        held = f"logs in schemas {', '.join(found)}" if found else "no message log"
        raise LogReadError(
            f"the database holds {held}; name the node (--node NODE-ID) or the schema "
            "(--schema NAME)"
        )
    return found[0]


@contextmanager
def reading(source: LogSource) -> Iterator[LogReader]:
    """A reader of ``source``: the one given, or one opened here and closed after."""
    if isinstance(source, Path | str):
        reader = open_reader(source)
    elif callable(source):
        reader = source()
    else:
        yield source
        return
    try:
        yield reader
    finally:
        reader.close()
