"""Downloads, verifies and refreshes the global configuration for a node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xroad_hub.privatefile import write_private
from xroad_hub.protocol.globalconf import GlobalConf, GlobalConfError, verify_globalconf
from xroad_hub.protocol.signing import SignatureVerifier
from xroad_hub.streams import BodyTooLarge, read_capped

__all__ = ["GlobalConfClient"]

log = structlog.get_logger("xroad_hub.protocol.globalconf")


class GlobalConfClient:
    def __init__(
        self,
        url: str,
        anchor: x509.Certificate,
        refresh_interval: float,
        *,
        ssl_context: ssl.SSLContext | None = None,
        state_path: Path | None = None,
    ) -> None:
        """``state_path``: where the node remembers the newest configuration it accepted
        (None: only in memory), so a restarted node refuses an older, still validly signed
        one (say, from before a revocation) that whoever sits between it and the central
        server might replay."""
        self.url = url
        # HTTPS to a central server whose certificate its own CA issued (None: plain HTTP or
        # the system's CAs); the document's signature is what is trusted either way.
        self._ssl = ssl_context
        self._anchor = anchor
        self._interval = refresh_interval
        self._conf: GlobalConf | None = None
        self._signed = b""  # the registry's signed document of ``_conf``, as downloaded
        self.verifier = SignatureVerifier([])
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # For health and metrics: why the last refresh failed (None: it succeeded), and
        # how many have failed since the node started.
        self.last_error: str | None = None
        self.refresh_failures = 0
        # Since when downloads have failed (None: the last one worked): alerts (node/slo.py).
        self.failing_since: float | None = None
        self._state = state_path
        # The newest configuration ever accepted: (serial, generated_at).
        self._floor: tuple[int, datetime] | None = _read_floor(state_path)

    @classmethod
    def from_files(cls, url: str, anchor_pem: Path, refresh_interval: float) -> GlobalConfClient:
        return cls(url, x509.load_pem_x509_certificate(anchor_pem.read_bytes()), refresh_interval)

    def current(self) -> GlobalConf | None:
        """The configuration in force, or None when there is none or it has expired."""
        conf = self._conf
        return None if conf is None or conf.expired() else conf

    def current_signed(self) -> tuple[GlobalConf, bytes] | None:
        """The configuration in force with the signed document it came in: the message log
        keeps the latter, so evidence can prove what the configuration said."""
        conf = self.current()
        return None if conf is None else (conf, self._signed)

    @property
    def anchor_der(self) -> bytes:
        """The registry's configuration-signing certificate (DER)."""
        return self._anchor.public_bytes(serialization.Encoding.DER)

    def install(self, data: bytes) -> GlobalConf:
        """Verify a downloaded document and use it; raises GlobalConfError if unusable."""
        conf = verify_globalconf(data, self._anchor)
        # Ordered by serial, the central server's counter, not by generation time: its
        # clock may be set back (corrected), its serials never are.
        if self._conf is not None and conf.serial < self._conf.serial:
            raise GlobalConfError("downloaded configuration is older than the one in force")
        floor = self._floor
        if floor is not None and conf.serial < floor[0]:
            # A replayed older document: keep the one in force (if any) and say so.
            log.warning(
                "globalconf.rollback_refused",
                serial=conf.serial,
                accepted_serial=floor[0],
                accepted_generated_at=floor[1].isoformat(),
            )
            raise GlobalConfError(
                f"downloaded configuration serial {conf.serial} is older than serial "
                f"{floor[0]} already accepted (generated {floor[1].isoformat()}): refused"
            )
        if floor is None or conf.serial > floor[0]:
            self._remember(conf)
        if self._conf is None or conf.trusted_cas_der != self._conf.trusted_cas_der:
            self.verifier = SignatureVerifier(conf.trusted_cas)
        self._conf, self._signed = conf, data
        return conf

    def _remember(self, conf: GlobalConf) -> None:
        self._floor = (conf.serial, conf.generated_at)
        if self._state is not None:
            state = {"serial": conf.serial, "generated_at": conf.generated_at.isoformat()}
            try:
                write_private(self._state, json.dumps(state).encode() + b"\n")
            except OSError as exc:
                # Not fatal: the configuration is valid; only the memory across restarts is lost.
                log.warning("globalconf.state_not_saved", path=str(self._state), error=str(exc))

    async def refresh(self) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(self.url, ssl=self._ssl or True) as resp:
                if resp.status != 200:
                    raise GlobalConfError(f"registry answered HTTP {resp.status}")
                data = await read_capped(resp.content, 8 * 1024 * 1024)
            conf = self.install(data)
        except (aiohttp.ClientError, TimeoutError, GlobalConfError, BodyTooLarge) as exc:
            log.warning("globalconf.refresh_failed", url=self.url, error=str(exc))
            self.last_error = str(exc)[:200] or type(exc).__name__
            self.refresh_failures += 1
            self.failing_since = self.failing_since or time.time()
            return False
        self.last_error = None
        self.failing_since = None
        log.debug("globalconf.refreshed", serial=conf.serial, expires_at=str(conf.expires_at))
        return True

    async def start(self) -> None:
        ok = await self.refresh()
        self._task = asyncio.create_task(self._loop(ok), name="globalconf-refresh")

    async def _loop(self, ok: bool) -> None:
        while True:
            # Retry sooner after a failure, so a registry outage heals within seconds.
            await asyncio.sleep(self._interval if ok else min(self._interval, 2.0))
            ok = await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            # A stopped node may be started again (after an outage): it needs a new session.
            self._session = None


def _read_floor(path: Path | None) -> tuple[int, datetime] | None:
    """The newest configuration a node accepted before it was restarted, or None."""
    if path is None or not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return int(d["serial"]), datetime.fromisoformat(str(d["generated_at"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Unreadable: refuse to start rather than forget, or a corrupted file would reopen
        # the rollback it exists to close.
        raise GlobalConfError(
            f"{path} (the newest global configuration accepted) is unreadable: {exc}; "
            "remove it only if you trust the network path to the central server"
        ) from exc
