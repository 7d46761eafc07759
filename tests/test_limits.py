"""Per-client admission (node/limits.py): counts and bytes in flight, released on any exit."""

from __future__ import annotations

import pytest

from xroad_hub.dev.testing import TestFederationSpec, write_federation
from xroad_hub.errors import XRoadError
from xroad_hub.federation import load_federation
from xroad_hub.node.limits import ClientLimits


def _refused(limits: ClientLimits, key: str, reserve: int) -> XRoadError:
    with pytest.raises(XRoadError) as info, limits.admit(key, reserve):
        pass
    return info.value


def test_requests_and_bytes_are_bounded_per_client() -> None:
    limits = ClientLimits(2, 100, raise_as="Server.ServerProxy")
    with limits.admit("a", 60):
        # Alone, a request is admitted whatever its size; together, the bytes count.
        err = _refused(limits, "a", 50)
        assert (err.code, err.status) == ("Server.ServerProxy.TooManyRequests", 429)
        with limits.admit("a", 40):
            assert limits.in_flight("a") == (2, 100)
            _refused(limits, "a", 0)
            with limits.admit("b", 1000):  # another client has its own share
                pass
    assert limits.in_flight("a") == (0, 0)


def test_a_failing_request_is_counted_out() -> None:
    limits = ClientLimits(1, 10, raise_as="Server.ClientProxy")
    with pytest.raises(RuntimeError), limits.admit("a", 5):
        raise RuntimeError("the exchange failed")
    assert limits.in_flight("a") == (0, 0)
    with limits.admit("a", 5):
        pass


def test_limits_are_read_from_the_federation_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_federation(tmp_path / "f.toml", TestFederationSpec(backend_url="http://x"))
    text = path.read_text().replace(
        "max_body_bytes = 1048576",
        "max_body_bytes = 1048576\nclient_max_concurrent = 3\nclient_max_inflight_bytes = 5000000",
        1,
    )
    path.write_text(text)
    node = load_federation(path).nodes[0]
    assert (node.client_max_concurrent, node.client_max_inflight_bytes) == (3, 5_000_000)
