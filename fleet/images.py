"""Images uploaded by devices (and iPads) for their inspectors' cases: content-addressed blobs on disk
(`<dir>/<sha256[:2]>/<sha256>`), one row per (device, prediction) in the store's `images` table (migration 0004),
within a disk budget. `fleet promote-data` reads them back by prediction.

Idempotent by construction: a blob is written once whatever the number of uploads of the same bytes, a
(device, prediction) is recorded once, and a second upload for it with other bytes is a conflict, not a
replacement (the first image is the one the verdicts were given on). A blob is written under a temporary name,
fsynced and renamed, so a crash never leaves a partial image under a sha256 name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.protocol import now_iso
from runtime.errors import Conflict, ImageError, NotFound, StorageFull, TooLarge
from runtime.fsio import fsync_dir

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SUFFIX_RE = re.compile(r"^\.[a-z0-9]{1,8}$")


@dataclass(frozen=True)
class Stored:
    created: bool  # False: this (device, prediction) was recorded already with the same bytes
    sha256: str
    size: int


class ImageStore:
    def __init__(self, store: Any, directory: Path, budget_bytes: int, max_image_bytes: int) -> None:
        self.store, self.dir = store, Path(directory)
        self.budget, self.max_image = budget_bytes, max_image_bytes

    def blob_path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ImageError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return self.dir / sha256[:2] / sha256

    def used_bytes(self) -> int:
        rows = self.store.rows("SELECT COALESCE(SUM(size), 0) AS used FROM (SELECT sha256, MAX(size) AS size "
                               "FROM images GROUP BY sha256) blobs")
        return int(rows[0]["used"])

    async def put(self, device: str, prediction_id: str, sha256: str, reasons: list[str], suffix: str,
                  uploader: str, body: AsyncIterator[bytes], length: int | None) -> Stored:
        """Store the image `body` of `device`'s prediction, whose content must hash to `sha256`."""
        path = self.blob_path(sha256)
        if not SUFFIX_RE.match(suffix):
            raise ImageError(f"suffix {suffix!r}: expected a file extension such as .jpg")
        have = self.store.get("images", (device, prediction_id))
        if have is not None:
            if have["sha256"] != sha256:
                raise Conflict(f"prediction {prediction_id} of {device} has another image already "
                               f"(sha256 {have['sha256']}); the first upload stands")
            return Stored(False, sha256, int(have["size"]))
        if length is not None and length > self.max_image:
            raise TooLarge(f"image of {length} bytes is over the limit of {self.max_image} bytes")
        if not path.is_file():
            if length is not None and self.used_bytes() + length > self.budget:
                raise StorageFull(f"the fleet's image store is full ({self.budget} bytes); retry later")
            size = await self._write(path, sha256, body)
        else:
            size = path.stat().st_size
            async for _ in body:  # the bytes are known already; read the body to its end and keep nothing
                pass
        # two identical uploads racing past the check above write the same row twice: harmless
        self.store.upsert("images", {"device": device, "prediction_id": prediction_id, "sha256": sha256,
                                     "size": size, "suffix": suffix, "reasons": ",".join(reasons),
                                     "uploader": uploader, "uploaded_at": now_iso()}, ("device", "prediction_id"))
        return Stored(True, sha256, size)

    async def _write(self, path: Path, sha256: str, body: AsyncIterator[bytes]) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=path.parent)
        h, n = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in body:
                    n += len(chunk)
                    if n > self.max_image:
                        raise TooLarge(f"image is over the limit of {self.max_image} bytes")
                    h.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if n == 0:
                raise ImageError("empty body: send the image bytes")
            if h.hexdigest() != sha256:
                raise ImageError(f"the body's sha256 is {h.hexdigest()}, not {sha256} as the URL says")
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return n

    def find(self, device: str, prediction_id: str) -> dict[str, Any] | None:
        return self.store.get("images", (device, prediction_id))

    def read(self, device: str, prediction_id: str) -> bytes | None:
        """The image uploaded for `device`'s prediction (None: none was), checked against its sha256."""
        row = self.find(device, prediction_id)
        if row is None:
            return None
        data = self.blob_path(row["sha256"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise ImageError(f"image {row['sha256']} of {device}/{prediction_id} is damaged on disk")
        return data

    def list(self, device: str | None = None, since: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = [], []
        if device is not None:
            where.append("device = ?")
            args.append(device)
        if since is not None:
            where.append("uploaded_at >= ?")
            args.append(since)
        sql = "SELECT * FROM images" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.store.rows(sql + " ORDER BY uploaded_at DESC LIMIT ?", (*args, limit)))

    def blob(self, sha256: str) -> Path:
        path = self.blob_path(sha256)
        if not path.is_file():
            raise NotFound(f"no image with sha256 {sha256}")
        return path
