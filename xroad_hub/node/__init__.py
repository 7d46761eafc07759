"""A node (X-Road: security server).

- ``consumer.py``: the client proxy. Client systems call it with X-Road REST r1; it
  authenticates them, signs the request, sends it to the provider's node, checks the answer.
- ``provider.py``: the server proxy. Other nodes call it over mutual TLS; it verifies, checks
  access rights, calls the adapter, signs the answer.
- ``node.py``: assembles both around one global configuration, key set and message log.
"""

from xroad_hub.node.node import Node

__all__ = ["Node"]
