"""The frame path: bounded queue -> decode -> inference -> commit, and the hot-swap of its pipeline.

Three stages overlap, each bounded:

- decoding and preprocessing for the first stage of the running pipeline (OpenCV, Pillow's resampling and numpy
  release the GIL, so it runs beside ONNX Runtime): in lanes (`use_lanes`: the default on a CPU), by the inference
  worker that takes the frame from the queue (when it is free), for the pipeline it holds; otherwise on
  `decode_workers` threads fed by a reader thread, at most `prefetch` frames ahead of inference, in queue order.
- `inference_workers` threads each take the next frames in order (prefetched: up to `max_batch` that are decoded;
  in lanes: from the queue, the next one and a share of those waiting, up to `max_batch`), and run them through the
  pipeline together (stage 2 once over their candidates). With ONNX Runtime on the CPU at one
  intra-op thread each, several frames run at once on as many cores (ORT's `run` is thread-safe and releases the
  GIL). A batch holds the pipeline slot (shared) from the moment it is taken, so an activation swaps between
  batches: no frame sees half of two releases, and every batch taken after the swap runs on the new pipeline.
  The decided batches are put back in queue order before the commit.
- one commit thread builds the records, writes kept images, and commits up to `commit_batch` frames in one SQLite
  transaction (a group commit); while more frames are in flight it waits up to `commit_linger_ms` for them, so it
  runs less often and for longer (a lone frame is committed at once). Only then is a frame done: its source's
  `on_done` runs after the commit, in queue order. A crash before the commit loses nothing but work: the frame has
  no record and is processed again.

Backpressure is unchanged: the sources see the bounded queue; behind it the prefetch (without lanes) and commit
hand-offs are bounded too, so memory stays bounded whatever the input rate.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from edge.actions import ActionDispatcher, work_order
from edge.config import DeviceConfig, PipelineConfig, RunnerConfig
from edge.health import mem_available_bytes, name_os_thread
from edge.metrics import Metrics
from edge.pipeline import FrameInput, FrameResult, Pipeline, PipelineSlot, build_pipeline, resolve_paths, resolver_for
from edge.records import build_records
from edge.retention import Retention
from edge.sources import Frame, Outcome
from edge.sources.queue import FrameQueue
from edge.store import FrameCommit, Store
from fleet.protocol import PredictionRecord, ReleaseSpec
from runtime.errors import ConfigError, ImageError, ShadowlineError
from runtime.processing.image import decode_image
from runtime.signing import TrustStore

log = logging.getLogger("shadowline.edge.processor")

MB = 1024 * 1024


class QueueFull(ShadowlineError):
    """The inference queue is full; the caller should retry later."""

    exit_code = 21
    http_status = 503


def build_pipeline_for(config: DeviceConfig, release: ReleaseSpec, candidate: ReleaseSpec | None,
                       bundles: dict[str, Path] | None = None) -> Pipeline:
    """Load `release` (+ `candidate`) with this device's runner, trust store and degradation settings."""
    r = config.runner
    trust = TrustStore.load(config.trust_store) if config.trust_store else None
    return build_pipeline(release, candidate, resolver_for(config.bundles_dir, bundles), trust, r.backend,
                          r.runner_options(), config.retention.band, config.degrade.verify_timeout_s)


def use_lanes(pc: PipelineConfig, runner: RunnerConfig, inference_workers: int) -> bool:
    """`pipeline.lanes`, or when unset: lanes when the models run on the CPU (ONNX Runtime with only its `cpu`
    provider) with 2 or more inference workers and `decode_workers` is not set. There decoding and inference take
    turns on the same cores, and a lane keeps a frame's image and tensor in one core's caches with half the busy
    threads (1.02 to 1.09 times the frames per second of decode workers, docs/daemon.md). With an accelerator the
    decode workers run ahead of the one inference thread instead, so the CPU decodes while the GPU runs; a config
    that sets `decode_workers` asked for them too."""
    if pc.lanes is not None:
        return pc.lanes
    providers = getattr(runner, "providers", None) or ["cpu"]
    return (runner.backend == "onnxruntime" and set(providers) <= {"cpu"} and inference_workers >= 2
            and pc.decode_workers is None)


