"""The edge daemon's process: it supervises the frame path (edge.processor.FrameProcessor: queue -> decode
(in the inference workers' lanes on a CPU) -> inference -> commit) and everything around it: the sources, the action dispatcher, the windowed metrics records,
the local API, the fleet agent, the watchdog and the signals.

It implements edge.agent.host.AgentHost (the agent activates and rolls back releases through `activate`, which the
frame processor swaps in between two frames) and edge.api.LocalDevice (the narrow interface the local API uses).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge import sdnotify
from edge.actions import ActionDispatcher
from edge.config import CaptureSource, DeviceConfig, FolderSource
from edge.health import Health, keep_freed_buffers, limit_malloc_arenas, release_free_memory
from edge.memory import release_library_pages
from edge.metrics import Metrics, StateCollector, StateReading
from edge.pipeline import Pipeline
from edge.processor import FrameProcessor, QueueFull, build_pipeline_for
from edge.retention import Retention
from edge.sources import Outcome
from edge.sources.capture import CaptureReader
from edge.sources.capture_metrics import CaptureCollector
from edge.sources.folder import FolderWatcher
from edge.sources.queue import FrameQueue
from edge.store import Store
from edge.telemetry import Counts, MetricsReporter
from edge.uploads import UploadCollector, Uploader
from fleet.protocol import ReleaseSpec
from runtime import __version__
from runtime.errors import ConfigError

log = logging.getLogger("shadowline.edge.daemon")

__all__ = ["Daemon", "QueueFull", "build_local_pipeline"]


def build_local_pipeline(config: DeviceConfig, bundles: dict[str, Path] | None = None) -> Pipeline:
    """The pipeline of the config's `release:` section (its candidate included)."""
    if config.release is None:
        raise ConfigError("the config has no release section")
    rel = config.release
    spec = ReleaseSpec.model_validate(rel.model_dump(exclude={"candidate"}))
    return build_pipeline_for(config, spec, rel.candidate, bundles)


# while frames keep coming from the start, the start-up garbage is collected (with the collector turned on) this long
# after the watchdog started at the latest; at its first tick without frames otherwise (Daemon.settle_start_up_garbage)
GC_SETTLE_LATEST_S = 10.0


