"""The bundle registry: a pushed bundle is verified (every file's hash, the ed25519 signature against the fleet's
trust store) before anything is stored; then it is kept as one uncompressed tar, the artifact devices download,
plus a zip of its Core ML package for iOS inspectors when it has one."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fleet.store import Store
from runtime.bundle import MANIFEST, SIGNATURE, load_bundle
from runtime.errors import BundleError, Conflict, NotFound
from runtime.fsio import fsync_dir, sha256_file
from runtime.signing import TrustStore

COREML_DIR = "coreml/"


def _atomic_file(final: Path, write) -> None:
    """Run `write(tmp_path)`, fsync, rename to `final`: readers never see a half-written artifact."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


class Registry:
    """Bundles known to the fleet, stored under `artifacts_dir` as `{bundle_id}.tar`."""

    def __init__(self, store: Store, artifacts_dir: Path, trust_store: TrustStore | None) -> None:
        self.store, self.dir, self.trust = store, Path(artifacts_dir), trust_store
        self.dir.mkdir(parents=True, exist_ok=True)

    def push(self, path: Path | str, label: str | None = None) -> dict[str, Any]:
        """Verify and register a bundle directory or tar. Pushing the same bundle again is a no-op; a different
        bundle under an existing id is a Conflict. A tampered or untrusted bundle raises BundleError /
        SignatureError naming the file or the key, and `label` (what the admin sent) rather than `path` (where
        the server keeps the upload)."""
        path = Path(path)
        if self.trust is None:
            raise BundleError("the fleet has no trust store configured; refusing to register unsigned bundles")
        with load_bundle(path, self.trust, label=label) as bundle:
            m = bundle.manifest
            bid = m.bundle_id
            existing = self.store.get("bundles", bid)
            manifest_text = bundle.manifest_bytes.decode()
            if existing is not None:
                if existing["manifest"] == manifest_text:
                    return self._public(existing)
                raise Conflict(f"bundle {bid} is registered already with different contents; bump its version")
            tar_path = self.dir / f"{bid}.tar"

            def write_tar(tmp: Path) -> None:
                with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                    for name in [MANIFEST, SIGNATURE, *sorted(m.files)]:
                        tar.add(bundle.root / name, arcname=f"{bid}/{name}", recursive=False)

            _atomic_file(tar_path, write_tar)
            coreml = sorted(n for n in m.files if n.startswith(COREML_DIR))
            row: dict[str, Any] = {"id": bid, "name": m.name, "version": m.version, "task": m.task,
                                   "sha256": sha256_file(tar_path), "size": tar_path.stat().st_size,
                                   "path": tar_path.name, "signer": bundle.signer, "labels": json.dumps(m.labels),
                                   "manifest": manifest_text, "coreml": None, "coreml_sha256": None,
                                   "coreml_size": None, "pushed_at": m.provenance.created_at}
            if coreml:
                zip_path = self.dir / f"{bid}.coreml.zip"

                def write_zip(tmp: Path) -> None:
                    # ZIP_STORED with a fixed date: the same package always gives the same bytes and hash
                    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                        for name in coreml:
                            info = zipfile.ZipInfo(name[len(COREML_DIR):], date_time=(1980, 1, 1, 0, 0, 0))
                            zf.writestr(info, (bundle.root / name).read_bytes())

                _atomic_file(zip_path, write_zip)
                row.update(coreml=zip_path.name, coreml_sha256=sha256_file(zip_path),
                           coreml_size=zip_path.stat().st_size)
            self.store.upsert("bundles", row, pk="id")
            return self._public(row)

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        return {k: (json.loads(v) if k == "labels" else v) for k, v in row.items() if k != "manifest"}

    def get(self, bundle_id: str) -> dict[str, Any]:
        row = self.store.get("bundles", bundle_id)
        if row is None:
            raise NotFound(f"no bundle {bundle_id!r} in the registry")
        return self._public(row)

    def manifest(self, bundle_id: str) -> dict[str, Any]:
        row = self.store.get("bundles", bundle_id)
        if row is None:
            raise NotFound(f"no bundle {bundle_id!r} in the registry")
        return json.loads(row["manifest"])

    def list(self) -> list[dict[str, Any]]:
        return [self._public(r) for r in self.store.rows("SELECT * FROM bundles ORDER BY id")]
