"""Device config: valid files load; every error names the key path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.config import FolderSource, load_config, parse_config
from runtime.errors import ConfigError
from shadowline.cli import cli

GOOD = """\
device_id: line3-cam1
bundles_dir: bundles
release:
  name: seal-inspection
  revision: 7
  mode: production
  stages:
    - role: screen
      bundle: seal-screen-v1.2
      candidate_classes: [defect]
      threshold: 0.30
    - role: verify
      bundle: seal-defect-v2.3
      thresholds: {default: 0.5, severe_corrosion: 0.35}
  actions: [webhook]
  candidate:
    name: seal-inspection
    revision: 8
    stages:
      - role: screen
        bundle: seal-screen-v1.3
        threshold: 0.25
sources:
  - type: folder
    path: inbox
  - type: capture
    url: rtsp://cam/stream
    sample_fps: 2
actions:
  webhook: {url: "http://127.0.0.1:9/hook"}
"""


def test_good_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    p = tmp_path / "device.yaml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.release is not None and cfg.release.candidate is not None
    assert cfg.release.ref == "seal-inspection@7" and cfg.release.candidate.revision == 8
    assert cfg.bundles_dir == tmp_path / "bundles"
    folder = cfg.sources[0]
    assert isinstance(folder, FolderSource) and folder.path == tmp_path / "inbox"
    assert cfg.store.path == tmp_path / "shadowline.db"
    assert folder.done_dir is None and folder.failed_dir is None  # the source's own default: <path>/done, /failed


def test_done_and_failed_dirs_absolute_kept_relative_resolved(tmp_path: Path) -> None:
    elsewhere = tmp_path / "archive" / "done"
    text = GOOD.replace("    path: inbox\n", f"    path: inbox\n    done_dir: {elsewhere}\n    failed_dir: rejects\n")
    p = tmp_path / "conf" / "device.yaml"
    p.parent.mkdir()
    p.write_text(text)
    folder = load_config(p).sources[0]
    assert isinstance(folder, FolderSource)
    assert folder.done_dir == elsewhere  # an absolute path stays where the admin put it
    assert folder.failed_dir == tmp_path / "conf" / "rejects"  # a relative one is relative to the config file


@pytest.mark.parametrize("old,new,where", [
    ("      threshold: 0.30\n", "      threshold: 1.30\n", ":11: release.stages.0.threshold:"),
    ("    sample_fps: 2\n", "    sample_fps: 2\n    fps: 3\n", ":29: sources.1.fps: Extra inputs are not permitted"),
    ("  mode: production\n", "  mode: live\n", ":6: release.mode:"),
    ("device_id: line3-cam1\n", "device_id: 'bad id!'\n", ":1: device_id:"),
])
def test_errors_name_key_path_and_line(tmp_path: Path, old: str, new: str, where: str) -> None:
    p = tmp_path / "device.yaml"
    assert old in GOOD
    p.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}{where}" in str(e.value)


def test_action_without_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match="actions.mqtt is not set"):
        parse_config(GOOD.replace("actions: [webhook]", "actions: [webhook, work_order_mqtt]"))


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg:3: not valid YAML"):
        parse_config("device_id: a\nrelease:\n\tname: x\n", "cfg")


def test_validate_config_command(tmp_path: Path) -> None:
    p = tmp_path / "device.yaml"
    p.write_text(GOOD)
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(p), "--no-bundles"])
    assert r.exit_code == 0, r.output
    assert "seal-inspection@7 production, 2 stage(s), candidate seal-inspection@8" in r.output
    p.write_text(GOOD.replace("threshold: 0.30", "treshold: 0.30"))
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(p), "--no-bundles"])
    assert r.exit_code == ConfigError.exit_code
    assert "release.stages.0.treshold: Extra inputs are not permitted" in r.output


def test_validate_config_loads_bundles(tmp_path: Path, bundles: dict[str, Path], keys: dict[str, Path]) -> None:
    from tests.edge.conftest import photo_release, write_config

    bad = photo_release(bundles)
    bad["stages"][0]["candidate_classes"] = ["tabby"]  # the ImageNet label is "tabby, tabby cat"
    p = write_config(tmp_path, keys, bad)
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(p)])
    assert r.exit_code == ConfigError.exit_code
    assert "classes ['tabby'] are not labels of the bundle" in r.output
    p = write_config(tmp_path, keys, photo_release(bundles))
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(p)])
    assert r.exit_code == 0, r.output
    assert "bundles verified" in r.output


def test_runner_options_per_backend() -> None:
    from pydantic import TypeAdapter

    from edge.config import CoreMLRunnerConfig, OnnxRuntimeRunnerConfig, RunnerConfig, TensorRTRunnerConfig

    runner = TypeAdapter(RunnerConfig)
    ort = runner.validate_python({"providers": ["cuda", "cpu"], "threads": 2})  # backend left out: onnxruntime
    assert isinstance(ort, OnnxRuntimeRunnerConfig)
    # idle spinning is off unless asked for: spinning intra-op threads take the decode workers' cores
    assert ort.runner_options() == {
        "providers": ["cuda", "cpu"], "threads": 2, "require_providers": False,
        "session_config": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}}
    spin = runner.validate_python({"spinning": True, "session_config": {"session.inter_op.allow_spinning": "0"}})
    assert spin.runner_options()["session_config"] == {"session.intra_op.allow_spinning": "1",
                                                       "session.inter_op.allow_spinning": "0"}
    trt = runner.validate_python({"backend": "tensorrt", "precision": "fp16", "cache_dir": "/var/cache/engines"})
    assert isinstance(trt, TensorRTRunnerConfig)
    assert trt.runner_options() == {"cache_dir": Path("/var/cache/engines"), "precision": "fp16",
                                    "workspace_mb": 1024, "rebuild": False}
    coreml = runner.validate_python({"backend": "coreml"})
    assert isinstance(coreml, CoreMLRunnerConfig) and coreml.runner_options() == {"compute_units": "ALL"}


RUNNER_BASE = "device_id: cam-1\nfleet: {broker_url: 'mqtt://fleet:1883'}\nrunner:\n"


@pytest.mark.parametrize("runner,where", [
    # an ONNX Runtime key under another backend is an error at start-up, not silently ignored
    ("  backend: tensorrt\n  precision: fp16\n  providers: [cuda]\n", ":6: runner.providers: Extra inputs"),
    ("  backend: coreml\n  threads: 2\n", ":5: runner.threads: Extra inputs"),
    ("  threads: 2\n  precision: fp16\n", ":5: runner.precision: Extra inputs"),
    ("  backend: tensorrt\n  precision: int4\n", ":5: runner.precision: Input should be"),
    ("  backend: tensorflow\n", ":3: runner: Input tag 'tensorflow' found using 'backend' does not match"),
])
def test_runner_keys_belong_to_their_backend(tmp_path: Path, runner: str, where: str) -> None:
    p = tmp_path / "device.yaml"
    p.write_text(RUNNER_BASE + runner)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}{where}" in str(e.value)


def test_missing_backend_fails_at_start_with_install_hint(tmp_path: Path, bundles, keys) -> None:
    from edge.config import load_config
    from edge.daemon import Daemon
    from runtime.errors import BackendUnavailable
    from tests.edge.conftest import pcb_release, write_config

    cfg = write_config(tmp_path, keys, pcb_release(bundles), runner={"backend": "tensorrt"}, api={"enabled": False})
    d = Daemon(load_config(cfg))
    try:
        with pytest.raises(BackendUnavailable, match="tensorrt"):
            d.start()
    finally:
        d.stop()


def test_fleet_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from edge.config import load_config

    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir()
    (cfg_dir / "device.yaml").write_text(
        "device_id: cam-1\nfleet:\n  broker_url: mqtts://fleet:8883\n  releases_dir: rel\n  fleet_keys: fleet.pub\n"
        "  tls: {ca_file: pki/ca.pem, cert_file: pki/dev.pem, key_file: /abs/dev.key}\n")
    cfg = load_config(cfg_dir / "device.yaml")
    assert cfg.fleet.releases_dir == cfg_dir.resolve() / "rel"
    assert cfg.fleet.fleet_keys == [cfg_dir.resolve() / "fleet.pub"]  # one key or a list of them
    assert cfg.fleet.tls.ca_file == cfg_dir.resolve() / "pki/ca.pem"
    assert cfg.fleet.tls.cert_file == cfg_dir.resolve() / "pki/dev.pem"
    assert cfg.fleet.tls.key_file == Path("/abs/dev.key")
