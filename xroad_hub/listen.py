"""Listening sockets for the federation's servers, with errors a user can act on.

A port already taken (a second ``xroad-hub up``, another program) is a mistake in how the
federation is run, not a crash: the error names the address, the component that wanted it
and the federation-file key that sets it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from xroad_hub.errors import ConfigError

__all__ = ["ListenError", "is_loopback_host", "listen_socket"]

_REASONS = {
    errno.EADDRINUSE: (
        "the address is already in use (is another 'xroad-hub up' running?): stop whatever "
        "listens there, or change {key} in the federation file"
    ),
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: change {key}",
    errno.EACCES: "permission denied (ports below 1024 need privileges): change {key}",
}


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine only: where plain HTTP may carry secrets."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ListenError(ConfigError):
    """A server could not listen on its configured address."""


def listen_socket(address: tuple[str, int], component: str, key: str) -> socket.socket:
    """A listening TCP socket on ``address`` for ``component`` (e.g. "node TH/GOV/DBD/hub1
    client port"), whose address the federation file sets with ``key``."""
    try:
        return socket.create_server(address, reuse_port=False)
    except OSError as exc:
        host, port = address
        reason = _REASONS.get(exc.errno or 0, "{error}: check {key}")
        text = reason.format(key=key, error=exc.strerror or exc)
        raise ListenError(f"cannot listen on {host}:{port} for {component}: {text}") from exc
