"""The persisted activation state machine (DESIGN.md, "The device"):

    download -> verify -> prepare -> check -> activate -> commit      (success: back to idle)
    any failure before activate -> failed                             (the host never left the previous release)
    failure in activate or commit -> rollback -> failed               (the host returns to the previous release)

The record is written (one SQLite transaction) BEFORE each step runs, so after a crash `resume()` continues from what was
written; `RESUME` says where each state continues. A step counter breaks loops (a step that crashes the process
every time it runs). Commit is the point of no return: one atomic write makes the target the committed release.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge.agent.cache import ReleaseCache, release_key
from edge.agent.check import CheckResult, check, prepare
from edge.agent.config import AgentConfig
from edge.agent.download import download
from edge.agent.host import AgentHost
from fleet.protocol import ActivationSource, ActivationState, Desired
from runtime.signing import TrustStore

log = logging.getLogger(__name__)


# the state enum is the protocol's (the fleet reads it in Reported.activation.state); the machine never enters
# COMMITTED, which a device reports while idle after a successful activation
State = ActivationState
S = State
# state -> (next on success, next on failure)
TRANSITIONS: dict[State, tuple[State, State]] = {
    S.DOWNLOAD: (S.VERIFY, S.FAILED),
    S.VERIFY: (S.PREPARE, S.FAILED),
    S.PREPARE: (S.CHECK, S.FAILED),
    S.CHECK: (S.ACTIVATE, S.FAILED),
    S.ACTIVATE: (S.COMMIT, S.ROLLBACK),
    S.COMMIT: (S.IDLE, S.ROLLBACK),
    S.ROLLBACK: (S.FAILED, S.FAILED),
    S.FAILED: (S.IDLE, S.IDLE),
}
# where a step interrupted by a crash continues: loaded models live in memory only (check re-prepares), and after
# a restart the host runs whatever it started with, so an interrupted commit re-activates first.
RESUME: dict[State, State] = {
    S.DOWNLOAD: S.DOWNLOAD, S.VERIFY: S.VERIFY, S.PREPARE: S.PREPARE, S.CHECK: S.PREPARE,
    S.ACTIVATE: S.ACTIVATE, S.COMMIT: S.ACTIVATE, S.ROLLBACK: S.ROLLBACK, S.FAILED: S.FAILED,
}
MAX_STEPS = 16  # a full run is 6 steps; more than this many means something keeps crashing us


class ActivationRecord(BaseModel):
    """Persisted in `{releases_dir}/agent.db` (one row)."""

    model_config = ConfigDict(extra="forbid")
    state: State = S.IDLE
    target: Desired | None = Field(None, description="the desired state being activated")
    previous: Desired | None = Field(None, description="the committed release when this activation began")
    committed: Desired | None = Field(None, description="the release the device runs after the last commit")
    handled_revision: int = Field(-1, description="highest desired revision taken up (older ones are ignored)")
    source: ActivationSource = Field(ActivationSource.DESIRED, description="what started the activation")
    steps: int = Field(0, description="steps entered in this activation (loop counter)")
    chain: list[State] = Field(default_factory=list, description="states entered in this activation, in order")
    error: str | None = Field(None, description="why the current or last activation failed")
    times: dict[State, float] = Field(default_factory=dict, description="seconds per step")
    skipped: list[State] = Field(default_factory=list, description="steps not needed (release ready in cache)")


Reporter = Callable[[ActivationRecord, str, dict[str, Any]], None]
Fault = Callable[[State], None]


class Machine:
    """Runs activations for one device. Not thread-safe: the agent drives it from one worker thread."""

    def __init__(self, config: AgentConfig, host: AgentHost, *, trust: TrustStore | None = None,
                 report: Reporter | None = None, fault: Fault | None = None) -> None:
        self.config, self.host, self.trust = config, host, trust
        self.report = report or (lambda record, event, detail: None)
        self.fault = fault
        self.root = Path(config.releases_dir)
        self.cache = ReleaseCache(self.root, config.keep_releases)
        self.path = self.root / "agent.db"
        self._conn: sqlite3.Connection | None = None
        self.record = self._load()
        self._models: dict[str, Any] = {}
        self.last_checks: list[CheckResult] = []

    # -- persistence ---------------------------------------------------------------------------------------------
    # One row in a WAL-mode SQLite file: each write is one atomic transaction. Steps are written with
    # synchronous=NORMAL (a power cut may lose the last few transitions, never tear one; steps are idempotent, so
    # resuming from an earlier state is safe); the commit is written with synchronous=FULL, as the point of no
    # return must survive a power cut. A JSON file with fsync per step cost ~10 ms per step on an SD card/eMMC.
    def _connect(self) -> sqlite3.Connection:
        # opened per write: a device runs one agent, but a simulation runs hundreds in one process, and paho's
        # select() loop cannot watch file descriptors past 1024
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _load(self) -> ActivationRecord:
        self.root.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS activation (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "record TEXT NOT NULL)")
            row = conn.execute("SELECT record FROM activation WHERE id = 1").fetchone()
        finally:
            conn.close()
        return ActivationRecord.model_validate_json(row[0]) if row else ActivationRecord()

    def _save(self, durable: bool = False) -> None:
        conn = self._conn or self._connect()
        try:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO activation (id, record) VALUES (1, ?)",
                         (self.record.model_dump_json(by_alias=True),))
            conn.execute("COMMIT")
        finally:
            if conn is not self._conn:
                conn.close()

    def close(self) -> None:
        self._close_models()

    # -- driving -------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.record.state != S.IDLE

    def apply(self, desired: Desired, source: ActivationSource = ActivationSource.DESIRED) -> ActivationRecord:
        """Activate `desired` from idle; returns the record once back in idle (committed, or failed with error)."""
        r = self.record
        if self.busy:
            raise RuntimeError(f"activation in progress ({r.state.value}); resume() it first")
        if source == ActivationSource.DESIRED:
            r.handled_revision = max(r.handled_revision, desired.revision)
        if r.committed is not None and release_key(r.committed) == release_key(desired) and \
                r.committed.artifacts == desired.artifacts and source != ActivationSource.RECHECK:
            r.committed = desired
            self._save()
            self.report(r, "unchanged", {"release": release_key(desired)})
            return r
        r.target, r.previous, r.source = desired, r.committed, source
        r.steps, r.chain, r.error, r.times, r.skipped = 0, [], None, {}, []
        return self._run(S.DOWNLOAD)

    def mark_handled(self, revision: int) -> None:
        """A desired revision answered without an activation (e.g. the fleet cleared our desired state)."""
        self.record.handled_revision = max(self.record.handled_revision, revision)
        self._save()

    def resume(self) -> ActivationRecord:
        """After a restart: continue an interrupted activation, or put the host back on the committed release."""
        if not self.busy:
            self.restore()
            return self.record
        state = RESUME[self.record.state]
        self.report(self.record, "resume", {"from": self.record.state.value, "at": state.value})
        return self._run(state)

    def restore(self) -> None:
        """Make the host run the committed release (a restarted daemon comes up without one)."""
        c = self.record.committed
        active = self.host.current()[0]
        if c is not None and (active is None or active.ref != c.release.ref):
            self.host.activate(c.release, c.candidate, self.cache.paths(c))

    def _run(self, state: State) -> ActivationRecord:
        # one connection for the whole activation: closing the last connection checkpoints the WAL
        self._conn = self._connect()
        try:
            return self._steps(state)
        finally:
            self._conn.close()
            self._conn = None

    def _steps(self, state: State) -> ActivationRecord:
        r = self.record
        while state != S.IDLE:
            r.state = state
            r.steps += 1
            r.chain.append(state)
            self._save()  # persisted before the step: a crash from here on resumes in this state
            self.report(r, "step", {"state": state.value})
            t0 = time.monotonic()
            try:
                if r.steps > MAX_STEPS and state not in (S.ROLLBACK, S.FAILED):
                    raise RuntimeError(f"activation loop: {r.steps} steps without finishing")
                if self.fault is not None:
                    self.fault(state)
                getattr(self, f"_step_{state.value}")()
                ok = True
            except Exception as err:  # every failure is reported and leads to the table's failure state
                ok = False
                if state == S.FAILED:
                    r.error = f"{r.error}; and restoring failed: {err}" if r.error else str(err)
                elif state == S.ROLLBACK:
                    r.error = f"{r.error}; rollback failed: {err}"
                else:
                    r.error = f"{state.value}: {err}"
                log.warning("activation %s failed in %s: %s", release_key(r.target) if r.target else "-",
                            state.value, err)
                self.report(r, "error", {"state": state.value, "error": str(err)})
            r.times[state] = round(time.monotonic() - t0, 4)
            state = TRANSITIONS[state][0 if ok else 1]
        self._close_models()
        r.state = S.IDLE
        r.chain.append(S.IDLE)
        self._save()
        self.report(r, "done", {"chain": [c.value for c in r.chain], "error": r.error})
        return r

    # -- steps ---------------------------------------------------------------------------------------------------
    def _ready(self) -> bool:
        assert self.record.target is not None
        return self.record.source != ActivationSource.RECHECK and self.cache.is_ready(self.record.target)

    def _step_download(self) -> None:
        t = self.record.target
        assert t is not None
        for a in t.artifacts:
            if not self.cache.has_bundle(a):
                download(a.url, self.cache.tar_path(a), a.sha256, a.size, token=self.config.http_token,
                         timeout=self.config.download_timeout_s)

    def _step_verify(self) -> None:
        t = self.record.target
        assert t is not None
        bundles = {a.bundle for a in t.artifacts}
        for release in (r for r in (t.release, t.candidate) if r is not None):
            for stage in release.stages:
                if stage.bundle not in bundles:
                    raise ValueError(f"release {release.ref} stage {stage.role} needs bundle {stage.bundle!r} "
                                     "but the desired state carries no artifact for it")
        for a in t.artifacts:
            self.cache.install(a, self.trust)

    def _step_prepare(self) -> None:
        if self._ready():
            self.record.skipped.append(S.PREPARE)
            return
        t = self.record.target
        assert t is not None
        self._close_models()
        for a in t.artifacts:
            self._models[a.bundle] = prepare(self.cache.bundle_dir(a), self.config.backend,
                                             hashes=not self.cache.verified(a))

    def _step_check(self) -> None:
        if self._ready():
            self.record.skipped.append(S.CHECK)
            return
        images = self.host.recent_images(self.config.smoke_images) if self.config.smoke_images else []
        self.last_checks = [check(m, self.config.latency_budget_ms, images) for m in self._models.values()]
        self._close_models()
        self.report(self.record, "checked", {"checks": [c.summary() for c in self.last_checks]})

    def _step_activate(self) -> None:
        t = self.record.target
        assert t is not None
        self.host.activate(t.release, t.candidate, self.cache.paths(t))

    def _step_commit(self) -> None:
        r = self.record
        assert r.target is not None
        self.cache.remember(r.target, ready=True)
        r.committed = r.target
        protect = {release_key(r.target)} | ({release_key(r.previous)} if r.previous else set())
        self._save(durable=True)  # the point of no return: from here the target is what this device runs
        self.cache.prune(protect)

    def _step_rollback(self) -> None:
        p = self.record.previous
        self.record.committed = p
        if p is not None:
            self.host.activate(p.release, p.candidate, self.cache.paths(p))

    def _step_failed(self) -> None:
        self.restore()

    def _close_models(self) -> None:
        for m in self._models.values():
            m.close()
            m.bundle.close()
        self._models = {}
