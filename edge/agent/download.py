"""HTTP download of a bundle tar: resumes with a Range request, never reads past the advertised size, checks the
sha256, and renames into place only when complete."""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx

from runtime.errors import BundleError
from runtime.fsio import CHUNK, fsync_dir

Progress = Callable[[int, int], None]


def _hash_prefix(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every download of this process: building one loads the CA bundle (~25 ms of CPU),
    which httpx would otherwise do for every client, i.e. every artifact, even over plain HTTP."""
    return httpx.create_ssl_context()


def download(url: str, dest: Path, sha256: str, size: int, *, token: str | None = None, timeout: float = 30.0,
             progress: Progress | None = None, client: httpx.Client | None = None) -> Path:
    """Fetch `url` to `dest` (kept as `dest.part` until complete). A partial file from an earlier attempt is
    resumed with `Range: bytes=N-`; a server that ignores the Range header makes us start over rather than
    append the whole body. Raises BundleError if the body exceeds `size` or its sha256 differs."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size == size and _hash_prefix(dest).hexdigest() == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if 0 < have < size:
        headers["Range"] = f"bytes={have}-"
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=True, verify=_ssl_context())
    try:
        if have == size:
            h = _hash_prefix(part)
        else:
            with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 206 and have:
                    h = _hash_prefix(part)
                    mode = "ab"
                elif resp.status_code == 200:
                    h, have, mode = hashlib.sha256(), 0, "wb"
                elif resp.status_code == 416 and have:
                    # our partial file is longer than what the server holds now: start over next attempt
                    part.unlink(missing_ok=True)
                    raise BundleError(f"{url}: server rejected resume at byte {have}; partial download discarded")
                else:
                    raise BundleError(f"{url}: HTTP {resp.status_code}")
                with open(part, mode) as fh:
                    # unsized: every received piece reaches the .part file, so an interrupted transfer resumes
                    for chunk in resp.iter_bytes():
                        if have + len(chunk) > size:
                            fh.close()
                            part.unlink(missing_ok=True)
                            raise BundleError(f"{url}: body exceeds the advertised size of {size} bytes")
                        fh.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        if progress:
                            progress(have, size)
                    fh.flush()
                    os.fsync(fh.fileno())
    except httpx.HTTPError as err:
        # the partial file stays: the next attempt resumes from it
        raise BundleError(f"{url}: download interrupted at {have} of {size} bytes ({err})") from err
    finally:
        if own:
            client.close()
    if have != size:
        raise BundleError(f"{url}: got {have} of {size} bytes (will resume)")
    if h.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise BundleError(f"{url}: sha256 {h.hexdigest()} does not match the advertised {sha256}")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
