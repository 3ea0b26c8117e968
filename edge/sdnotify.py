"""systemd's readiness protocol (sd_notify(3)): a service of `Type=notify` tells the service manager when it is ready
and when it stops, so `systemctl start` returns (and units ordered after it start) only once the daemon answers,
not when its process was spawned. Without NOTIFY_SOCKET in the environment (not run by systemd) nothing is sent."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1", newline-separated assignments) to $NOTIFY_SOCKET: a path, or an abstract socket
    name written with a leading "@". True when sent; False when there is no socket to send to, or it failed (logged:
    the daemon runs on either way, and systemd then reports the start as timed out)."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    elif not addr.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket name; not notifying", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as err:
        log.warning("cannot notify the service manager at %s: %s", env.get("NOTIFY_SOCKET"), err)
        return False
    return True
