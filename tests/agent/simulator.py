"""A device simulator: many devices per process, several processes, each device running the REAL agent
(edge/agent: MQTT session, state machine, download, verify with the trust store, cache, activation, outbox) against
a headless host, on the shared threads of one `edge.agent.hub.Hub` per process (no thread per device, no thread
per outbox). Used by tests/agent/test_simulator.py and benchmarks/fleet_rollout.py.

A simulator process is `python -m tests.agent.simulator SPEC.json`; it answers JSON lines on stdin/stdout:

    -> (on start)                       <- {"event": "ready", "connected": n}
    {"cmd": "state"}                    <- {"event": "state", "active": {ref: count}, "activations": n, ...}
    {"cmd": "bare", "artifacts": [...]} <- {"event": "bare", "seconds": s, "errors": [...]}  (download + verify
                                           of the artifacts for every device into a scratch cache, then removed)
    {"cmd": "stop"}                     <- {"event": "stopped"}; the process exits

`SimCluster` starts the processes, splits the devices among them, and reads their CPU time from /proc.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[2]


class SimDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    token: str | None = Field(None, description="the device's HTTP token for artifact downloads")


class SimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker_url: str
    trust_store: Path | None = None
    fleet_keys: list[Path] = Field(default_factory=list, description="the fleet's control public key(s): desired "
                                   "states and commands are checked against them, as on a real device")
    workdir: Path = Field(description="each device's releases and outbox database live under workdir/<name>")
    devices: list[SimDevice]
    images: list[Path] = Field(default_factory=list, description="the headless hosts' recent images")
    workers: int = Field(4, ge=1, description="worker threads of the process's hub")
    load_models: bool = Field(False, description="headless hosts load ONNX Runtime sessions on activation")
    agent: dict[str, Any] = Field(default_factory=dict, description="AgentConfig overrides for every device")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (and its reaped children), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the simulator process --------------------------------------------------------------------------------------
def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _say(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def run(spec: SimSpec) -> None:
    from edge.agent.config import AgentConfig
    from edge.agent.headless import HeadlessHost
    from edge.agent.hub import Hub
    from edge.agent.runtime import Agent
    from runtime.signing import TrustStore

    _raise_fd_limit()
    hub = Hub(spec.workers, name="sim").start()
    trust = TrustStore.load(spec.trust_store) if spec.trust_store else None
    agents: list[Agent] = []
    for d in spec.devices:
        options = {"reconnect_min_s": 0.1, "reconnect_max_s": 2.0, "keepalive_s": 60, "smoke_images": 1,
                   **spec.agent}
        config = AgentConfig(broker_url=spec.broker_url, releases_dir=spec.workdir / d.name / "releases",
                             trust_store=spec.trust_store, fleet_keys=spec.fleet_keys, http_token=d.token,
                             **options)
        host = HeadlessHost(d.name, spec.workdir / d.name, spec.images, load_models=spec.load_models)
        agents.append(Agent(config, host, trust=trust, hub=hub).start())
    deadline = time.monotonic() + 60
    for a in agents:
        a.connected.wait(max(0.0, deadline - time.monotonic()))
    _say({"event": "ready", "connected": sum(a.connected.is_set() for a in agents), "devices": len(agents)})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "state":
            _say(_state(agents))
        elif cmd["cmd"] == "bare":
            only = set(cmd.get("devices") or [a.device_id for a in agents])
            _say(_bare(hub, [a for a in agents if a.device_id in only], spec, trust, cmd["artifacts"]))
        elif cmd["cmd"] == "stop":
            break
    threads = [threading.Thread(target=a.stop, args=(10,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hub.stop()
    _say({"event": "stopped"})


def _state(agents: list) -> dict[str, Any]:
    active: dict[str, int] = {}
    times: list[float] = []
    from_cache = 0
    for a in agents:
        rel = a.host.current()[0]
        key = rel.ref if rel else "none"
        active[key] = active.get(key, 0) + 1
        r = a.machine.record
        times.append(sum(r.times.values()))
        from_cache += "prepare" in r.skipped
    return {"event": "state", "active": active, "devices": len(agents),
            "connected": sum(a.connected.is_set() for a in agents),
            "activations": sum(getattr(a.host, "activations", 0) for a in agents),
            "last_activation_median_s": round(statistics.median(times), 4) if times else None,
            "last_from_cache": from_cache, "bad_messages": sum(a.bad_messages for a in agents)}


def _bare(hub: Any, agents: list, spec: SimSpec, trust: Any, raw: list[dict]) -> dict[str, Any]:
    """The baseline of a rollout: each device downloads and verifies the same artifacts (the agent's own download
    and cache code) on the same hub workers, with nothing else: no MQTT, no state machine, no check, no fleet."""
    from edge.agent.cache import ReleaseCache
    from edge.agent.download import download
    from fleet.protocol import Artifact

    artifacts = [Artifact.model_validate(a) for a in raw]
    scratch = spec.workdir / ".bare"
    errors: list[str] = []
    left = threading.Semaphore(0)

    def one(agent: Any) -> None:
        try:
            cache = ReleaseCache(scratch / agent.device_id, 1)
            for a in artifacts:
                download(a.url, cache.tar_path(a), a.sha256, a.size, token=agent.config.http_token,
                         timeout=agent.config.download_timeout_s)
                cache.install(a, trust)
        except Exception as err:
            errors.append(f"{agent.device_id}: {err}")
        finally:
            left.release()

    t0 = time.perf_counter()
    for a in agents:
        hub.submit(("bare", a.device_id), lambda a=a: one(a))
    for _ in agents:
        left.acquire()
    seconds = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return {"event": "bare", "seconds": round(seconds, 4), "errors": errors[:5]}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = SimSpec.model_validate_json(Path(sys.argv[1]).read_text())
    run(spec)


# -- the coordinator ---------------------------------------------------------------------------------------------
class SimProcess:
    def __init__(self, spec: SimSpec, path: Path) -> None:
        path.write_text(spec.model_dump_json())
        self.log = path.with_suffix(".log")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.agent.simulator", str(path)], cwd=ROOT,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         bufsize=1)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"simulator process {self.proc.pid} ended (rc {self.proc.poll()}): {tail}")
        return json.loads(line)

    @property
    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)


class SimCluster:
    """`processes` simulator processes sharing `devices` round-robin; `start()` returns once all connected."""

    def __init__(self, workdir: Path, broker_url: str, devices: list[SimDevice], *, processes: int = 2,
                 trust_store: Path | None = None, fleet_keys: list[Path] | None = None,
                 images: list[Path] | None = None, workers: int = 4, agent: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.specs = [SimSpec(broker_url=broker_url, trust_store=trust_store, fleet_keys=list(fleet_keys or []),
                              workdir=self.workdir / f"p{i}",
                              devices=devices[i::processes], images=list(images or []), workers=workers,
                              agent=agent or {}) for i in range(processes)]
        self.procs: list[SimProcess] = []

    def start(self, timeout: float = 120) -> SimCluster:
        self.procs = [SimProcess(s, self.workdir / f"p{i}.json") for i, s in enumerate(self.specs)]
        for p, s in zip(self.procs, self.specs):
            ready = self._read(p, timeout)
            if ready.get("connected") != len(s.devices):
                raise RuntimeError(f"simulator process {p.proc.pid}: {ready}")
        return self

    def _read(self, p: SimProcess, timeout: float) -> dict[str, Any]:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(self._safe_read(p)), daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            raise TimeoutError(f"simulator process {p.proc.pid} did not answer within {timeout}s")
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    @staticmethod
    def _safe_read(p: SimProcess) -> dict[str, Any] | Exception:
        try:
            return p.read()
        except Exception as err:
            return err

    def ask(self, cmd: dict[str, Any], timeout: float = 600) -> list[dict[str, Any]]:
        for p in self.procs:
            p.send(cmd)
        return [self._read(p, timeout) for p in self.procs]

    def state(self) -> dict[str, Any]:
        """Summed over the processes: devices per active release, activations, connected devices."""
        out: dict[str, Any] = {"active": {}, "devices": 0, "connected": 0, "activations": 0, "last_from_cache": 0,
                               "bad_messages": 0}
        for s in self.ask({"cmd": "state"}, 60):
            for k, v in s["active"].items():
                out["active"][k] = out["active"].get(k, 0) + v
            for k in ("devices", "connected", "activations", "last_from_cache", "bad_messages"):
                out[k] += s[k]
        return out

    def bare(self, artifacts: list[dict[str, Any]], devices: list[str] | None = None) -> float:
        """Wall time for every device (of `devices`) to download and verify `artifacts`, the processes in
        parallel."""
        t0 = time.perf_counter()
        answers = self.ask({"cmd": "bare", "artifacts": artifacts, "devices": devices})
        seconds = time.perf_counter() - t0
        errors = [e for a in answers for e in a["errors"]]
        if errors:
            raise RuntimeError(f"bare download + verify failed: {errors[:3]}")
        return seconds

    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.procs)

    def stop(self, timeout: float = 60) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                try:
                    p.send({"cmd": "stop"})
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)
            for f in (p.proc.stdin, p.proc.stdout):
                if f is not None:
                    f.close()


if __name__ == "__main__":
    main()


# -- the fleet service in a process of its own -------------------------------------------------------------------
class FleetProcess:
    """`shadowline fleet serve` in its own process on a real broker; driven over its HTTP API with an admin token.
    Devices get one token each (written in one go: the tokens file is reread by the service when it changes)."""

    def __init__(self, workdir: Path, broker_url: str, trust_store: Path, *, store_url: str | None = None,
                 **config: Any) -> None:
        from fleet.security import TokenEntry, TokenFile, hash_token
        from tests.conftest import free_port

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens_file = self.workdir / "tokens.json"
        self.admin = os.urandom(16).hex()
        self._token_entry, self._hash = TokenEntry, hash_token
        self._tokens = TokenFile(tokens=[TokenEntry(name="admin", sha256=hash_token(self.admin), roles=["admin"])])
        self._write_tokens()
        # the fleet's control key, made before the fleet starts so the devices can trust its public half (what
        # `fleet provision` does)
        from fleet.control import ensure_control_key

        self.control_pub = ensure_control_key(self.workdir / "data")[1]
        cfg = {"data_dir": str(self.workdir / "data"), "broker_url": broker_url, "trust_store": str(trust_store),
               "tokens_file": str(self.tokens_file), "http_port": self.port, "rollout_tick_s": 0.05,
               "monitor_interval_s": 0, "client_id": f"fleet-{self.port}", **config}
        if store_url:
            cfg["store_url"] = store_url
        self.config_path = self.workdir / "fleet.yaml"
        self.config_path.write_text(json.dumps(cfg))
        self.store_url = store_url or f"sqlite:///{self.workdir / 'data' / 'fleet.db'}"
        self.log = self.workdir / "fleet.log"
        self.proc: subprocess.Popen | None = None

    def _write_tokens(self) -> None:
        from runtime.fsio import atomic_write_text

        atomic_write_text(self.tokens_file, self._tokens.model_dump_json())

    def device_tokens(self, names: list[str]) -> dict[str, str]:
        out = {n: os.urandom(16).hex() for n in names}
        self._tokens.tokens += [self._token_entry(name=n, sha256=self._hash(t), roles=["device"])
                                for n, t in out.items()]
        self._write_tokens()
        return out

    def start(self, timeout: float = 60) -> FleetProcess:
        import httpx

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", "from shadowline.cli import main; main()", "fleet",
                                          "serve", "--config", str(self.config_path)], cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"fleet serve not ready within {timeout}s: {self.log.read_text()[-2000:]}")

    def api(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.admin}", **kw.pop("headers", {})}
        r = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=600, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    @property
    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class StoreWatch:
    """Reads the fleet store (from this process, as a dashboard would) to see what devices reported."""

    def __init__(self, store_url: str) -> None:
        from fleet.store import Store

        self.store = Store(store_url, create=False)

    def count_active(self, ref: str, devices: set[str]) -> int:
        """Devices of `devices` whose reported state says `ref` is active and no activation is in progress."""
        from fleet.protocol import ActivationState as S

        settled = (S.COMMITTED, S.FAILED, S.IDLE)
        n = 0
        # only the rows that already report `ref`: polled every 20 ms beside 1,000 simulated devices on two cores,
        # reading and parsing every row took CPU from the devices being timed
        for r in self.store.rows("SELECT id, activation FROM devices WHERE active = ?", [ref]):
            if r["id"] in devices:
                state = json.loads(r["activation"] or "{}").get("state")
                n += state in settled
        return n

    def wait_active(self, ref: str, devices: set[str], timeout: float, step: float = 0.02) -> float | None:
        """Seconds until every device of `devices` reported `ref` active (None on timeout)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_active(ref, devices) == len(devices):
                return time.perf_counter() - t0
            time.sleep(step)
        return None

    def close(self) -> None:
        self.store.close()
