"""The daemon in-process: the AgentHost contract (atomic activation), the capture source, HTTP backpressure."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import pytest

from edge.config import DeviceConfig
from edge.daemon import Daemon, QueueFull
from edge.sources import Frame
from fleet.protocol import ReleaseSpec
from runtime.errors import BundleError
from runtime.processing.image import read_image
from tests.edge.conftest import INSPECTOR, INSPECTOR_TOKEN, PCB, PHOTOS, inspectors_file, pcb_release, photo_release


def make_daemon(tmp_path: Path, keys, release: dict, **extra) -> Daemon:
    if "fleet" in extra and "fleet_keys" not in extra["fleet"]:  # the fleet's control key, as provisioning gives it
        extra["fleet"] = {**extra["fleet"], "fleet_keys": [str(keys["control_public"])]}
    cfg = DeviceConfig.model_validate({
        "device_id": "dev-1", "trust_store": str(keys["trust"]), "release": release,
        "api": {"enabled": False}, "runner": {"threads": 1}, "retention": {"sample_pct": 0.0},
        **extra}).resolve(tmp_path)
    return Daemon(cfg)


def drop_pcb_copies(tmp_path: Path, inbox: Path, copies: int) -> list[str]:
    """`copies` of every PCB image, renamed into the watched folder at once (complete files, in name order)."""
    names = [f"{i:02d}-{f.name}" for i in range(copies) for f in sorted(PCB.iterdir())]
    staging = tmp_path / "staging"
    staging.mkdir()
    for n in names:
        shutil.copy(PCB / n.split("-", 1)[1], staging / n)
    for n in names:
        (staging / n).replace(inbox / n)
    return names


def wait(cond, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def test_activate_swaps_between_frames_and_keeps_old_on_failure(tmp_path: Path, bundles, keys) -> None:
    inbox = tmp_path / "inbox"
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}]).start()
    try:
        assert d.current()[0].ref == "pcb@1"
        for f in sorted(PCB.iterdir()):
            shutil.copy(f, inbox / f"a-{f.name}")
        wait(lambda: d.metrics.value("frames_total") >= 4)
        photos = ReleaseSpec.model_validate({**photo_release(bundles, revision=5), "stages": [
            {**s, "bundle": Path(s["bundle"]).name} for s in photo_release(bundles)["stages"]]})
        mapping = {"squeezenet-v1.0": bundles["squeezenet"], "yolox-nano-v1.0": bundles["yolox-nano"]}
        broken = photos.model_copy(update={"revision": 6})
        with pytest.raises(BundleError):
            d.activate(broken, None, {})  # ids cannot be found without the mapping: nothing changes
        assert d.current()[0].name == "pcb"
        d.activate(photos, None, mapping)
        assert d.current() == (photos, None)
        for f in sorted(PHOTOS.iterdir()):
            shutil.copy(f, inbox / f"b-{f.name}")
        wait(lambda: d.metrics.value("frames_total") >= 4 + 9)
        recs = d.store.predictions(limit=100)
        by_source = {r["source"]: r for r in recs}
        assert all(by_source[f"folder:a-{f.name}"]["release"] == "pcb" for f in PCB.iterdir())
        assert all(by_source[f"folder:b-{f.name}"]["release"] == "photos"
                   and by_source[f"folder:b-{f.name}"]["revision"] == 5 for f in PHOTOS.iterdir())
        st = d.status()
        assert st["release"] == "photos@5" and st["frames"] == 13 and st["ready"] is True
        recent = d.recent_images(5)
        assert len(recent) == 5 and all(p.is_file() for p in recent)
    finally:
        d.stop()


def test_capture_source_samples_a_video_file(tmp_path: Path, bundles, keys) -> None:
    video = tmp_path / "line.avi"
    frames = [cv2.resize(read_image(f), (320, 240)) for f in sorted(PHOTOS.iterdir())]
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for im in frames:
        for _ in range(5):
            w.write(im)
    w.release()
    cap = cv2.VideoCapture(str(video))
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n_frames == 5 * len(frames)
    # 10 fps sampled at 2 fps: frames 0, 5, 10, ... (t = 0, 0.5, 1.0 s ...)
    want = [f"capture:line#{i}" for i in range(0, n_frames, 5)]
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    sources=[{"type": "capture", "url": str(video), "sample_fps": 2.0, "name": "line"}]).start()
    try:
        # the whole file was read, and everything it queued is committed
        wait(lambda: d.captures[0].finished.is_set() and d.queue.depth == 0 and d.frames.in_flight == 0)
        got = sorted((r["source"] for r in d.store.predictions(limit=200)), key=lambda s: int(s.split("#")[1]))
        assert got == want
        c = d.captures[0].snapshot()
        assert c.received == n_frames and c.skipped == n_frames - len(want) and c.committed == len(want)
    finally:
        d.stop()


def test_http_backpressure_answers_queue_full(tmp_path: Path, bundles, keys) -> None:
    d = make_daemon(tmp_path, keys, pcb_release(bundles), queue={"max_size": 1})
    # not started: nothing consumes the queue, so the second upload finds it full
    d.activate(ReleaseSpec.model_validate(pcb_release(bundles)), None, {})
    data = (PCB / "Normal_33.png").read_bytes()
    with pytest.raises(QueueFull, match="no decision within"):
        d.submit(data, ".png", timeout=0.2)
    with pytest.raises(QueueFull, match="queue full"):
        d.submit(data, ".png", timeout=0.2)
    assert d.queue.rejected == 1 and d.queue.depth == 1
    d.stop()


def test_sampler_rates() -> None:
    from edge.sources.capture import Sampler

    s = Sampler(2.0, 1)
    taken = [i for i in range(30) if s.take(i / 10)]
    assert taken == [0, 5, 10, 15, 20, 25]
    s = Sampler(None, 3)
    assert [i for i in range(10) if s.take(i)] == [0, 3, 6, 9]
    s = Sampler(1.0, 1)  # after a 10 s gap it does not burst to catch up
    assert [t for t in (0, 0.5, 1.0, 11.0, 11.2, 11.9, 12.0) if s.take(t)] == [0, 1.0, 11.0, 12.0]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated death
def test_watchdog_marks_stalls_and_restarts_a_dead_worker(tmp_path: Path, bundles, keys) -> None:
    d = make_daemon(tmp_path, keys, pcb_release(bundles), watchdog={"stall_s": 0.3})
    gate = threading.Event()
    d.start()
    runner = d.frames.slot.current.active.stages[0][1].runner
    real_infer = runner._infer

    def stuck(feeds):
        gate.wait(10)  # the model hangs in inference (a wedged GPU, a driver stuck in a kernel)
        return real_infer(feeds)

    runner._infer = stuck  # type: ignore[method-assign]
    try:
        assert d.ready
        d.queue.put_nowait(Frame(
            "http", data=(PCB / "Normal_33.png").read_bytes(), suffix=".png"))
        wait(lambda: d.stalled, 10)
        assert not d.ready and d.status()["stalled"] is True
        gate.set()
        wait(lambda: d.metrics.value("frames_total") == 1 and not d.stalled, 30)
        assert d.ready
        # a worker that dies (not an ordinary exception: those are caught per frame) is restarted
        real_get = d.queue.get
        calls = {"n": 0}

        def dying_get(timeout):
            calls["n"] += 1
            if calls["n"] == 1:
                raise SystemExit("simulated worker death")
            return real_get(timeout)

        d.queue.get = dying_get  # type: ignore[method-assign]
        wait(lambda: d.worker_restarts == 1, 10)
        d.queue.put_nowait(Frame(
            "http", data=(PCB / "Normal_35.png").read_bytes(), suffix=".png"))
        wait(lambda: d.metrics.value("frames_total") == 2, 30)
        assert d.ready
    finally:
        gate.set()
        d.stop()


def test_review_api_rules(tmp_path: Path, bundles, keys) -> None:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    d = make_daemon(tmp_path, keys, pcb_release(bundles))
    d.config = d.config.model_copy(update={"api": d.config.api.model_copy(update={
        "enabled": True, "port": port, "inspectors_file": inspectors_file(tmp_path, {"bo": INSPECTOR_TOKEN})})})
    d.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/review/queue").status_code == 401  # inspectors only
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=INSPECTOR)
        for name in ("Defective_02.png", "Normal_33.png"):
            r = client.post("/v1/infer", content=(PCB / name).read_bytes(), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
        flag = client.get("/v1/predictions", params={"decision": "flag"}).json()[0]
        ok = client.get("/v1/predictions", params={"decision": "pass"}).json()[0]
        assert flag["image_kept"] and flag["source"] == "http"
        img = client.get(f"/v1/predictions/{flag['id']}/image")
        assert img.status_code == 200 and img.content == (PCB / "Defective_02.png").read_bytes()
        assert client.get(f"/v1/predictions/{ok['id']}/image").status_code == 404  # a pass is not kept
        r = client.post("/v1/reviews", json={"prediction_id": ok["id"], "verdict": "false_positive"})
        assert r.status_code == 409 and "did not flag" in r.json()["error"]
        r = client.post("/v1/reviews", json={"prediction_id": "nope", "verdict": "confirm"})
        assert r.status_code == 404
        r = client.post("/v1/reviews", json={"prediction_id": ok["id"], "verdict": "looks fine"})
        assert r.status_code == 422
        r = client.post("/v1/reviews", json={"prediction_id": ok["id"], "verdict": "missed_defect",
                                             "defect_class": "Defective", "inspector": "someone else"})
        assert r.status_code == 422  # who reviews is the token's holder, not a field
        r = client.post("/v1/reviews", json={"prediction_id": ok["id"], "verdict": "missed_defect",
                                             "defect_class": "Defective"})
        assert r.status_code == 201 and r.json()["override"] is True and r.json()["model_decision"] == "pass"
        assert r.json()["inspector"] == "bo"
        r = client.post("/v1/reviews", json={"prediction_id": flag["id"], "verdict": "confirm"})
        assert r.status_code == 201 and r.json()["override"] is False
        assert {x["verdict"] for x in client.get("/v1/reviews").json()} == {"missed_defect", "confirm"}
        assert client.get("/v1/review/queue").json() == []
        assert client.get("/readyz").status_code == 200
        st = client.get("/v1/status").json()
        assert st["frames"] == 2 and st["backends"] == ["onnxruntime:CPUExecutionProvider"]
        assert st["pipeline"]["active"]["runners"][0]["active_providers"] == ["CPUExecutionProvider"]
    finally:
        d.stop()


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "decode-workers"])
def test_a_frame_that_fails_its_batch_is_the_only_error(tmp_path: Path, bundles, keys, lanes: bool) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    pipeline={"max_batch": 8, "decode_workers": 3, "inference_workers": 2, "lanes": lanes},
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    model = d.frames.slot.current.active.stages[0][1]
    poison = float(model.prepare(read_image(PCB / "Normal_33.png")).tensor.mean())
    runner = model.runner
    real_infer = runner._infer
    batches: list[int] = []

    def picky(feeds):
        x = next(iter(feeds.values()))
        batches.append(len(x))
        time.sleep(0.05)  # a slow model: frames decoded meanwhile wait together and make the next batch
        if any(abs(float(t.mean()) - poison) < 1e-3 for t in x):  # the model chokes on this one image
            raise RuntimeError("kernel failed on this input")
        return real_infer(feeds)

    runner._infer = picky  # type: ignore[method-assign]
    try:
        names = [f"{i:02d}-{f.name}" for i in range(4) for f in sorted(PCB.iterdir()) if f.name != "Normal_33.png"]
        names.append("zz-Normal_33.png")
        staging = tmp_path / "staging"
        staging.mkdir()
        for n in names:
            shutil.copy(PCB / n.split("-", 1)[1], staging / n)
        for n in names:  # all at once, so that frames are decided together
            (staging / n).replace(inbox / n)
        wait(lambda: d.metrics.value("frames_total") == len(names))
        recs = {r["source"].removeprefix("folder:"): r for r in d.store.predictions(limit=100)}
    finally:
        d.stop()
    assert max(batches) > 1, "the frames were never batched: nothing was tested"
    bad = recs.pop("zz-Normal_33.png")
    assert bad["decision"] == "error" and "inference failed: RuntimeError: kernel failed" in bad["error"]
    assert all(r["decision"] == ("flag" if "Defective" in n else "pass") for n, r in recs.items())
    assert d.metrics.value("errors_total", reason="inference") == 1


def test_kept_folder_images_are_the_files_moved_to_done(tmp_path: Path, bundles, keys) -> None:
    """A flagged folder frame's kept image is a hard link of its file (now in done/): the original bytes, none
    written again; the passes are not kept."""
    import os

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    try:
        staging = tmp_path / "staging"
        staging.mkdir()
        for f in sorted(PCB.iterdir()):  # written elsewhere, renamed in (settle_s is 0: a copy in place may be read
            shutil.copy(f, staging / f.name)  # half-written, as the docs warn)
            (staging / f.name).replace(inbox / f.name)
        wait(lambda: d.metrics.value("frames_total") == len(list(PCB.iterdir())))
        wait(lambda: len(list((inbox / "done").iterdir())) == len(list(PCB.iterdir())))
        rows = d.store.query("SELECT source, image_path FROM predictions WHERE role = 'active'")
    finally:
        d.stop()
    kept = {r["source"].removeprefix("folder:"): Path(r["image_path"]) for r in rows if r["image_path"]}
    assert sorted(kept) == sorted(f.name for f in PCB.iterdir() if "Defective" in f.name)
    for name, path in kept.items():
        assert os.path.samefile(path, inbox / "done" / name)
        assert path.read_bytes() == (PCB / name).read_bytes()


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "decode-workers"])
def test_inference_workers_run_batches_at_once_and_commit_in_queue_order(tmp_path: Path, bundles, keys,
                                                                         lanes: bool) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    pipeline={"inference_workers": 2, "decode_workers": 2, "max_batch": 1, "lanes": lanes},
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    assert d.frames.inference_workers == 2
    runner = d.frames.slot.current.active.stages[0][1].runner
    real_infer = runner._infer
    lock = threading.Lock()
    running, most = [0], [0]

    def slow(feeds):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # a slow model: the other worker takes the next frame meanwhile
            return real_infer(feeds)
        finally:
            with lock:
                running[0] -= 1

    runner._infer = slow  # type: ignore[method-assign]
    try:
        names = drop_pcb_copies(tmp_path, inbox, 4)
        wait(lambda: d.metrics.value("frames_total") == len(names))
        rows = d.store.query("SELECT source, decision, frame_key FROM predictions WHERE role = 'active' "
                             "ORDER BY rowid")
    finally:
        d.stop()
    assert most[0] == 2, f"at most {most[0]} batch(es) in inference at once"
    # the folder queues its files in name order; the decided batches are committed in that order, each once
    assert [r["source"].removeprefix("folder:") for r in rows] == names
    assert len({r["frame_key"] for r in rows}) == len(names)
    assert all(r["decision"] == ("flag" if "Defective" in r["source"] else "pass") for r in rows)
    assert sorted(p.name for p in (inbox / "done").iterdir()) == names


def test_commit_lingers_for_frames_in_flight_but_never_for_a_lone_frame(tmp_path: Path, bundles, keys) -> None:
    """With frames in flight behind those decided, the commit thread waits (up to commit_linger_ms) and commits them
    in one transaction; a frame with nothing behind it is committed at once, whatever the linger."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    pipeline={"max_batch": 1, "commit_batch": 8, "commit_linger_ms": 1000},
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    sizes: list[int] = []
    real_commit = d.store.commit_frames

    def counted(frames):
        sizes.append(len(frames))
        return real_commit(frames)

    d.store.commit_frames = counted  # type: ignore[method-assign]
    try:
        wait(lambda: d.ready)
        t0 = time.monotonic()
        out = d.submit(PCB.joinpath(sorted(p.name for p in PCB.iterdir())[0]).read_bytes(), ".png")
        lone_s = time.monotonic() - t0
        assert out.decision in ("pass", "flag") and sizes == [1]
        names = drop_pcb_copies(tmp_path, inbox, 6)
        wait(lambda: d.metrics.value("frames_total") == len(names) + 1)
    finally:
        d.stop()
    assert lone_s < 0.9, f"a lone frame waited {lone_s:.2f} s for its commit"
    burst = sizes[1:]
    assert sum(burst) == len(names)
    # one frame per decided batch (max_batch 1): without the linger most commits would hold one or two frames
    assert len(burst) <= len(names) // 8 + 3, burst
    assert max(burst) >= 8, burst


