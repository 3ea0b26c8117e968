"""Releases: named, revisioned pipelines of registered bundles (DESIGN.md). The fleet assigns revisions; changing
only thresholds makes a new revision with the same bundles."""

from __future__ import annotations

import builtins
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol import ReleaseSpec, StageSpec, now_iso
from fleet.registry import Registry
from fleet.store import Store
from runtime.errors import ConfigError, NotFound


class ThresholdChange(BaseModel):
    """New thresholds for one stage of a release; everything else, bundles included, stays as it was."""

    model_config = ConfigDict(extra="forbid")
    role: str = Field("verify", description="stage role whose thresholds change: screen or verify")
    threshold: float | None = Field(None, ge=0, le=1, description="screen: the one candidate threshold")
    thresholds: dict[str, float] | None = Field(None, description="verify: {default: t, class: t, ...}")
    note: str = Field("", description="why, e.g. 'threshold tuned, same model'")


class Releases:
    def __init__(self, store: Store, registry: Registry) -> None:
        self.store, self.registry = store, registry

    def _check(self, spec: ReleaseSpec) -> None:
        """Every stage names a registered bundle, and every class it names is one of that bundle's labels."""
        roles = [s.role for s in spec.stages]
        if len(set(roles)) != len(roles):
            raise ConfigError(f"release {spec.name}: stage roles must be unique, got {roles}")
        for i, stage in enumerate(spec.stages):
            labels = set(self.registry.get(stage.bundle)["labels"])
            named = set(stage.candidate_classes or []) | (set(stage.thresholds or {}) - {"default"})
            unknown = sorted(named - labels)
            if unknown:
                raise ConfigError(f"release {spec.name}: stages[{i}] ({stage.bundle}) names unknown classes "
                                  f"{unknown}")
            for cls, t in (stage.thresholds or {}).items():
                if not 0.0 <= t <= 1.0:
                    raise ConfigError(f"release {spec.name}: stages[{i}].thresholds.{cls} = {t} is outside 0..1")

    def create(self, spec: ReleaseSpec, parent: str | None = None) -> ReleaseSpec:
        """Store `spec` as the next revision of its name (the revision in `spec` is ignored)."""
        self._check(spec)
        with self.store.transaction() as st:
            row = st.rows("SELECT max(revision) AS r FROM releases WHERE name = ?", (spec.name,))[0]
            spec = spec.model_copy(update={"revision": (row["r"] or 0) + 1})
            st.upsert("releases", {"ref": spec.ref, "name": spec.name, "revision": spec.revision,
                                   "spec": spec.model_dump_json(), "parent": parent, "created_at": now_iso()},
                      pk="ref")
        return spec

    def tune(self, ref: str, change: ThresholdChange) -> ReleaseSpec:
        """A new revision of `ref` whose only difference is one stage's thresholds."""
        base = self.get(ref)
        stages: list[StageSpec] = []
        found = False
        for s in base.stages:
            if s.role == change.role:
                found = True
                s = s.model_copy(update={k: v for k, v in (("threshold", change.threshold),
                                                           ("thresholds", change.thresholds)) if v is not None})
            stages.append(s)
        if not found:
            raise ConfigError(f"release {base.ref} has no {change.role!r} stage")
        new = base.model_copy(update={"stages": stages, "note": change.note or f"thresholds of {change.role} "
                                      f"changed from {base.ref}, same bundles"})
        return self.create(new, parent=base.ref)

    def get(self, ref: str) -> ReleaseSpec:
        """`name@revision`, or `name` for its latest revision."""
        name, sep, rev = ref.partition("@")
        if sep:
            if not rev.isdigit():
                raise ConfigError(f"release reference {ref!r}: expected name@revision")
            rows = self.store.rows("SELECT spec FROM releases WHERE ref = ?", (ref,))
        else:
            rows = self.store.rows("SELECT spec FROM releases WHERE name = ? ORDER BY revision DESC LIMIT 1",
                                   (name,))
        if not rows:
            raise NotFound(f"no release {ref!r}")
        return ReleaseSpec.model_validate_json(rows[0]["spec"])

    def list(self) -> list[dict[str, Any]]:
        return [{"ref": r["ref"], "parent": r["parent"], "created_at": r["created_at"],
                 "spec": json.loads(r["spec"])}
                for r in self.store.rows("SELECT * FROM releases ORDER BY name, revision")]

    def bundles(self, spec: ReleaseSpec) -> builtins.list[str]:
        return [s.bundle for s in spec.stages]
