"""Which file an artifact download serves. Names are looked up in the registry (never joined to a path as given),
and a file whose size differs from the registered one is refused. The API serves it with Starlette's FileResponse
(Range requests, so an interrupted download resumes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleet.store import Store
from runtime.errors import BundleError, NotFound

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\.(tar|coreml\.zip)$")


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


def targeted_artifacts(store: Store, device: str) -> set[str]:
    """Artifact names (bundle tars and Core ML zips) of every release the fleet has sent to `device`, as
    release or candidate, now or before (a rollback goes back to an earlier one)."""
    refs: set[str] = set()
    for table in ("desired", "desired_history"):
        for r in store.rows(f"SELECT release, candidate FROM {table} WHERE device = ?", (device,)):
            refs.update(x for x in (r["release"], r["candidate"]) if x)
    if not refs:
        return set()
    bundles: set[str] = set()
    for r in store.rows(f"SELECT spec FROM releases WHERE ref IN ({', '.join('?' * len(refs))})", sorted(refs)):
        bundles.update(s["bundle"] for s in json.loads(r["spec"]).get("stages", []))
    if not bundles:
        return set()
    names: set[str] = set()
    for r in store.rows(f"SELECT path, coreml FROM bundles WHERE id IN ({', '.join('?' * len(bundles))})",
                        sorted(bundles)):
        names.update(x for x in (r["path"], r["coreml"]) if x)
    return names
