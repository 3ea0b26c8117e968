"""Artifact downloads over HTTP with Range requests, so an interrupted download resumes. Names are looked up in
the registry (never joined to a path as given), and no response carries more than the size the registry recorded
for the artifact."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fleet.store import Store
from runtime.errors import BundleError, NotFound

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\.(tar|coreml\.zip)$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable (size {size})")
        self.size = size


def resolve(store: Store, artifacts_dir: Path, name: str) -> tuple[Path, int, str]:
    """(path, size, sha256) of a registered artifact; NotFound for any name the registry does not hold, which
    includes every name with a path separator or `..`."""
    if not NAME_RE.match(name) or ".." in name:
        raise NotFound(f"no artifact {name!r}")
    rows = store.rows("SELECT path, size, sha256, coreml, coreml_size, coreml_sha256 FROM bundles "
                      "WHERE path = ? OR coreml = ?", (name, name))
    if not rows:
        raise NotFound(f"no artifact {name!r}")
    r = rows[0]
    size, sha = (r["size"], r["sha256"]) if r["path"] == name else (r["coreml_size"], r["coreml_sha256"])
    path = Path(artifacts_dir) / name
    if not path.is_file():
        raise NotFound(f"artifact {name!r} is registered but missing on disk")
    if path.stat().st_size != size:
        raise BundleError(f"artifact {name!r} on disk has {path.stat().st_size} bytes, the registry says {size}; "
                          "refusing to serve it")
    return path, size, sha


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range, None to send the whole file (no header, or a form we
    do not serve, such as several ranges: RFC 9110 lets a server ignore Range). RangeNotSatisfiable when the
    range starts past the end."""
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(size)
        start, end = max(size - n, 0), size - 1
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end


def iter_file(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes start..end inclusive; never past `end` even if the file grew meanwhile."""
    remaining = end - start + 1
    with open(path, "rb") as fh:
        fh.seek(start)
        while remaining > 0:
            chunk = fh.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
