"""Waiting for a daemon started by a packaging test to answer its health route, and never leaving it running."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Yield `proc`; on the way out (a failed assertion included) kill it if it still runs, and reap it."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 60) -> None:
    """Poll http://127.0.0.1:PORT/healthz until it answers 200; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                assert r.status == 200
                return
        except OSError:
            assert time.monotonic() < deadline, "the daemon did not answer /healthz"
            time.sleep(0.1)