def test_ready_only_once_every_source_runs(tmp_path: Path, bundles, keys, monkeypatch) -> None:
    """/readyz is served by the API, which starts first: the daemon must not say ready while its sources are still
    being started (a client then read /v1/status without the configured capture: the RTSP test's KeyError)."""
    import edge.daemon as daemon_module

    video = tmp_path / "line.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    w.write(cv2.resize(read_image(sorted(PHOTOS.iterdir())[0]), (320, 240)))
    w.release()
    seen: list[tuple[str, bool]] = []
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0},
                             {"type": "capture", "url": str(video), "name": "line"}])
    for name in ("FolderWatcher", "CaptureReader"):
        cls = getattr(daemon_module, name)

        def start(self, _start=cls.start, _name=name):
            seen.append((_name, d.ready))  # what /readyz would answer while this source is being started
            return _start(self)
        monkeypatch.setattr(cls, "start", start)
    d.start()
    try:
        assert seen == [("FolderWatcher", False), ("CaptureReader", False)]
        assert d.ready and "line" in d.status()["captures"]
    finally:
        d.stop()


def test_lanes_are_chosen_for_the_cpu_and_decode_workers_for_an_accelerator() -> None:
    from edge.config import OnnxRuntimeRunnerConfig, PipelineConfig, TensorRTRunnerConfig
    from edge.processor import use_lanes

    cpu, trt = OnnxRuntimeRunnerConfig(), TensorRTRunnerConfig(backend="tensorrt")
    assert use_lanes(PipelineConfig(), cpu, 2) and use_lanes(PipelineConfig(), OnnxRuntimeRunnerConfig(
        providers=["cpu"]), 4)
    assert not use_lanes(PipelineConfig(), cpu, 1)  # one inference thread: decode workers overlap decoding with it
    assert not use_lanes(PipelineConfig(), OnnxRuntimeRunnerConfig(providers=["cuda", "cpu"]), 2)
    assert not use_lanes(PipelineConfig(), trt, 2)
    assert use_lanes(PipelineConfig(lanes=True), trt, 1)
    assert not use_lanes(PipelineConfig(lanes=False), cpu, 4)
    assert not use_lanes(PipelineConfig(decode_workers=3), cpu, 2)  # decode workers asked for by name
    assert use_lanes(PipelineConfig(decode_workers=3, lanes=True), cpu, 2)


