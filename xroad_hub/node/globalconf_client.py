"""Downloads, verifies and refreshes the global configuration for a node."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
    ) -> None:
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
        if self._conf is not None and conf.generated_at < self._conf.generated_at:
            raise GlobalConfError("downloaded configuration is older than the one in force")
        if self._conf is None or conf.trusted_cas_der != self._conf.trusted_cas_der:
            self.verifier = SignatureVerifier(conf.trusted_cas)
        self._conf, self._signed = conf, data
        return conf

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
