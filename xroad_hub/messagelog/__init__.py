"""The node's message log: every exchange the node takes part in, stored before it answers."""

from .postgres import PostgresMessageLog
from .record import LogRecord
from .sqlite import SQLiteMessageLog
from .store import MessageLog

__all__ = ["LogRecord", "MessageLog", "PostgresMessageLog", "SQLiteMessageLog"]