class Daemon:
    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.stop_event = threading.Event()
        self.store = Store(config.store.path)
        self.metrics = Metrics()
        self.retention = Retention(config.retention, self.store)
        self.actions = ActionDispatcher(config.actions, self.store, self.device_id, self.stop_event)
        self.frames = FrameProcessor(config, self.store, self.metrics, self.retention, self.actions)
        if config.watchdog.release_library_pages:
            # the first decode loads OpenCV and Pillow, whose start-up code is not run again: released right after
            # it (about 10 ms, once, on that frame), before the RSS of a daemon that has decided one frame is read
            self.frames.after_first_decode = self._release_library_pages
        self.metrics.add_collector(StateCollector(self._state, __version__))
        self.metrics.add_collector(CaptureCollector(lambda: self.captures))
        self.uploads = Uploader(config.uploads, self.store, self.device_id, self.stop_event) if config.uploads \
            else None
        if self.uploads is not None:
            self.metrics.add_collector(UploadCollector(self.uploads))
        self.health = Health(config.metrics.tegrastats)
        self.reporter = MetricsReporter(self.device_id, self.store, self.metrics, self.health,
                                        config.metrics.window_s, config.metrics.sample_s, self._depth, self._counts,
                                        lambda: self.current()[0], self.stop_event)
        self.watchers: list[FolderWatcher] = []
        self.captures: list[CaptureReader] = []
        self.started_at = time.time()
        self.stalled = False
        self.worker_restarts = 0
        self.memory_trims = 0  # calls handing freed heap back to the kernel (at start, then when idle after frames)
        self._stopping = False
        self._gc_off_at_start = not gc.isenabled()  # `shadowline edge run` turns it off before its imports
        self.library_releases = 0  # calls unmapping clean library pages (edge.memory.release_library_pages)
        self.library_pages_released_kb = 0  # what they unmapped
        self._started = False
        self._watchdog: threading.Thread | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._api_started = threading.Event()
        self.agent: Any = None

    # -- AgentHost ------------------------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return Path(self.config.store.path)

    def activate(self, release: ReleaseSpec, candidate: ReleaseSpec | None, bundles: dict[str, Path]) -> None:
        """Build the new pipeline completely (or take the warm standby), then swap it in between two frames; on
        failure keep the old one."""
        self.frames.activate(release, candidate, bundles)

    def current(self) -> tuple[ReleaseSpec | None, ReleaseSpec | None]:
        return self.frames.current()

    def recent_images(self, limit: int) -> list[Path]:
        paths = [Path(r["path"]) for r in self.store.query(
            "SELECT path FROM kept_images ORDER BY created_at DESC LIMIT ?", (limit,))]
        paths = [p for p in paths if p.is_file()]
        for w in self.watchers:
            if len(paths) >= limit:
                break
            done = sorted((p for p in w.done.iterdir() if p.is_file() and not p.name.endswith(".reason.txt")),
                          key=lambda p: p.stat().st_mtime, reverse=True)
            paths += done[: limit - len(paths)]
        return paths[:limit]

    # -- what the local API and the agent read (edge.api.LocalDevice) ----------------------------------------------
    @property
    def queue(self) -> FrameQueue:
        return self.frames.queue

    @property
    def ready(self) -> bool:
        return (self.frames.slot.current is not None and self._started and not self.frames.dead_threads()
                and not self.stalled)

    def active_ref(self) -> str | None:
        active = self.current()[0]
        return active.ref if active else None

    def submit(self, data: bytes, suffix: str = ".jpg", timeout: float = 30.0) -> Outcome:
        return self.frames.submit(data, suffix, timeout)

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def status(self) -> dict:
        active, cand = self.current()
        p = self.frames.slot.current
        q = self.queue
        m = self.metrics
        return {
            "device": self.device_id,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "release": active.ref if active else None,
            "mode": active.mode if active else None,
            "candidate": cand.ref if cand else None,
            "frames": int(m.value("frames_total")),
            "errors": int(m.value("errors_total")),
            "decisions": {d: int(m.value("decisions_total", decision=d)) for d in ("pass", "flag", "error")},
            "degraded": int(m.value("degraded_total")),
            "queue": {"depth": q.depth, "max": q.max_size, "high_water": q.high_water, "dropped": q.dropped,
                      "rejected": q.rejected, "in_flight": self.frames.in_flight},
            "latency_ms_median": m.medians(),
            "retention": self.retention.stats(),
            "actions": {"delivered": self.actions.delivered, "failed": self.actions.failed,
                        "pending": self.actions.pending()},
            "backends": self.backends(),
            "pipeline": p.describe() if p else None,
            "standby": self.frames.standby.active.spec.ref if self.frames.standby else None,
            "pipeline_loads": self.frames.loads,
            "stalled": self.stalled,
            "worker_restarts": self.worker_restarts,
            "gc_enabled": gc.isenabled(),  # off only during `shadowline edge run`'s start (settle_start_up_garbage)
            "store_failures": self.frames.store_failures,
            "last_error": self.frames.last_error,
            "uploads": self.uploads.status() if self.uploads else None,
            "captures": {c.name: {**c.snapshot().as_dict(), "connected": c.connected, "last_error": c.last_error}
                         for c in self.captures},
        }

    def backends(self) -> list[str]:
        """What really runs, e.g. ["onnxruntime:CPUExecutionProvider"] (the agent reports this list)."""
        p = self.frames.slot.current
        if p is None:
            return [self.config.runner.backend]
        found: list[str] = []
        for c in (p.active, p.candidate):
            for r in (c.describe()["runners"] if c else []):
                names = r.get("active_providers") or []
                for n in names or [None]:
                    key = f"{r['backend']}:{n}" if n else r["backend"]
                    if key not in found:
                        found.append(key)
        return found

    def _depth(self) -> tuple[int, int, int]:
        return self.queue.depth, self.queue.max_size, self.frames.in_flight

    def _counts(self) -> Counts:
        m = self.metrics
        return Counts(m.value("frames_total"), self.queue.dropped, self.queue.rejected, m.value("errors_total"),
                      m.value("degraded_total"))

    def _state(self) -> StateReading:
        q = self.queue
        gauges = {
            "shadowline_queue_depth": (q.depth, "Frames waiting in the queue for the frame path."),
            "shadowline_queue_capacity": (q.max_size, "Frames the queue holds at most (queue.max_size)."),
            "shadowline_queue_high_water": (q.high_water, "The deepest the queue has been since start."),
            "shadowline_in_flight": (self.frames.in_flight, "Frames taken from the queue, not yet committed."),
            "shadowline_ready": (int(self.ready), "1 when a release is loaded and the frame path runs unstalled."),
            "shadowline_kept_images_bytes": (self.retention.used_bytes(), "Bytes of images kept for review."),
            "shadowline_actions_pending": (self.actions.pending(), "Action deliveries not yet delivered."),
            "shadowline_standby_loaded": (int(self.frames.standby is not None),
                                          "1 when the previous release is kept warm for an instant rollback."),
        }
        counters = {
            "shadowline_queue_dropped_frames": (q.dropped, "Live-capture frames dropped from a full queue "
                                                "(drop_oldest)."),
            "shadowline_queue_rejected_frames": (q.rejected, "POST /v1/infer uploads refused with 503 (full queue)."),
            "shadowline_retention_evicted_images": (self.store.counter("retention_evicted"),
                                                    "Kept images evicted to stay within the disk budget."),
            "shadowline_retention_evicted_bytes": (self.store.counter("retention_evicted_bytes"),
                                                   "Bytes of kept images evicted to stay within the budget."),
            "shadowline_pipeline_loads": (self.frames.loads, "Pipelines built from bundles (a rollback to the "
                                          "warm standby builds none)."),
            "shadowline_pipeline_swaps": (self.frames.slot.swaps, "Pipeline swaps (activations and rollbacks)."),
            "shadowline_memory_trims": (self.memory_trims, "Free heap pages handed back to the kernel (at start, "
                                        "then when the frame path goes idle after frames)."),
            "shadowline_library_pages_released_bytes": (self.library_pages_released_kb * 1024,
                                                        "Resident clean library pages unmapped (they stay in the "
                                                        "page cache; what runs again is mapped again)."),
        }
        releases = []
        p = self.frames.slot.current
        for role, c in (("active", p.active if p else None), ("candidate", p.candidate if p else None)):
            if c is None:
                continue
            for st, model, _ in c.stages:
                releases.append({"role": role, "release": c.spec.ref, "mode": c.spec.mode, "stage": st.role,
                                 "bundle": model.manifest.bundle_id, "version": model.manifest.version})
        return StateReading(gauges, counters, releases)

    # -- supervision -----------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        trimmed_at = seen = self.queue.enqueued  # start() has just handed its garbage back
        started = time.monotonic()
        settle_gc = self._gc_off_at_start  # only what this daemon's own start turned off (the CLI's), nothing else's
        # with watchdog.release_library_pages off, the start-up release counts as done and the idle trim skips it
        startup_released = not self.config.watchdog.release_library_pages
        while not self.stop_event.wait(1.0):
            # Frames came, then a whole tick passed without one and the frame path is idle: hand the heap's free
            # pages back to the kernel (their decode buffers, tensors and first-use imports; 7 to 15 MB after 50
            # frames in benchmarks/footprint.py's models, load 15-20), and drop the mappings of library pages
            # (edge.memory.release_library_pages). Not while frames flow, even a slow stream idle between two
            # frames: their next buffers would fault the same pages in again.
            enqueued = self.queue.enqueued
            idle = enqueued == seen and self.queue.depth == 0 and self.frames.in_flight == 0
            if settle_gc and (idle or time.monotonic() - started > GC_SETTLE_LATEST_S):
                # start-up's garbage: collected when no frame is waiting for the core it takes, or after a while.
                # Its freed heap goes back now only when idle and no idle trim follows below (never while frames
                # flow: their buffers reuse it; the next idle trim hands it back)
                self.settle_start_up_garbage(trim=idle and enqueued == trimmed_at)
                settle_gc = False
            if enqueued != trimmed_at and idle:
                release_free_memory()
                if self.config.watchdog.release_library_pages:
                    self._release_library_pages()
                self.memory_trims += 1  # last: a reader that sees it sees the library release counted too
                trimmed_at = enqueued
                startup_released = True
            elif not startup_released:
                # Only the library pages, at the first tick, even while frames flow: the code only start-up ran
                # (imports, ONNX Runtime's graph building); here, not in start(), so that reading /proc/self/smaps is
                # not between start and ready. Not the heap's free pages: they are the next frames' buffers. (The
                # first decode's imports are released by the decode worker: FrameProcessor.after_first_decode.)
                self._release_library_pages()
                startup_released = True
            seen = enqueued
            for name in self.frames.dead_threads():
                self.worker_restarts += 1
                log.error("frame path thread %s died; restarting it", name)
                self.frames.restart(name)
            busy = self.frames.busy_since
            stalled = busy is not None and time.monotonic() - busy > self.config.watchdog.stall_s
            if stalled and not self.stalled:
                log.error("a batch has been in inference for over %.0fs; not ready", self.config.watchdog.stall_s)
            self.stalled = stalled

    def start(self) -> Daemon:
        limit_malloc_arenas()  # before the threads below allocate: fewer arenas, less resident memory
        keep_freed_buffers()  # frame buffers reused, not faulted in anew per frame; handed back when idle (_watch)
        # The API server starts first, on its own thread: importing Starlette and uvicorn (Python, holding the GIL)
        # then overlaps loading the models (ONNX Runtime builds its session without the GIL). /readyz answers 503
        # until the frame path runs.
        if self.config.api.enabled:
            self._start_api()
        swept = self.retention.sweep_orphans()
        if swept:
            log.info("removed %d kept-image files without a committed record", swept)
        if self.config.release is not None:
            rel = self.config.release
            spec = ReleaseSpec.model_validate(rel.model_dump(exclude={"candidate"}))
            self.activate(spec, rel.candidate, {})
        self.frames.start()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        self.actions.start()
        self.health.start()
        self.reporter.start()
        if self.uploads is not None:
            self.uploads.start()
        for s in self.config.sources:
            if isinstance(s, FolderSource):
                self.watchers.append(FolderWatcher(s, self.queue, self.frames.committed_decision,
                                                   self.stop_event).start())
            elif isinstance(s, CaptureSource):
                block = self.config.queue.capture_policy == "block"
                self.captures.append(CaptureReader(s, self.queue, self.stop_event, block).start())
        # ready (/readyz 200) only once every source runs: the API, started first, answered /readyz before the
        # sources were started, and a client reading /v1/status then found no capture of the configured name
        self._started = True
        if self.config.api.enabled:
            self._wait_api()
        if self.config.fleet is not None:
            self._start_agent()
        # what start-up freed (import-time objects, ONNX Runtime's graph building) goes back to the kernel now
        release_free_memory()
        self.memory_trims += 1
        # systemd (Type=notify): ready now, with the release loaded, the sources and the API running
        sdnotify.notify(f"READY=1\nSTATUS=running release {self.active_ref() or '-'}\nMAINPID={os.getpid()}")
        return self

    def _start_api(self) -> None:
        self._server_thread = threading.Thread(target=self._serve_api, name="api", daemon=True)
        self._server_thread.start()

    def _serve_api(self) -> None:
        import uvicorn

        from edge.api import create_app

        # HTTP/1.1 with h11 on the asyncio loop, no websockets, no lifespan: nothing the local API uses is loaded
        cfg = uvicorn.Config(create_app(self), host=self.config.api.host, port=self.config.api.port,
                             log_level="warning", access_log=False, http="h11", ws="none", lifespan="off",
                             loop="asyncio")
        api_started = self._api_started

        class Server(uvicorn.Server):
            async def startup(self, sockets: list | None = None) -> None:
                await super().startup(sockets)
                api_started.set()  # listening (or failed: `started` says which); _wait_api wakes now, not at a poll

        # uvicorn installs signal handlers only on the main thread; the daemon's own SIGTERM/SIGINT handlers stay
        server = Server(cfg)
        self._server = server
        if not self.stop_event.is_set():
            server.run()

    def _wait_api(self) -> None:
        deadline = time.monotonic() + 60
        while self._server is None or not self._server.started:
            alive = self._server_thread is not None and self._server_thread.is_alive()
            if not alive or time.monotonic() > deadline:
                # uvicorn logs the cause (address in use, permission) and ends its thread
                raise ConfigError(f"api: cannot listen on {self.config.api.host}:{self.config.api.port}")
            self._api_started.wait(0.05)  # set by the server's startup; the timeout only re-checks the thread

    def _start_agent(self) -> None:
        try:
            from edge.agent.runtime import Agent
        except ImportError as err:
            raise ConfigError(f"fleet: the device agent (edge.agent.runtime) is not available here ({err})") from err
        assert self.config.fleet is not None
        self.agent = Agent(self.config.fleet, host=self)
        self.agent.start()

    def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            sdnotify.notify("STOPPING=1")  # systemd: the frames in flight are being finished
        self.stop_event.set()
        if self.agent is not None and hasattr(self.agent, "stop"):
            self.agent.stop()
        if self._server is not None:
            self._server.should_exit = True
        for src in [*(w.thread for w in self.watchers), *(c.thread for c in self.captures)]:
            if src.is_alive():
                src.join(10)
        self.frames.stop()  # after the sources: every frame already taken is finished and committed
        if self.uploads is not None:
            self.uploads.wake.set()
        for t in [self._server_thread, self.actions.thread, self.reporter.thread,
                  self.uploads.thread if self.uploads else None]:
            if t is not None and t.is_alive():
                t.join(10)
        for w in self.watchers:
            w.close()
        self.actions.close()
        self.health.stop()
        self.store.close()

    def run(self) -> None:
        """Start, then block until SIGTERM/SIGINT, then stop cleanly (the frames in flight are finished)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        log.info("device %s running; API %s", self.device_id,
                 f"http://{self.config.api.host}:{self.config.api.port}" if self.config.api.enabled else "off")
        while not self.stop_event.wait(0.5):
            pass
        self.stop()

    def _release_library_pages(self) -> None:
        self.library_pages_released_kb += release_library_pages()
        self.library_releases += 1

    def settle_start_up_garbage(self, trim: bool = True) -> bool:
        """When start-up ran with the cyclic garbage collector off (`shadowline edge run` turns it off before its
        imports): collect what start-up left in cycles (about 40,000 objects, 20 to 35 ms of one core), turn the
        collector on and, with `trim`, hand the freed heap back. The watchdog calls it at its first tick without
        frames, or GC_SETTLE_LATEST_S after start while frames keep coming. False (nothing done) when it was on."""
        if gc.isenabled():
            return False
        gc.collect()
        gc.enable()
        if trim:
            release_free_memory()
        return True
