"""Staged rollouts: target a group, move through waves (e.g. one canary device, 10%, 50%, 100%), check gates
between waves (activation success, error rate, P95 latency against the previous release, override rate). A failing
gate halts the rollout and returns that wave's devices to their previous release. Rollback is one call: every
targeted device goes back to the release it ran before the rollout."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.analytics import figures
from fleet.analytics.cases import review_cases
from fleet.analytics.windows import Window, parse_ts
from fleet.desired import DesiredStates
from fleet.devices import Devices, activation_of
from fleet.protocol import now_iso
from fleet.releases import Releases
from fleet.store import Store
from runtime.errors import Conflict, NotFound

RUNNING, COMPLETED, HALTED, ROLLED_BACK = "running", "completed", "halted", "rolled_back"


class Gates(BaseModel):
    """Checks made on a wave's devices once they all reported (or timed out), before the next wave starts."""

    model_config = ConfigDict(extra="forbid")
    min_activation_success: float = Field(1.0, ge=0, le=1, description="fraction of the wave that must activate")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="fraction of predictions with decision=error")
    max_latency_ratio: float = Field(1.5, gt=0, description="P95 total latency / P95 of the previous release")
    max_override_rate: float = Field(0.25, ge=0, le=1, description="fraction of reviews that are overrides")
    min_predictions: int = Field(20, ge=1, description="fewer predictions than this: error and latency gates "
                                                       "are not judged (reported as skipped)")
    min_reviews: int = Field(10, ge=1, description="fewer reviews than this: the override gate is skipped")
    soak_s: float = Field(0.0, ge=0, description="observe a fully activated wave this long before judging it")
    wave_timeout_s: float = Field(600.0, gt=0, description="devices that have not activated by then count as failed")


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    release: str = Field(description="release ref name@revision (or name for its latest revision)")
    group: str = Field(description="device group to target")
    waves: list[str] = Field(default_factory=lambda: ["1", "10%", "50%", "100%"],
                             description="cumulative wave sizes: a device count or a percentage of the group")
    gates: Gates = Field(default_factory=Gates)
    shadow_first: bool = Field(False, description="run the release as the candidate beside the current production "
                                                  "release instead of replacing it")

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one wave")
        for w in v:
            s = w[:-1] if w.endswith("%") else w
            if not s.replace(".", "", 1).isdigit() or float(s) <= 0 or (w.endswith("%") and float(s) > 100):
                raise ValueError(f"wave {w!r}: expected a positive count or a percentage up to 100%")
        return v


def wave_sizes(waves: list[str], total: int) -> list[int]:
    """Cumulative wave sizes resolved against `total` devices; empty waves dropped; the last wave takes all."""
    out: list[int] = []
    for w in waves:
        n = math.ceil(total * float(w[:-1]) / 100) if w.endswith("%") else int(float(w))
        n = min(max(n, 1), total)
        if not out or n > out[-1]:
            out.append(n)
    if out and out[-1] < total:
        out.append(total)
    return out


