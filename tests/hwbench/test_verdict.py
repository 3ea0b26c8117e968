"""Use-case targets: defaults from the field guide, YAML overrides, and the verdict over measured configurations."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwbench.verdict import DEFAULT_TARGETS, judge, load_targets
from runtime.errors import ConfigError


def cfg(id_: str, batch: int, p95: float, ips: float) -> dict:
    lat = {"avg": p95 * 0.8, "p50": p95 * 0.7, "p95": p95, "p99": p95 * 1.1, "max": p95 * 1.3}
    return {"id": id_, "batch": batch, "latency_ms": lat, "throughput_ips": ips}


def by_name(verdicts):
    return {v.target: v for v in verdicts}


def test_defaults_are_the_field_guide_targets():
    t = {x.name: x for x in DEFAULT_TARGETS.targets}
    assert t["realtime-line"].max_latency_ms == 100
    assert t["batch-review"].max_latency_ms == 500
    assert t["drone"].max_latency_ms == 2000
    assert t["mobile-field"].max_latency_ms == 3000
    assert (t["jetson-throughput"].min_ips, t["jetson-throughput"].ideal_ips) == (5, 15)


def test_judge_picks_the_best_allowed_configuration():
    configs = [cfg("a/b1", 1, 150.0, 6.0), cfg("a/b8", 8, 120.0, 12.0)]
    v = by_name(judge(DEFAULT_TARGETS, configs))
    # the real-time line may not batch: b8's 120 ms calls do not count there
    assert (v["realtime-line"].status, v["realtime-line"].best_config, v["realtime-line"].value) == \
        ("fail", "a/b1", 150.0)
    assert (v["batch-review"].status, v["batch-review"].best_config) == ("pass", "a/b8")
    assert v["drone"].status == "pass" and v["mobile-field"].status == "pass"
    assert (v["jetson-throughput"].status, v["jetson-throughput"].value) == ("partial", 12.0)


def test_throughput_range():
    assert by_name(judge(DEFAULT_TARGETS, [cfg("x", 1, 10, 4.9)]))["jetson-throughput"].status == "fail"
    assert by_name(judge(DEFAULT_TARGETS, [cfg("x", 1, 10, 15.0)]))["jetson-throughput"].status == "pass"


def test_no_measurement_is_not_a_pass():
    assert {v.status for v in judge(DEFAULT_TARGETS, [])} == {"n/a"}


def test_targets_from_yaml(tmp_path: Path):
    f = tmp_path / "targets.yaml"
    f.write_text("targets:\n  - name: seal-line\n    max_latency_ms: 19\n    metric: p99\n    max_batch: 1\n"
                 "  - name: station\n    min_ips: 30\n")
    ts = load_targets(f)
    v = by_name(judge(ts, [cfg("c", 1, 18.0, 55.0)]))
    assert v["seal-line"].status == "fail" and v["seal-line"].value == pytest.approx(19.8)  # p99 judged: p95 (18) alone would pass
    assert v["station"].status == "pass"


@pytest.mark.parametrize("text, words", [
    ("targets:\n  - name: x\n    max_latency_ms: 10\n    min_ips: 3\n", ["targets.0", "exactly one"]),
    ("targets:\n  - name: x\n    max_latency_ms: 10\n    colour: red\n", ["targets.0.colour"]),
    ("targets:\n  - name: x\n    max_latency_ms: -1\n", ["targets.0.max_latency_ms"]),
    ("targets: [\n", ["not valid YAML"]),
    ("targets: []\n", ["targets"]),
])
def test_bad_targets_file_names_the_problem(tmp_path: Path, text: str, words: list[str]):
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_targets(f)
    for w in words:
        assert w in str(err.value)
    assert str(f) in str(err.value)


def test_missing_targets_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_targets(tmp_path / "nope.yaml")
