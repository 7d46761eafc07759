"""What both log backends store: the exchange columns, in order, and the layout version.

Kept in one place so that SQLite and PostgreSQL logs cannot drift apart; both refuse a log
of another version (no silent migration of evidence).

Version 5 stores no leaf: each entry's leaf is rebuilt from its columns (``record.leaf_of``)
and only its RFC 9162 hash is kept. The leaf repeated the columns it is made of and was a
third of the row; without it two rows fit a page and the tree is rebuilt from 32 bytes per
entry at start-up instead of a kilobyte.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "LEAF", "SCHEMA_VERSION", "STORED", "TREE_BLOCK", "TREE_BLOCK_HEIGHT"]

SCHEMA_VERSION = 5

COLUMNS = (
    "leaf_index", "message_id", "request_id", "role", "client", "service", "user_id", "issue",
    "represented_party", "method", "status", "error_type", "started_at", "finished_at",
    "leaf_hash", "request_meta", "request_signature", "response_meta", "response_signature",
    "request_body", "response_body", "request_body_sha256", "response_body_sha256",
    "request_cert_sha256", "response_cert_sha256", "subjects",
)  # fmt: skip

# The columns a record gives (all but the leaf index, which the writer assigns).
STORED = COLUMNS[1:]

# Not a column: the name under which readers hand out each entry's rebuilt leaf.
LEAF = "leaf"

# The log's Merkle tree is kept (in a node's memory) and stored (table tree_block) as the
# roots of blocks of this many leaves: what memory, a proof's reads and the stored roots cost
# is balanced at 256 (~0.25 bytes an entry; 256 leaf hashes read per block a proof reaches).
TREE_BLOCK_HEIGHT = 8
TREE_BLOCK = 1 << TREE_BLOCK_HEIGHT
