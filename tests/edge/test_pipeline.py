"""The two-stage cascade on the real models, checked against decisions derived by hand from the models' scores."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge.pipeline import PipelineSlot, build_pipeline, resolver_for
from fleet.protocol import ReleaseSpec
from runtime.errors import BundleError, ConfigError, SignatureError
from runtime.processing.image import read_image
from runtime.signing import TrustStore
from tests.edge.conftest import (
    PCB,
    PHOTOS,
    SCREEN_CLASSES,
    SCREEN_T,
    VERIFY_T,
    expected_photo_decisions,
    pcb_release,
    photo_release,
)


@pytest.fixture(scope="module")
def photo_pipeline(bundles: dict[str, Path], keys: dict[str, Path]):
    cand = ReleaseSpec.model_validate(photo_release(bundles, revision=2, verify={**VERIFY_T, "dog": 0.6}))
    p = build_pipeline(ReleaseSpec.model_validate(photo_release(bundles)), cand, resolver_for(None),
                       TrustStore.load(keys["trust"]), runner_options={"threads": 1})
    yield p
    p.close()


def test_cascade_matches_hand_computed_decisions(photo_pipeline, bundles: dict[str, Path]) -> None:
    expected = expected_photo_decisions(bundles, VERIFY_T)
    # The real models give a mix: frames the screen passes, a frame the verifier passes, and flags.
    assert {d for d, _ in expected.values()} == {"pass", "flag"}
    for f in sorted(PHOTOS.iterdir()):
        r = photo_pipeline.run(read_image(f)).active
        want, classes = expected[f.name]
        assert r.decision == want, f.name
        assert sorted(c for c, _ in r.flagged) == classes, f.name
        screen = r.stages[0]
        assert screen.role == "screen" and screen.latency_ms > 0
        screen_hit = any(screen.output.scores[c] >= SCREEN_T for c in SCREEN_CLASSES)
        # verify runs only on screen candidates
        assert len(r.stages) == (2 if screen_hit else 1), f.name
        assert set(r.latency_ms) == ({"screen", "verify", "total"} if screen_hit else {"screen", "total"})
        if r.decision == "flag":
            for cls, score in r.flagged:
                assert score >= VERIFY_T.get(cls, VERIFY_T["default"])


def test_candidate_disagreements(photo_pipeline, bundles: dict[str, Path]) -> None:
    active = expected_photo_decisions(bundles, VERIFY_T)
    cand = expected_photo_decisions(bundles, {**VERIFY_T, "dog": 0.6})
    differ = {n for n in active if active[n] != cand[n]}
    assert differ, "the thresholds were chosen so that the candidate disagrees on some frame"
    for f in sorted(PHOTOS.iterdir()):
        res = photo_pipeline.run(read_image(f))
        assert res.candidate is not None and res.candidate.mode == "shadow"
        assert res.candidate.decision == cand[f.name][0]
        assert res.disagree == (f.name in differ), f.name


def test_single_stage_pcb(bundles: dict[str, Path]) -> None:
    p = build_pipeline(ReleaseSpec.model_validate(pcb_release(bundles)), None, resolver_for(None), None)
    try:
        from runtime.bundle import load_bundle
        from runtime.predictor import BundleModel

        with load_bundle(bundles["pcb-aoi"]) as b:
            m = BundleModel(b).load()
            for f in sorted(PCB.iterdir()):
                im = read_image(f)
                scores = m.predict([im])[0].scores
                want = "flag" if scores["Defective"] >= 0.5 else "pass"
                r = p.run(im).active
                assert r.decision == want, f.name
                assert r.decision == ("flag" if f.name.startswith("Defective") else "pass")
                assert [c for c, _ in r.flagged] == (["Defective"] if want == "flag" else [])
                assert len(r.stages) == 1
            m.close()
    finally:
        p.close()


def test_unknown_class_and_unsigned_bundle_are_refused(bundles: dict[str, Path], keys: dict[str, Path],
                                                       tmp_path: Path) -> None:
    bad = photo_release(bundles)
    bad["stages"][1]["thresholds"] = {"default": 0.5, "kitty": 0.3}
    with pytest.raises(ConfigError, match="kitty"):
        build_pipeline(ReleaseSpec.model_validate(bad), None, resolver_for(None), None)
    with pytest.raises(BundleError, match="not found"):
        build_pipeline(ReleaseSpec.model_validate({**bad, "stages": [{"role": "screen", "bundle": "nope-v1.0"}]}),
                       None, resolver_for(tmp_path), None)
    other = tmp_path / "other-trust"
    other.mkdir()
    from runtime.signing import generate_keys

    generate_keys(other, "stranger")
    with pytest.raises(SignatureError):
        build_pipeline(ReleaseSpec.model_validate(pcb_release(bundles)), None, resolver_for(None),
                       TrustStore.load(other))


def test_slot_swap_waits_for_the_frame_in_flight() -> None:
    slot = PipelineSlot()
    in_frame, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def worker() -> None:
        with slot.use() as p:
            in_frame.set()
            release.wait(5)
            seen.append(p)

    slot.swap("old")  # type: ignore[arg-type]
    t = threading.Thread(target=worker)
    t.start()
    assert in_frame.wait(5), "the frame never started"
    swapper = threading.Thread(target=lambda: slot.swap("new"))  # type: ignore[arg-type]
    swapper.start()
    deadline = time.monotonic() + 5
    while slot.waiting == 0:  # the swap has begun and is blocked on the frame in flight
        assert time.monotonic() < deadline, "the swap never started"
        time.sleep(0.001)
    assert slot.current == "old" and swapper.is_alive() and slot.swaps == 1  # the swap waits for the frame
    release.set()
    t.join(5)
    swapper.join(5)
    assert not t.is_alive() and not swapper.is_alive()
    assert seen == ["old"] and slot.current == "new"


def test_slot_is_shared_by_batches_and_a_swap_goes_before_later_batches() -> None:
    slot = PipelineSlot()
    slot.swap("old")  # type: ignore[arg-type]
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[object] = []

    def batch() -> None:
        with slot.use() as p:
            inside.wait(5)  # two batches in the slot at once
            release.wait(5)
            seen.append(p)

    workers = [threading.Thread(target=batch) for _ in range(2)]
    for t in workers:
        t.start()
    inside.wait(5)
    swapper = threading.Thread(target=lambda: slot.swap("new"))  # type: ignore[arg-type]
    swapper.start()
    deadline = time.monotonic() + 5
    while slot.waiting == 0:
        assert time.monotonic() < deadline, "the swap never started"
        time.sleep(0.001)
    late: list[object] = []

    def late_batch() -> None:
        with slot.use() as p:
            late.append(p)

    latecomer = threading.Thread(target=late_batch)
    latecomer.start()  # a batch that starts while the swap waits runs after it, on the new pipeline
    time.sleep(0.05)
    assert slot.current == "old" and swapper.is_alive() and not late
    release.set()
    for t in (*workers, swapper, latecomer):
        t.join(5)
        assert not t.is_alive()
    assert seen == ["old", "old"] and late == ["new"] and slot.current == "new"


def test_a_failing_candidate_never_costs_the_active_decision(bundles: dict[str, Path]) -> None:
    from edge.pipeline import Pipeline

    active = build_pipeline(ReleaseSpec.model_validate(pcb_release(bundles)), None, resolver_for(None), None)
    cand = build_pipeline(ReleaseSpec.model_validate({**pcb_release(bundles), "revision": 2}), None,
                          resolver_for(None), None)
    try:
        broken = cand.active
        broken.stages[0][1].runner.close()  # infer() before load(): the candidate raises on every frame
        p = Pipeline(active.active, broken)
        r = p.run(read_image(PCB / "Defective_02.png"))
        assert r.active.decision == "flag" and r.candidate is None
        assert r.candidate_error is not None and "pcb@2 failed: RunnerError" in r.candidate_error
        assert not r.disagree
    finally:
        active.close()
        cand.close()
