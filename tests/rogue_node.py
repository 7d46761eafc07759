"""Requests as DGA's node signs them for DBD's, crafted by a test: what a rogue or broken
client node could deliver to a provider, correctly signed by DGA's member."""

from __future__ import annotations

import time
import uuid

from xroad_hub.protocol.message import body_digest, canonical, encode_envelope

from .conftest import Fed

DGA = "TH/GOV/DGA/hub1"
DBD = "TH/GOV/DBD/hub1"


async def signed_envelope(fed: Fed, body: bytes = b"", **changes: object) -> bytes:
    """A request of DGA's devportal for DBD's echo service (a GET when there is no body,
    else a POST of octets), its metadata fields replaced by ``changes``."""
    rt = fed.federation.nodes[DGA].runtime
    assert rt is not None
    signer = next(s for m, s in rt.signers.items() if str(m) == "TH/GOV/DGA")
    meta: dict[str, object] = {
        "v": 1,
        "kind": "request",
        "id": str(uuid.uuid4()),
        "request_id": str(uuid.uuid4()),
        "client": "TH/GOV/DGA/devportal",
        "service": "TH/GOV/DBD/registry/echo",
        "target_node": DBD,
        "method": "POST" if body else "GET",
        "path": "",
        "query": "",
        "headers": [["Content-Type", "application/octet-stream"]] if body else [],
        "user_id": None,
        "issue": None,
        "represented_party": None,
        "created": time.time(),
        "body_sha512": body_digest(body),
    }
    meta.update(changes)
    meta_bytes = canonical(meta)
    return encode_envelope(meta_bytes, await signer.sign(meta_bytes), signer.cert_der, body)