@dataclass
class Decoded:
    frame: Frame
    input: FrameInput | None
    error: str | None
    decode_ms: float
    started: float  # when decoding began (the end of the queue wait)


@dataclass
class Pending:
    """A frame taken from the queue for a lane: the inference worker that takes it decodes it."""

    frame: Frame
    started: float  # when it was taken (the end of the queue wait)


@dataclass
class Decided:
    frame: Frame
    pipeline: Pipeline | None  # None: no pipeline ran it (the daemon is stopping); nothing is committed
    result: FrameResult | None
    error: str | None
    decode_ms: float
    started: float


class FrameProcessor:
    def __init__(self, config: DeviceConfig, store: Store, metrics: Metrics, retention: Retention,
                 actions: ActionDispatcher) -> None:
        self.config, self.store, self.metrics = config, store, metrics
        self.retention, self.actions = retention, actions
        self.device_id = config.device_id
        self.queue = FrameQueue(config.queue.max_size)
        self.slot = PipelineSlot()
        self.standby: Pipeline | None = None
        # called once, by the decode worker that finishes the first decode (the daemon releases the library pages
        # that decode's first-use imports mapped: OpenCV's and Pillow's start-up code)
        self.after_first_decode: Callable[[], object] | None = None
        self._first_decode_lock = threading.Lock()
        self.loads = 0  # pipelines built from bundles (a rollback to the warm standby builds none)
        self._activate_lock = threading.Lock()
        pc = config.pipeline
        self._pool = ThreadPoolExecutor(pc.workers, thread_name_prefix="decode",
                                        initializer=lambda: name_os_thread(threading.current_thread().name))
        self._prefetched: queue_mod.Queue[Future[Decoded]] = queue_mod.Queue(pc.prefetch)
        self._decided: queue_mod.Queue[list[Decided]] = queue_mod.Queue(max(2, pc.commit_batch // pc.max_batch))
        self._stop_intake = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        n = pc.inference_workers or (pc.default_workers() if config.runner.backend == "onnxruntime" else 1)
        self._inference = ["inference"] + [f"inference_{i}" for i in range(1, n)]
        self.lanes = use_lanes(pc, config.runner, n)
        # in lanes the inference workers take frames from the queue themselves: no reader thread hands them over
        self._names = (*(() if self.lanes else ("reader",)), *self._inference, "commit")
        self._alive = {name: True for name in self._names}
        self._take_lock = threading.Lock()  # batches are taken (and enter the pipeline slot) in queue order
        self._order = threading.Lock()
        self._taken_seq = 0  # batches taken
        self._next_seq = 0  # the next batch to hand to the commit thread
        self._out_of_order: dict[int, list[Decided]] = {}
        self._busy: dict[int, float] = {}  # inference thread -> when its current batch began (watchdog)
        self._taken = 0  # frames taken from the queue and not yet settled (committed or handed back)
        self._taken_lock = threading.Lock()
        self.last_error: str | None = None
        self.store_failures = 0

    # -- the hot-swap interface (the agent activates and rolls back through it) ----------------------------------
    def activate(self, release: ReleaseSpec, candidate: ReleaseSpec | None, bundles: dict[str, Path]) -> None:
        """Build the new pipeline completely (or take the warm standby when it is exactly this release on the same
        bundles), then swap it in between two frames; on failure keep the old one."""
        for a in release.actions:
            if a not in self.actions.channels([]):
                raise ConfigError(f"release {release.ref} uses action {a!r}, which this device has not configured")
        paths = resolve_paths(release, candidate, resolver_for(self.config.bundles_dir, bundles))
        with self._activate_lock:
            if self.standby is not None and self.standby.matches(release, candidate, paths):
                new, self.standby, warm = self.standby, None, True
            else:
                new, warm = build_pipeline_for(self.config, release, candidate, bundles), False
                self.loads += 1
            old = self.slot.swap(new)
            self._keep_standby(old)
        self.store.event(self.device_id, "activated", {"release": release.ref, "warm": warm,
                                                      "candidate": candidate.ref if candidate else None})
        log.info("active release %s%s%s", release.ref, f" (candidate {candidate.ref})" if candidate else "",
                 " from the warm standby" if warm else "")

    def _keep_standby(self, old: Pipeline | None) -> None:
        """The pipeline just swapped out becomes the standby where memory allows; the one before is closed."""
        if self.standby is not None and self.standby is not old:
            self.standby.close()
            self.standby = None
        if old is None:
            return
        avail = mem_available_bytes()
        cfg = self.config.standby
        if cfg.enabled and (avail is None or avail >= cfg.min_available_mb * MB):
            self.standby = old
        else:
            old.close()

    def current(self) -> tuple[ReleaseSpec | None, ReleaseSpec | None]:
        p = self.slot.current
        if p is None:
            return None, None
        return p.active.spec, (p.candidate.spec if p.candidate else None)

    # -- intake ----------------------------------------------------------------------------------------------------
    def submit(self, data: bytes, suffix: str = ".jpg", timeout: float = 30.0) -> Outcome:
        """POST /v1/infer: queue an uploaded image and wait for its committed decision."""
        if self.slot.current is None:
            raise QueueFull("no active release yet")
        done = threading.Event()
        box: list[Outcome] = []

        def on_done(out: Outcome) -> None:
            box.append(out)
            done.set()

        if not self.queue.put_nowait(Frame(source="http", data=data, suffix=suffix, on_done=on_done)):
            raise QueueFull(f"inference queue full ({self.queue.max_size} frames); retry later")
        if not done.wait(timeout):
            raise QueueFull(f"no decision within {timeout}s (queue depth {self.queue.depth})")
        return box[0]

    @property
    def busy_since(self) -> float | None:
        """When the longest-running batch in inference began (None: no batch in inference)."""
        return min(tuple(self._busy.values()), default=None)  # a copy: the inference threads change it

    @property
    def inference_workers(self) -> int:
        return len(self._inference)

    @property
    def in_flight(self) -> int:
        """Frames taken from the queue and not yet settled (decoding, in inference, or committing)."""
        return self._taken

    # -- threads ---------------------------------------------------------------------------------------------------
    def start(self) -> FrameProcessor:
        for name in self._names:
            self._start_thread(name)
        return self

    def _start_thread(self, name: str) -> None:
        loop = {"reader": self._read_loop, "commit": self._commit_loop}.get(name, self._infer_loop)

        def target() -> None:
            name_os_thread(name)
            loop()

        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name] = t
        t.start()

    def dead_threads(self) -> list[str]:
        return [n for n, t in self._threads.items() if self._alive[n] and not t.is_alive()]

    def restart(self, name: str) -> None:
        self._start_thread(name)

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more frames; finish and commit every frame already taken; then stop the threads."""
        self._stop_intake.set()
        for name in self._names:
            t = self._threads.get(name)
            if t is not None and t.is_alive():
                t.join(timeout)
            self._alive[name] = False
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in (self.slot.swap(None), self.standby):
            if p is not None:
                p.close()
        self.standby = None

    def _read_loop(self) -> None:
        while not self._stop_intake.is_set():
            if self.slot.current is None:
                self._stop_intake.wait(0.1)  # nothing to run yet (the agent has not activated a release)
                continue
            frame = self.queue.get(0.2)
            if frame is None:
                continue
            with self._taken_lock:
                self._taken += 1
            fut = self._pool.submit(self._decode, frame, time.monotonic())
            while True:  # bounded: the decoders never run more than `prefetch` frames ahead of inference
                try:
                    self._prefetched.put(fut, timeout=0.2)
                    break
                except queue_mod.Full:
                    if self._stop_intake.is_set() and not self._inferring():
                        with self._taken_lock:
                            self._taken -= 1  # never decided: the source keeps it (a folder file stays)
                        return

    def _decode(self, frame: Frame, started: float, lane: Pipeline | None = None) -> Decoded:
        """Decode and preprocess one frame: on a decode worker for the pipeline running now (after a swap the
        inference thread prepares what differs), or in a lane for the pipeline the lane holds (`lane`)."""
        t0 = time.perf_counter()
        try:
            image = frame.image if frame.image is not None else decode_image(
                frame.data or b"", self.config.limits.max_pixels, frame.source,
                opencv=self.config.pipeline.decoder == "opencv")
            p = lane if lane is not None else self.slot.current
            inp = p.prepare(image) if p is not None else FrameInput(image)
            decoded = Decoded(frame, inp, None, (time.perf_counter() - t0) * 1000, started)
            if self.after_first_decode is not None:
                with self._first_decode_lock:
                    hook, self.after_first_decode = self.after_first_decode, None
                if hook is not None:
                    try:
                        hook()
                    except Exception:  # memory housekeeping must never cost the frame
                        log.exception("after the first decode")
            return decoded
        except ImageError as err:
            return Decoded(frame, None, str(err), (time.perf_counter() - t0) * 1000, started)
        except Exception as err:  # a preprocessing bug must not stop the daemon: the frame is an error record
            log.exception("preprocessing failed on %s", frame.source)
            return Decoded(frame, None, f"{frame.source}: preprocessing failed: {type(err).__name__}: {err}",
                           (time.perf_counter() - t0) * 1000, started)

    def _inferring(self) -> bool:
        """An inference thread is alive."""
        return any(self._threads[n].is_alive() for n in self._inference if n in self._threads)

    def _take_for_lane(self) -> list[Decoded | Pending] | None:
        """In lanes: the next frame from the queue (waiting for it) plus this lane's share of those waiting behind
        it, up to `max_batch`; the lane decodes them itself."""
        if self._stop_intake.is_set():
            return None
        if self.slot.current is None:
            self._stop_intake.wait(0.1)  # nothing to run yet (the agent has not activated a release)
            return None
        frame = self.queue.get(0.2)
        if frame is None:
            return None
        taken: list[Decoded | Pending] = [Pending(frame, time.monotonic())]
        share = min(self.config.pipeline.max_batch, (1 + self.queue.depth) // len(self._inference))
        while len(taken) < share and (frame := self.queue.get(0)) is not None:
            taken.append(Pending(frame, time.monotonic()))
        with self._taken_lock:
            self._taken += len(taken)
        return taken

    def _next_batch(self) -> list[Decoded | Pending] | None:
        """The next prefetched frame (waiting for it) plus those behind it that are already decoded, in order (in
        lanes: `_take_for_lane`)."""
        if self.lanes:
            return self._take_for_lane()
        try:
            fut = self._prefetched.get(timeout=0.2)
        except queue_mod.Empty:
            return None
        batch: list[Decoded | Pending] = [fut.result()]
        while len(batch) < self.config.pipeline.max_batch:
            with self._prefetched.mutex:
                head = self._prefetched.queue[0] if self._prefetched.queue else None
            if head is None or not head.done():
                break
            batch.append(self._prefetched.get_nowait().result())
        return batch

    def _infer_loop(self) -> None:
        me = threading.get_ident()
        while True:
            with ExitStack() as stack:
                with self._take_lock:  # in queue order: the next frames, a sequence number, the pipeline slot
                    taken = self._next_batch()
                    if taken is None:
                        # stopping: a lane takes nothing more from the queue; with decode workers, once the reader
                        # has ended, nothing more is prefetched, but what it prefetched after this wait timed out is
                        # still decided first
                        if self._stop_intake.is_set() and (self.lanes or (
                                not self._threads["reader"].is_alive() and self._prefetched.empty())):
                            return
                        continue
                    seq, self._taken_seq = self._taken_seq, self._taken_seq + 1
                    p = stack.enter_context(self.slot.use())
                self._busy[me] = time.monotonic()
                decided: list[Decided] | None = None
                try:
                    # a lane decodes its frames here, outside the take lock, for the pipeline it holds
                    batch = [self._decode(d.frame, d.started, p) if isinstance(d, Pending) else d for d in taken]
                    decided = self._decide(batch, p)
                finally:
                    self._busy.pop(me, None)
                    if decided is None:  # an unexpected error (the thread ends and the watchdog restarts it):
                        # the frames are handed back uncommitted, so the later batches are not held up behind them
                        decided = [Decided(d.frame, None, None, "inference thread failed",
                                           d.decode_ms if isinstance(d, Decoded) else 0.0, d.started) for d in taken]
                    stack.close()  # leave the pipeline slot before waiting on the commit thread
                    self._hand_over(seq, decided)

    def _hand_over(self, seq: int, decided: list[Decided]) -> None:
        """Give decided batches to the commit thread in the order they were taken (bounded: waits when the commit
        thread is behind)."""
        with self._order:
            self._out_of_order[seq] = decided
            while self._next_seq in self._out_of_order:
                self._decided.put(self._out_of_order.pop(self._next_seq))
                self._next_seq += 1

    def _decide(self, batch: list[Decoded], p: Pipeline | None) -> list[Decided]:
        if p is None:  # stopping: swapped out under the frames; they are not committed and stay at the source
            return [Decided(d.frame, None, None, "no active release", d.decode_ms, d.started) for d in batch]
        good = [d for d in batch if d.input is not None]
        results: list[FrameResult | str] = []
        try:
            results = list(p.run_many([d.input for d in good if d.input is not None]))
        except Exception:  # one frame may have failed the batch: run them one by one to find it
            for d in good:
                assert d.input is not None
                try:
                    results.append(p.run_many([d.input])[0])
                except Exception as err:  # a model failing on one frame must not stop the daemon
                    log.exception("inference failed on %s", d.frame.source)
                    results.append(f"{d.frame.source}: inference failed: {type(err).__name__}: {err}")
        by_id = {id(d): r for d, r in zip(good, results)}
        out = []
        for d in batch:
            r = by_id.get(id(d))
            if d.input is None:
                out.append(Decided(d.frame, p, None, d.error, d.decode_ms, d.started))
                self.metrics.inc("errors_total", reason="image")
            elif isinstance(r, str):
                out.append(Decided(d.frame, p, None, r, d.decode_ms, d.started))
                self.metrics.inc("errors_total", reason="inference")
            else:
                out.append(Decided(d.frame, p, r, None, d.decode_ms, d.started))
        return out

    def _commit_loop(self) -> None:
        while True:
            try:
                items = self._decided.get(timeout=0.2)
            except queue_mod.Empty:
                # stopping and no inference thread left: nothing more can be handed over, but a batch handed over
                # after the wait timed out and before its thread ended is still here, and is committed first
                if self._stop_intake.is_set() and not self._inferring() and self._decided.empty():
                    return
                continue
            pc = self.config.pipeline
            deadline = time.monotonic() + pc.commit_linger_ms / 1000
            while len(items) < pc.commit_batch:
                try:
                    items += self._decided.get_nowait()
                except queue_mod.Empty:
                    # more frames taken than these (decoding, in inference): wait a little for them, so the batch
                    # commits together; nothing behind (a lone request, the end of a burst): commit now
                    left = deadline - time.monotonic()
                    if left <= 0 or self._taken <= len(items) or self._stop_intake.is_set():
                        break
                    try:
                        items += self._decided.get(timeout=left)
                    except queue_mod.Empty:
                        break
            self._commit(items)

    # -- commit ----------------------------------------------------------------------------------------------------
    def _prepare_commit(self, d: Decided, p: Pipeline) -> tuple[FrameCommit, PredictionRecord, PredictionRecord | None]:
        active, cand = build_records(self.device_id, p, d.frame, d.result, d.error, d.decode_ms)
        reasons = self.retention.reasons(d.result, d.error is not None)
        kept: dict[str, tuple[Path, int, list[str]]] = {}
        if reasons:
            data = d.frame.data
            if data is None and d.frame.image is not None:
                import cv2  # a live-capture frame kept for review: the capture source loaded OpenCV already

                data = cv2.imencode(".jpg", d.frame.image)[1].tobytes()
            if data:
                path, size = self.retention.save(active.id, data, d.frame.suffix, d.frame.origin)
                kept[active.id] = (path, size, reasons)
                active.image_kept = True
        deliveries = []
        if d.result is not None and active.decision == "flag" and active.mode == "production":
            payload = work_order(active.model_dump(mode="json"))
            deliveries = [(active.id, ch, payload) for ch in self.actions.channels(list(p.active.spec.actions))]
        return FrameCommit([active] + ([cand] if cand else []), d.frame.key, kept, deliveries), active, cand

    def _commit(self, items: list[Decided]) -> None:
        prepared: list[tuple[Decided, FrameCommit, PredictionRecord, PredictionRecord | None]] = []
        outcomes: list[tuple[Decided, Outcome]] = []
        for d in items:
            if d.pipeline is None:
                outcomes.append((d, Outcome(None, "retry", d.error)))
                continue
            try:
                prepared.append((d, *self._prepare_commit(d, d.pipeline)))
            except Exception as err:  # e.g. the image disk is full: the frame stays unprocessed and is retried
                log.exception("frame %s could not be prepared for commit", d.frame.source)
                outcomes.append((d, self._store_failed(err)))
        done: list[bool] = []
        if prepared:
            try:
                done = self.store.commit_frames([c for _, c, _, _ in prepared])
            except Exception as err:
                log.exception("%d frame(s) could not be committed", len(prepared))
                for _, c, _, _ in prepared:
                    for path, _, _ in c.kept.values():
                        path.unlink(missing_ok=True)
                outcomes += [(d, self._store_failed(err)) for d, _, _, _ in prepared]
                prepared = []
        kept_bytes = 0
        now = time.monotonic()
        for (d, c, active, cand), ok in zip(prepared, done):
            if not ok:  # committed before (a frame seen again after a crash): nothing new was written
                for path, _, _ in c.kept.values():
                    path.unlink(missing_ok=True)
                decision = self.committed_decision(d.frame.key or "") or "pass"
                outcomes.append((d, Outcome(None, decision, None)))  # type: ignore[arg-type]
                continue
            kept_bytes += sum(size for _, size, _ in c.kept.values())
            self._count(d, active, cand, now)
            outcomes.append((d, Outcome(active.id, active.decision, d.error, active, cand)))
        if any(c.deliveries for _, c, _, _ in prepared):
            self.actions.wake.set()
        order = {id(d): i for i, d in enumerate(items)}
        for d, out in sorted(outcomes, key=lambda x: order[id(x[0])]):
            if d.frame.on_done is not None:
                try:
                    d.frame.on_done(out)
                except Exception:
                    log.exception("source callback failed for %s", d.frame.source)
        with self._taken_lock:
            self._taken -= len(items)
        if kept_bytes and self.retention.note_kept(kept_bytes):
            self.retention.enforce()

    def _store_failed(self, err: Exception) -> Outcome:
        self.last_error = f"{type(err).__name__}: {err}"
        self.store_failures += 1
        self.metrics.inc("errors_total", reason="store")
        return Outcome(None, "retry", str(err))

    def committed_decision(self, key: str) -> str | None:
        rows = self.store.query("SELECT decision FROM predictions WHERE frame_key = ? AND role = 'active'", (key,))
        return rows[0]["decision"] if rows else None

    def _count(self, d: Decided, active: PredictionRecord, cand: PredictionRecord | None, now: float) -> None:
        m = self.metrics
        m.inc("frames_total", source=d.frame.source.split(":", 1)[0])
        m.inc("decisions_total", decision=active.decision)
        for cls, _ in active.flagged:
            m.inc("flags_total", labels={"class": cls})
        if active.degraded:
            m.inc("degraded_total", reason=active.degraded.split(":", 1)[0])
        if cand is not None:
            m.inc("candidate_decisions_total", decision=cand.decision)
            if cand.decision == "error":
                m.inc("errors_total", reason="candidate")
            if cand.disagrees_with:
                m.inc("candidate_disagreements_total")
        if d.result is not None:
            m.observe("decode", d.decode_ms)
            for s in d.result.active.stages:
                m.observe(s.role, s.latency_ms)
            if d.result.candidate is not None:
                for s in d.result.candidate.stages:
                    m.observe(f"candidate_{s.role}", s.latency_ms)
        m.observe("queue_wait", (d.started - d.frame.enqueued_at) * 1000)
        m.observe("total", (now - d.started) * 1000)
