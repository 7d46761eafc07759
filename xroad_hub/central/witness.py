"""Witnessing checkpoints: a second party co-signs a node's checkpoint only if it extends
the last one it co-signed for that node.

A node could rewrite or truncate its own log and sign a fresh checkpoint over the result;
its own signatures cannot show that. A witness (the central registry) remembers the last
checkpoint it saw per node and co-signs a new one only with an RFC 9162 consistency proof
that the old tree is a prefix of the new one. A node that rewrote or truncated its history
cannot get another co-signature, and the conflict is reported. State is kept in a small JSON
file so that a restarted witness still remembers.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog
from aiohttp import web
from cryptography import x509

from xroad_hub.errors import HubError
from xroad_hub.messagelog.audit import verify_node_checkpoint
from xroad_hub.protocol import merkle
from xroad_hub.protocol.checkpoint import Checkpoint, CheckpointError, NoteSigner
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = ["Witness", "WitnessConflict", "WitnessError", "witness_routes"]

log = structlog.get_logger("xroad_hub.central.witness")


class WitnessError(HubError, ValueError):
    """The submission is not a valid checkpoint of a federation node."""


class WitnessConflict(WitnessError):
    """The checkpoint does not extend the last one witnessed: history was rewritten."""

    def __init__(self, message: str, last_size: int) -> None:
        super().__init__(message)
        self.last_size = last_size


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    root: bytes
    note: str


class Witness:
    def __init__(
        self,
        signer: NoteSigner,
        trusted_roots: list[x509.Certificate],
        state: Path | None,
        revoked: Callable[[bytes], str | None] | None = None,
    ) -> None:
        """``revoked`` says why a checkpoint certificate (DER) is revoked, or None: the
        witness's co-signature must not vouch for what a revoked key signs."""
        self._signer = signer
        self._roots = trusted_roots
        self._revoked = revoked
        self._state = state
        self._seen: dict[str, _Seen] = {}
        if state is not None and state.exists():
            for origin, v in json.loads(state.read_text(encoding="utf-8")).items():
                self._seen[origin] = _Seen(v["size"], base64.b64decode(v["root"]), v["note"])

    def latest(self, origin: str) -> tuple[int, str] | None:
        seen = self._seen.get(origin)
        return None if seen is None else (seen.size, seen.note)

    def submit(self, note: str, cert_der: bytes, old_size: int, proof: list[bytes]) -> str:
        """Co-sign ``note`` if it is a valid node checkpoint extending the last one seen."""
        try:
            cp: Checkpoint = verify_node_checkpoint(note, cert_der, self._roots)
        except (CheckpointError, ValueError) as exc:
            raise WitnessError(f"not a valid node checkpoint: {exc}") from exc
        why = self._revoked(cert_der) if self._revoked is not None else None
        if why is not None:
            raise WitnessError(f"not co-signed: {why}")
        seen = self._seen.get(cp.origin)
        if seen is not None:
            if old_size != seen.size:
                raise WitnessConflict(
                    f"prove consistency with size {seen.size}, not {old_size}", seen.size
                )
            if cp.size < seen.size:
                raise WitnessConflict(
                    f"{cp.origin} shrank from {seen.size} to {cp.size} entries (truncated)",
                    seen.size,
                )
            if cp.size == seen.size and cp.root != seen.root:
                raise WitnessConflict(f"{cp.origin} changed its tree at size {cp.size}", seen.size)
            if cp.size > seen.size and not merkle.verify_consistency(
                seen.size, cp.size, seen.root, cp.root, proof
            ):
                raise WitnessConflict(
                    f"{cp.origin} at size {cp.size} does not extend its tree of size "
                    f"{seen.size} (history rewritten)",
                    seen.size,
                )
        text, _, _ = note.partition("\n\n")
        cosigned = note + self._signer.signature_line(text + "\n")
        self._seen[cp.origin] = _Seen(cp.size, cp.root, cosigned)
        self._save()
        return cosigned

    def _save(self) -> None:
        if self._state is None:
            return
        data = {
            o: {"size": s.size, "root": base64.b64encode(s.root).decode(), "note": s.note}
            for o, s in self._seen.items()
        }
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self._state)  # atomic: a crash never leaves half a state file


def witness_routes(witness: Witness, cert_der: bytes) -> list[web.RouteDef]:
    """``GET /witness?origin=`` and ``POST /witness``, as the development registry and the
    central server both serve them."""
    cert = base64.b64encode(cert_der).decode()

    async def latest(request: web.Request) -> web.Response:
        """The last checkpoint co-signed for ``origin``, with the witness's certificate, so
        that an auditor can check a node's log against it (``audit verify --witness``)."""
        seen = witness.latest(request.query.get("origin", ""))
        size, note = (0, None) if seen is None else seen
        return web.json_response({"size": size, "note": note, "cert": cert})

    async def submit(request: web.Request) -> web.Response:
        """A node submits a checkpoint with a consistency proof; it gets it back co-signed,
        or 409 when its history does not extend what was witnessed before."""
        try:
            doc = orjson.loads(await read_capped(request.content, 256 * 1024))
            note, der = str(doc["note"]), base64.b64decode(doc["cert"], validate=True)
            proof = [base64.b64decode(h, validate=True) for h in doc["proof"]]
            cosigned = witness.submit(note, der, int(doc["old_size"]), proof)
        except WitnessConflict as exc:
            log.error("witness.inconsistent", reason=str(exc), last_size=exc.last_size)
            return web.json_response({"error": str(exc), "size": exc.last_size}, status=409)
        except (WitnessError, BodyTooLarge, orjson.JSONDecodeError, KeyError, TypeError,
                ValueError) as exc:  # fmt: skip
            return web.json_response({"error": f"bad submission: {exc}"}, status=400)
        return web.json_response({"note": cosigned, "cert": cert})

    return [web.get("/witness", latest), web.post("/witness", submit)]
