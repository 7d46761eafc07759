"""Batch signing on the event loop."""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.serialization import Encoding

from xroad_hub.node.batching import BatchSigner
from xroad_hub.pki import generate_key, issue_cert, make_root_ca
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.signing import BatchSignature, MessageSigner, SignatureVerifier

DOPA = parse_member_id("TH/GOV/DOPA")


def _signer() -> tuple[BatchSigner, SignatureVerifier]:
    ca_key, ca_cert = make_root_ca("test CA")
    key = generate_key()
    der = issue_cert(ca_key, ca_cert, str(DOPA), key, purpose="sign").public_bytes(Encoding.DER)
    return BatchSigner(MessageSigner(DOPA, key, der)), SignatureVerifier([ca_cert])


async def test_concurrent_requests_share_one_signature() -> None:
    signer, verifier = _signer()
    items = [f"exchange {i}".encode() for i in range(20)]
    sigs = await asyncio.gather(*(signer.sign(item) for item in items))
    decoded = [BatchSignature.decode(s) for s in sigs]
    assert {d.size for d in decoded} == {20}
    assert sorted(d.index for d in decoded) == list(range(20))
    assert len({d.signature for d in decoded}) == 1
    for item, sig in zip(items, sigs, strict=True):
        verifier.verify(item, sig, signer.cert_der, DOPA)


async def test_a_lone_request_is_signed_alone_and_at_once() -> None:
    signer, verifier = _signer()
    first = await signer.sign(b"one")
    second = await signer.sign(b"two")
    assert BatchSignature.decode(first).size == BatchSignature.decode(second).size == 1
    verifier.verify(b"two", second, signer.cert_der, DOPA)
