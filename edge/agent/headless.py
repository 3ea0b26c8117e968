"""A headless AgentHost: holds the active release's loaded bundles and swaps them atomically, with no capture
pipeline. Used for tests, benchmarks and fleet simulations; the daemon (edge/daemon.py) is the production host."""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

from edge.outbox import ensure_schema
from fleet.protocol import ReleaseSpec
from runtime.bundle import load_bundle
from runtime.errors import BundleError
from runtime.predictor import BundleModel


class HeadlessHost:
    """`load_models=False` skips ONNX Runtime sessions (for simulating hundreds of devices in one process); the
    bundle is still opened and verified, so a missing or corrupt bundle still fails the activation."""

    def __init__(self, device_id: str, workdir: Path, images: list[Path] | None = None, *,
                 load_models: bool = True, keep_loaded: int = 6) -> None:
        self.device_id = device_id
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._db = self.workdir / "device.db"
        conn = sqlite3.connect(self._db)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            ensure_schema(conn)
        finally:
            conn.close()
        self.images = list(images or [])
        self.load_models, self.keep_loaded = load_models, keep_loaded
        self._lock = threading.Lock()
        self._active: tuple[ReleaseSpec | None, ReleaseSpec | None] = (None, None)
        self._models: dict[str, BundleModel | None] = {}
        self._loaded: OrderedDict[Path, BundleModel | None] = OrderedDict()
        self.activations = 0

    @property
    def db_path(self) -> Path:
        return self._db

    def _model(self, path: Path) -> BundleModel | None:
        if path in self._loaded:
            self._loaded.move_to_end(path)
            return self._loaded[path]
        bundle = load_bundle(path)
        model = BundleModel(bundle).load() if self.load_models else None
        if model is None:
            bundle.close()
        self._loaded[path] = model
        return model

    def activate(self, release: ReleaseSpec, candidate: ReleaseSpec | None, bundles: dict[str, Path]) -> None:
        needed = [s.bundle for r in (release, candidate) if r for s in r.stages]
        missing = [b for b in needed if b not in bundles]
        if missing:
            raise BundleError(f"{release.ref}: no bundle directory for {', '.join(missing)}")
        # load everything before taking the lock: the swap itself is one assignment between two frames
        models = {b: self._model(Path(bundles[b])) for b in needed}
        with self._lock:
            self._models = models
            self._active = (release, candidate)
            self.activations += 1
        in_use = {Path(bundles[b]) for b in needed}
        while len(self._loaded) > self.keep_loaded:
            path = next((p for p in self._loaded if p not in in_use), None)
            if path is None:
                break
            model = self._loaded.pop(path)
            if model is not None:
                model.close()
                model.bundle.close()

    def current(self) -> tuple[ReleaseSpec | None, ReleaseSpec | None]:
        with self._lock:
            return self._active

    def models(self) -> dict[str, BundleModel | None]:
        with self._lock:
            return dict(self._models)

    def recent_images(self, limit: int) -> list[Path]:
        return self.images[:limit]

    def status(self) -> dict:
        active, candidate = self.current()
        return {"active": active.ref if active else None, "candidate": candidate.ref if candidate else None,
                "backends": ["onnxruntime"] if self.load_models else [], "activations": self.activations}

    def close(self) -> None:
        for model in self._loaded.values():
            if model is not None:
                model.close()
                model.bundle.close()
        self._loaded.clear()