@pytest.mark.parametrize("lanes", [True, False], ids=["lanes", "decode-workers"])
def test_frames_are_decoded_in_their_lane_or_by_the_decode_workers(tmp_path: Path, bundles, keys, monkeypatch,
                                                                   lanes: bool) -> None:
    """Lanes: each frame is decoded on the inference thread that runs it, no decode worker is started. Decode
    workers: on the `decode_*` threads, ahead of inference. The same decisions either way."""
    import edge.processor

    where: list[str] = []
    real_decode = edge.processor.decode_image

    def traced(*a, **kw):
        where.append(threading.current_thread().name)
        return real_decode(*a, **kw)

    monkeypatch.setattr(edge.processor, "decode_image", traced)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = make_daemon(tmp_path, keys, pcb_release(bundles),
                    pipeline={"inference_workers": 2, "decode_workers": 2, "lanes": lanes},
                    sources=[{"type": "folder", "path": "inbox", "poll_s": 0.05, "settle_s": 0}])
    d.start()
    try:
        assert d.frames.lanes is lanes
        names = drop_pcb_copies(tmp_path, inbox, 2)
        wait(lambda: d.metrics.value("frames_total") == len(names))
        rows = d.store.query("SELECT source, decision FROM predictions WHERE role = 'active' ORDER BY rowid")
        threads = [t.name for t in threading.enumerate()]
    finally:
        d.stop()
    assert len(where) == len(names)
    if lanes:
        assert set(where) <= {"inference", "inference_1"}, set(where)
        assert not [t for t in threads if t.startswith(("decode", "reader"))], threads
    else:
        assert all(w.startswith("decode") for w in where), set(where)
    assert [r["source"].removeprefix("folder:") for r in rows] == names
    assert all(r["decision"] == ("flag" if "Defective" in r["source"] else "pass") for r in rows)


