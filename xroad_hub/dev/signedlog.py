"""A message log of genuinely signed exchanges, built through the log's own API: what the
audit's tests and scripts/bench_audit.py verify (members' signatures in batches as a busy
node makes them, checkpoints co-signed by the registry's witness)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xroad_hub.messagelog import LogRecord, MessageLog
from xroad_hub.pki import generate_key, issue_cert, make_root_ca
from xroad_hub.protocol.checkpoint import Checkpoint, NoteSigner, sign_note
from xroad_hub.protocol.identifiers import parse_member_id
from xroad_hub.protocol.message import body_digest, canonical
from xroad_hub.protocol.rest import request_hash
from xroad_hub.protocol.signing import MessageSigner

__all__ = ["NODE", "build_signed_log"]

NODE = "TH/GOV/DBD/hub1"
ISSUE = "BMA-FOOD-2569-0001"  # the case every exchange is logged under
_BATCH = 64  # messages per signature batch, and appends awaited together


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


async def build_signed_log(
    log: MessageLog,
    n: int,
    when: Callable[[int], float] | None = None,
    *,
    checkpoints_at: Sequence[int] = (),
    end_checkpoint: bool = True,
    varied: bool = False,
) -> list[x509.Certificate]:
    """``n`` exchanges signed by their members in batches, logged by ``log`` (opened and
    closed here), with a checkpoint co-signed by the registry's witness at each size in
    ``checkpoints_at`` and (``end_checkpoint``) at the end; ``when(i)`` gives entry i's
    started/finished time. Returns the federation root, for verify_log.

    The exchanges concern one person and have the ids m0, m1... unless ``varied``: then each
    has a random message id and concerns one of a million persons, as in a node's log after
    a while, so that its indexes are as large and as scattered."""
    ca_key, ca_cert = make_root_ca("test root")
    signers = {}
    for member in ("TH/GOV/DGA", "TH/GOV/DBD"):
        key = generate_key()
        der = _der(issue_cert(ca_key, ca_cert, member, key, purpose="sign"))
        signers[member] = MessageSigner(parse_member_id(member), key, der)
    node_key = ed25519.Ed25519PrivateKey.generate()
    node_cert = _der(issue_cert(ca_key, ca_cert, NODE, node_key, purpose="checkpoint"))
    witness_key = ed25519.Ed25519PrivateKey.generate()
    witness_cert = _der(
        issue_cert(ca_key, ca_cert, "TH/registry", witness_key, purpose="checkpoint")
    )
    body = b'{"juristic_id":"0105744622488","status":"active"}' * 4

    async def checkpoint() -> None:
        size, root = log.tree_head()
        text = Checkpoint(f"xroad-hub/{NODE}", size, root).text()
        note = sign_note(text, NoteSigner(NODE, node_key))
        await log.add_checkpoint(size, root, note, node_cert, time.time())
        cosigned = note + NoteSigner("TH/registry", witness_key).signature_line(text)
        await log.record_witness(size, cosigned, witness_cert)

    def message_id(i: int) -> str:
        return str(uuid.UUID(bytes=random.randbytes(16), version=4)) if varied else f"m{i}"

    def subject() -> str:
        return f"{1101700000000 + random.randrange(10**6)}" if varied else "0105744622488"

    def record(
        i: int, ids: tuple[str, str], meta: bytes, sig: bytes, answer: bytes, answer_sig: bytes
    ) -> LogRecord:
        t = time.time() if when is None else when(i)
        return LogRecord(
            message_id=ids[0], request_id=f"r{i}", role="provider",
            client="TH/GOV/DGA/citizenportal", service="TH/GOV/DBD/registry/companies",
            user_id="TH1101700203450", issue=ISSUE, represented_party=None, method="GET",
            status=200, error_type=None, started_at=t, finished_at=t, request_meta=meta,
            request_signature=sig, request_body=b"",
            request_cert=signers["TH/GOV/DGA"].cert_der, response_meta=answer,
            response_signature=answer_sig, response_body=body,
            response_cert=signers["TH/GOV/DBD"].cert_der, subjects=(ids[1],),
        )  # fmt: skip

    # Batches end at each checkpoint's size, so that it is taken there.
    ends = sorted({*(s for s in checkpoints_at if 0 < s < n), *range(_BATCH, n, _BATCH), n})
    await log.open()
    try:
        start = 0
        for end in ends:
            ids = [(message_id(i), subject()) for i in range(start, end)]
            metas = [
                canonical({
                    "v": 1, "kind": "request", "id": mid, "request_id": f"r{i}",
                    "client": "TH/GOV/DGA/citizenportal",
                    "service": "TH/GOV/DBD/registry/companies", "method": "GET",
                    "path": f"/{i}", "query": "", "user_id": "TH1101700203450",
                    "issue": ISSUE, "represented_party": None,
                    "headers": [["Accept", "application/json"]],
                    "created": time.time(), "body_sha512": body_digest(b""),
                })
                for i, (mid, _) in zip(range(start, end), ids, strict=True)
            ]  # fmt: skip
            answers = [
                canonical({
                    "v": 1, "kind": "response", "id": mid, "request_id": f"r{i}",
                    "status": 200, "request_hash": request_hash(meta, b""),
                    "created": time.time(), "body_sha512": body_digest(body),
                    "headers": [["Content-Type", "application/json"]],
                })
                for i, (mid, _), meta in zip(range(start, end), ids, metas, strict=True)
            ]  # fmt: skip
            sigs = signers["TH/GOV/DGA"].sign_batch(metas)
            answer_sigs = signers["TH/GOV/DBD"].sign_batch(answers)
            await asyncio.gather(
                *(log.append(record(i, *signed)) for i, *signed in zip(
                    range(start, end), ids, metas, sigs, answers, answer_sigs, strict=True
                ))
            )  # fmt: skip
            if end in checkpoints_at or (end == n and end_checkpoint):
                await checkpoint()
            start = end
    finally:
        await log.close()
    return [ca_cert]
