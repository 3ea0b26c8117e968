"""Write bundles: staged in a directory beside the destination and renamed into place only when complete, so a
failed export never leaves a half bundle. Reading and verifying is `runtime.bundle`.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import MANIFEST, SIGNATURE, hash_tree
from runtime.errors import BundleError
from runtime.fsio import fsync_dir, replace_tree
from runtime.manifest import Manifest
from runtime.signing import sign


def finish_bundle(staging: Path, manifest: Manifest, destination: Path, signing_key=None,
                  as_tar: bool = False, overwrite: bool = False) -> tuple[Path, Manifest]:
    """Hash the staged files into the manifest, sign it, and move the bundle to `destination` atomically.
    Returns the bundle's path and the manifest as written."""
    manifest = manifest.model_copy(update={"files": hash_tree(staging)})
    data = manifest.to_bytes()
    (staging / MANIFEST).write_bytes(data)
    if signing_key is not None:
        (staging / SIGNATURE).write_bytes(sign(data, signing_key))
    for p in staging.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise BundleError(f"{destination} exists already (use --force to replace it)")
    if as_tar:
        fd, tmp_tar = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        os.close(fd)
        try:
            with tarfile.open(tmp_tar, "w", format=tarfile.PAX_FORMAT) as tar:
                for p in sorted(staging.rglob("*")):
                    if p.is_file():
                        tar.add(p, arcname=f"{manifest.bundle_id}/{p.relative_to(staging).as_posix()}")
            with open(tmp_tar, "rb") as fh:
                os.fsync(fh.fileno())
            replace_tree(Path(tmp_tar), destination)
        except BaseException:
            Path(tmp_tar).unlink(missing_ok=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
    else:
        replace_tree(staging, destination)
    fsync_dir(destination.parent)
    return destination, manifest


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    named: dict[str, Any] = dict(arrays)  # numpy's stub types **kwds like its allow_pickle flag
    np.savez_compressed(buf, **named)
    return buf.getvalue()