def arrives_late(q) -> None:
    """The first wait on `q` gives up although an item is there: as if the item arrived just after it timed out."""
    import queue

    real_get, calls = q.get, [0]

    def late_get(block: bool = True, timeout: float | None = None):
        calls[0] += 1
        if calls[0] == 1:
            raise queue.Empty
        return real_get(block, timeout)

    q.get = late_get


def test_commit_thread_ending_at_stop_settles_a_batch_handed_over_after_its_wait_timed_out(tmp_path: Path, bundles,
                                                                                          keys) -> None:
    """At stop, an inference thread may hand its last batch over just after the commit thread's wait timed out and
    then end: the commit thread sees no inference thread left, and must still settle that batch before it ends."""
    from edge.processor import Decided

    d = make_daemon(tmp_path, keys, pcb_release(bundles))
    fp = d.frames  # not started: no inference thread is alive, as after the last one ended
    settled: list[str] = []
    frame = Frame("http", data=b"x", suffix=".png", on_done=lambda out: settled.append(out.decision))
    fp._taken = 1
    fp._stop_intake.set()
    fp._decided.put([Decided(frame, None, None, "no active release", 0.0, time.monotonic())])
    arrives_late(fp._decided)
    t = threading.Thread(target=fp._commit_loop, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert settled == ["retry"] and fp.in_flight == 0  # settled (handed back to its source), not left behind
    d.store.close()


def test_inference_thread_ending_at_stop_decides_a_frame_prefetched_after_its_wait_timed_out(tmp_path: Path, bundles,
                                                                                            keys) -> None:
    """With decode workers, at stop the reader may prefetch its last frame just after an inference thread's wait
    timed out, and end: the inference thread sees the reader gone, and must still decide that frame."""
    from concurrent.futures import Future

    from edge.processor import Decoded

    d = make_daemon(tmp_path, keys, pcb_release(bundles), pipeline={"lanes": False})
    fp = d.frames  # not started: the reader has ended, as at stop
    fp._threads["reader"] = threading.Thread(target=lambda: None)
    fp._threads["reader"].start()
    fp._threads["reader"].join()
    fut: Future = Future()
    fut.set_result(Decoded(Frame("http", data=b"x", suffix=".png"), None, "decode failed", 0.0, time.monotonic()))
    fp._stop_intake.set()
    fp._prefetched.put(fut)
    arrives_late(fp._prefetched)
    t = threading.Thread(target=fp._infer_loop, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()
    handed = fp._decided.get_nowait()  # decided (no release is active: handed back to its source), not left behind
    assert [x.frame.source for x in handed] == ["http"] and fp._prefetched.empty()
    d.store.close()
