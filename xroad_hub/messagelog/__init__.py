"""The node's message log: every exchange the node takes part in, stored before it answers."""

from xroad_hub.messagelog.postgres import PostgresMessageLog
from xroad_hub.messagelog.record import LogRecord
from xroad_hub.messagelog.sqlite import SQLiteMessageLog
from xroad_hub.messagelog.store import MessageLog

__all__ = ["LogRecord", "MessageLog", "PostgresMessageLog", "SQLiteMessageLog"]
