"""A node (X-Road: security server).

- ``consumer.py``: the client proxy. Client systems call it with X-Road REST r1; it
  authenticates them, signs the request, sends it to the provider's node, checks the answer.
- ``provider.py``: the server proxy. Other nodes call it over mutual TLS; it verifies, checks
  access rights, calls the adapter, signs the answer.
- ``node.py``: assembles both around one global configuration, key set and message log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xroad_hub.node.node import Node

__all__ = ["Node"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the node pulls in the HTTP stack and every adapter, which the
    # CLI's other commands (and the audit's worker processes) never need.
    if name == "Node":
        from xroad_hub.node.node import Node

        return Node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