class Rollouts:
    def __init__(self, store: Store, releases: Releases, devices: Devices, desired: DesiredStates,
                 adjudicators: Sequence[str] = ()) -> None:
        self.store, self.releases, self.devices, self.desired = store, releases, devices, desired
        self.adjudicators = list(adjudicators)  # whose verdicts decide a case in the override-rate gate
        # start, rollback (API threads) and tick (the rollout loop) change the same rollouts: one at a time, so
        # a rollback can never be followed by a wave the loop was about to start
        self.lock = threading.RLock()

    # -- commands ------------------------------------------------------------------------------------------------
    def start(self, req: RolloutRequest) -> dict[str, Any]:
        with self.lock:
            return self._start(req)

    def _start(self, req: RolloutRequest) -> dict[str, Any]:
        spec = self.releases.get(req.release)
        members = [d["id"] for d in self.devices.list(group=req.group)]
        if not members:
            raise NotFound(f"group {req.group!r} has no devices")
        for r in self.store.rows("SELECT id, grp FROM rollouts WHERE state = ?", (RUNNING,)):
            busy = {t["device"] for t in self.store.rows("SELECT device FROM rollout_targets WHERE rollout = ?",
                                                          (r["id"],))}
            if busy & set(members) or r["grp"] == req.group:
                raise Conflict(f"rollout {r['id']} is still running on group {r['grp']!r}; roll it back or wait")
        sizes = wave_sizes(req.waves, len(members))
        rid = uuid.uuid4().hex[:12]
        now = now_iso()
        plan = {"request": json.loads(req.model_dump_json()), "sizes": sizes, "waves": [], "release": spec.ref}
        with self.store.transaction() as st:
            st.upsert("rollouts", {"id": rid, "release": spec.ref, "grp": req.group, "plan": json.dumps(plan),
                                   "state": RUNNING, "wave": -1, "reason": None, "created_at": now,
                                   "updated_at": now}, pk="id")
            current = self.desired.current_many(members)
            rows, start = [], 0
            for w, end in enumerate(sizes):
                for dev in members[start:end]:
                    prev, prev_cand = current.get(dev, (None, None))
                    rows.append({"rollout": rid, "device": dev, "wave": w, "previous": prev,
                                 "previous_candidate": prev_cand, "state": "planned", "started_at": None})
                start = end
            st.upsert_many("rollout_targets", rows, pk=("rollout", "device"))
        self._start_wave(rid, 0)
        return self.status(rid)

    def rollback(self, rid: str, reason: str = "manual rollback") -> dict[str, Any]:
        """Return every device this rollout touched to the release it ran before; stops the rollout."""
        with self.lock:
            return self._rollback(rid, reason)

    def _rollback(self, rid: str, reason: str) -> dict[str, Any]:
        ro = self._get(rid)
        targets = self.store.rows("SELECT * FROM rollout_targets WHERE rollout = ? AND state != 'planned'", (rid,))
        self._revert(rid, targets)
        self._set(rid, state=ROLLED_BACK, reason=reason if ro["state"] != HALTED else f"{ro['reason']}; {reason}")
        return self.status(rid)

    def halt(self, rid: str, reason: str = "manual halt") -> dict[str, Any]:
        """Stop a running rollout from starting further waves. Devices keep the release they were given (a wave
        in progress finishes activating); `rollback` afterwards returns them. Only a running rollout halts."""
        with self.lock:
            ro = self._get(rid)
            if ro["state"] != RUNNING:
                raise Conflict(f"rollout {rid} is {ro['state']}, not running: nothing to halt")
            reason = reason.strip() or "manual halt"
            self._set(rid, state=HALTED, reason=f"halted at wave {ro['wave']}: {reason}")
            return self.status(rid)

    # -- progress ------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every running rollout one step: judge finished waves, start the next, halt on a failed gate.
        Watching the devices of a wave (the bulk of the work, O(devices)) runs outside the lock, so a rollback
        never waits behind it; only the decisions (judge, next wave, halt, complete) take the lock."""
        for r in self.store.rows("SELECT id FROM rollouts WHERE state = ?", (RUNNING,)):
            ro = self._get(r["id"])
            if ro["state"] != RUNNING:
                continue
            plan = json.loads(ro["plan"])
            req = RolloutRequest.model_validate(plan["request"])
            targets = self.store.rows("SELECT * FROM rollout_targets WHERE rollout = ? AND wave = ?",
                                      (r["id"], ro["wave"]))
            states = self._observe(r["id"], plan["release"], req.shadow_first, targets, req.gates)
            if any(s == "pending" for s in states.values()):
                continue
            with self.lock:
                self._advance(r["id"], ro["wave"])

    def _advance(self, rid: str, seen_wave: int) -> None:
        ro = self._get(rid)
        if ro["state"] != RUNNING or ro["wave"] != seen_wave:  # rolled back or moved on since it was observed
            return
        plan = json.loads(ro["plan"])
        req = RolloutRequest.model_validate(plan["request"])
        wave = ro["wave"]
        targets = self.store.rows("SELECT * FROM rollout_targets WHERE rollout = ? AND wave = ?", (rid, wave))
        states = self._observe(rid, plan["release"], req.shadow_first, targets, req.gates)
        if any(s == "pending" for s in states.values()):
            return
        record = plan["waves"][wave]
        if "done_at" not in record:
            record["done_at"] = time.time()
            self._set(rid, plan=json.dumps(plan))
        if time.time() - record["done_at"] < req.gates.soak_s:
            return
        report = self.judge(plan["release"], req, [t["device"] for t in targets], states, record["started_iso"])
        record["gates"] = report
        if not report["passed"]:
            failed = [g for g, v in report["gates"].items() if v["passed"] is False]
            self._revert(rid, targets)
            self._set(rid, state=HALTED, plan=json.dumps(plan),
                      reason=f"wave {wave} failed gate(s) {', '.join(failed)}; wave rolled back")
            return
        self._set(rid, plan=json.dumps(plan))
        if wave + 1 < len(plan["sizes"]):
            self._start_wave(rid, wave + 1)
        else:
            self._set(rid, state=COMPLETED, reason=None)

    def _by_device(self, sql: str, devices: list[str], key: str) -> dict[str, dict[str, Any]]:
        """Rows of `sql` (ending in `IN`) for `devices`, by `key`: one query per 500 devices, not one per device."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(devices), 500):
            part = devices[i:i + 500]
            for row in self.store.rows(f"{sql} ({', '.join('?' * len(part))})", part):
                out[row[key]] = row
        return out

    def _observe(self, rid: str, ref: str, shadow_first: bool, targets: list[dict], gates: Gates) -> dict[str, str]:
        """Per device of a wave: active, failed, or pending (still activating, within the wave timeout). A device's
        outcome is written only while its target row is still activating (a rollback meanwhile wins)."""
        out: dict[str, str] = {}
        watch = [t["device"] for t in targets if t["state"] not in ("active", "failed", "rolled_back")]
        devs = self._by_device("SELECT id, reported, activation FROM devices WHERE id IN", watch, "id")
        wants = self._by_device("SELECT device, revision FROM desired WHERE device IN", watch, "device")
        decided: list[tuple[str, str]] = []
        for t in targets:
            if t["state"] in ("active", "failed", "rolled_back"):
                out[t["device"]] = t["state"]
                continue
            dev = devs.get(t["device"]) or {}
            rep = json.loads(dev.get("reported") or "{}")
            want = (wants.get(t["device"]) or {}).get("revision") or 0
            running = rep.get("candidate") if shadow_first else rep.get("active")
            seen_rev = rep.get("desired_revision") or 0
            activation = activation_of(dev)
            if running == ref and seen_rev >= want:
                state = "active"
            elif seen_rev >= want and not (activation is not None and activation.state.in_progress):
                state = "failed"
            elif t["started_at"] and time.time() - float(t["started_at"]) > gates.wave_timeout_s:
                state = "failed"
            else:
                state = "pending"
            if state != "pending":
                decided.append((state, t["device"]))
            out[t["device"]] = state
        if decided:
            with self.store.transaction() as st:
                st.execute_many("UPDATE rollout_targets SET state = ? WHERE rollout = ? AND device = ? AND "
                                "state NOT IN ('active', 'failed', 'rolled_back')",
                                [(state, rid, device) for state, device in decided])
        return out

    def judge(self, ref: str, req: RolloutRequest, devices: list[str], states: dict[str, str],
              since: str) -> dict[str, Any]:
        """Gate report for one wave: each gate with its value, limit and passed (True, False, or None when there
        was too little data to judge)."""
        g = req.gates
        name, _, rev = ref.partition("@")
        ok = sum(1 for s in states.values() if s == "active")
        gates: dict[str, dict[str, Any]] = {}
        frac = ok / len(states) if states else 0.0
        gates["activation"] = {"value": frac, "limit": g.min_activation_success, "passed": frac >= g.min_activation_success,
                               "detail": {d: s for d, s in states.items() if s != "active"}}
        role = "candidate" if req.shadow_first else "active"
        wave = set(devices)
        # the figures are fleet.analytics.figures', the same functions the pillars and alert rules use
        preds = [p for p in self.store.predictions(release=ref, since=since, role=role) if p.device in wave]
        n = len(preds)
        err = figures.error_rate(preds)
        gates["error_rate"] = {"value": err.value, "limit": g.max_error_rate, "samples": n,
                               "passed": None if n < g.min_predictions or err.value is None
                               else err.value <= g.max_error_rate}
        new_p95 = figures.latency_p95(preds)
        marks = ", ".join("?" * len(devices))
        prev_refs = {t["previous"] for t in self.store.rows(
            f"SELECT previous FROM rollout_targets WHERE device IN ({marks}) AND previous IS NOT NULL "
            f"AND previous != ?", (*devices, ref))}
        old: list[float] = []
        for pref in prev_refs:
            pname, _, prev = pref.partition("@")
            # the store's latency_ms column is each record's latency_ms["total"] (fleet/store.py): the same values
            # figures.latencies reads, without parsing every record of the previous release
            old += [r["latency_ms"] for r in self.store.rows(
                f"SELECT latency_ms FROM predictions WHERE release = ? AND revision = ? AND role = 'active' AND "
                f"latency_ms IS NOT NULL AND device IN ({marks})", (pname, int(prev), *devices))]
        old_p95 = figures.percentile(old, 95)
        ratio = new_p95 / old_p95 if new_p95 is not None and old_p95 else None
        enough = n >= g.min_predictions and len(old) >= g.min_predictions and ratio is not None
        gates["latency_p95"] = {"value": ratio, "limit": g.max_latency_ratio, "new_p95_ms": new_p95,
                                "previous_p95_ms": old_p95,
                                "passed": ratio <= g.max_latency_ratio if enough and ratio is not None else None}
        # every verdict on the release from these devices, so that a later adjudication of an earlier case is
        # recognised; the cases judged are those whose first verdict came after the wave started
        reviews = [r for r in self.store.reviews(release=ref) if r.device in wave]
        judged = Window(start=parse_ts(since), end=datetime.now(timezone.utc) + timedelta(seconds=1))
        over = figures.override_rate(review_cases(reviews, self.adjudicators, judged))
        gates["override_rate"] = {"value": over.rate, "limit": g.max_override_rate, "samples": over.reviews,
                                  "passed": None if over.reviews < g.min_reviews or over.rate is None
                                  else over.rate <= g.max_override_rate}
        return {"passed": all(v["passed"] is not False for v in gates.values()), "gates": gates}

    # -- helpers -------------------------------------------------------------------------------------------------
    def _start_wave(self, rid: str, wave: int) -> None:
        """Start `wave` in one transaction: the rollout's wave moves from wave-1 to `wave` only if it is still
        there and running (compare-and-set: another service instance, or a rollback, may have got there first, and
        a wave never starts twice), with the desired states and target rows; the desired states are published
        after the commit (a new leader republishes them if this process dies in between)."""
        with self.store.transaction() as st:
            ro = self._get(rid)
            if ro["state"] != RUNNING or ro["wave"] != wave - 1:
                return
            plan = json.loads(ro["plan"])
            req = RolloutRequest.model_validate(plan["request"])
            plan["waves"].append({"wave": wave, "started_iso": now_iso()})
            self._set(rid, wave=wave, plan=json.dumps(plan))
            changes: list[tuple[str, str | None, str | None]] = []
            failed: list[str] = []
            for t in st.rows("SELECT * FROM rollout_targets WHERE rollout = ? AND wave = ?", (rid, wave)):
                if req.shadow_first:
                    # production stays what the device runs now; the release runs beside it as the candidate
                    if t["previous"] is None:
                        failed.append(t["device"])
                        continue
                    changes.append((t["device"], t["previous"], plan["release"]))
                else:
                    changes.append((t["device"], plan["release"], None))
            self.desired.set_many(changes, rollout=rid)
            now = str(time.time())
            st.upsert_many("rollout_targets", [{"rollout": rid, "device": dev, "state": "failed"} for dev in failed],
                           pk=("rollout", "device"))
            st.upsert_many("rollout_targets", [{"rollout": rid, "device": dev, "state": "activating",
                                                "started_at": now} for dev, _, _ in changes],
                           pk=("rollout", "device"))

    def _revert(self, rid: str, targets: list[dict]) -> None:
        todo = [t for t in targets if t["state"] not in ("planned", "rolled_back")]
        with self.store.transaction() as st:  # one commit; the desired states are published after it
            self.desired.set_many([(t["device"], t["previous"], t["previous_candidate"]) for t in todo], rollout=rid)
            st.upsert_many("rollout_targets", [{"rollout": rid, "device": t["device"], "state": "rolled_back"}
                                               for t in todo], pk=("rollout", "device"))

    def _get(self, rid: str) -> dict[str, Any]:
        ro = self.store.get("rollouts", rid)
        if ro is None:
            raise NotFound(f"no rollout {rid!r}")
        return ro

    def _set(self, rid: str, **cols: Any) -> None:
        self.store.upsert("rollouts", {"id": rid, **cols, "updated_at": now_iso()}, pk="id")

    def status(self, rid: str) -> dict[str, Any]:
        ro = self._get(rid)
        plan = json.loads(ro["plan"])
        targets = self.store.rows("SELECT device, wave, previous, state FROM rollout_targets WHERE rollout = ? "
                                  "ORDER BY wave, device", (rid,))
        counts: dict[str, int] = {}
        for t in targets:
            counts[t["state"]] = counts.get(t["state"], 0) + 1
        return {"id": rid, "release": ro["release"], "group": ro["grp"], "state": ro["state"], "wave": ro["wave"],
                "waves": len(plan["sizes"]), "sizes": plan["sizes"], "reason": ro["reason"], "counts": counts,
                "gates": [w.get("gates") for w in plan["waves"]], "targets": targets,
                "created_at": ro["created_at"], "updated_at": ro["updated_at"],
                "shadow_first": plan["request"]["shadow_first"]}

    def list(self) -> list[dict[str, Any]]:
        return self.store.rows("SELECT id, release, grp AS \"group\", state, wave, reason, created_at, updated_at "
                               "FROM rollouts ORDER BY created_at")

