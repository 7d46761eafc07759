"""xroad-hub: X-Road style signed, logged, access-controlled data exchange.

Where things are:
- consumer path (client proxy): ``xroad_hub/node/consumer.py``
- provider path (server proxy): ``xroad_hub/node/provider.py``, adapters in ``adapters/``
- message log: ``xroad_hub/messagelog/``
- sans-I/O core: ``identifiers``, ``rest`` (r1), ``message`` (signed envelopes),
  ``signing``, ``globalconf``, ``clientauth``
"""

from xroad_hub.errors import XRoadError

__all__ = ["XRoadError"]
__version__ = "0.1.0"
