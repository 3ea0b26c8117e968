"""The capture source's config: backend options are validated with the key path and line, like the rest."""

from __future__ import annotations

import shutil

import pytest

from edge.config import CaptureSource, parse_config
from runtime.errors import ConfigError

HEAD = "device_id: d\nrelease:\n  name: r\n  stages:\n    - role: verify\n      bundle: b\nsources:\n"


def test_gstreamer_source_with_the_jetson_decoder():
    cfg = parse_config(HEAD + "  - type: capture\n    url: rtsp://10.0.0.5/s\n    backend: gstreamer\n"
                              "    decoder: nvv4l2decoder\n    codec: h265\n    latency_ms: 100\n")
    (src,) = cfg.sources
    assert isinstance(src, CaptureSource) and src.backend == "gstreamer" and src.decoder == "nvv4l2decoder"
    assert src.transport == "tcp" and src.read_timeout_s == 10.0


@pytest.mark.parametrize("body, line, says", [
    ("  - type: capture\n    url: rtsp://x/s\n    decoder: nvv4l2decoder\n", 8, "decoder applies to backend: gstreamer"),
    ("  - type: capture\n    url: 0\n    backend: gstreamer\n", 8, "not a camera index"),
    ("  - type: capture\n    url: rtsp://x/s\n    backend: gstreamer\n    decoder: vaapi\n", 11, "sources.0.decoder"),
    ("  - type: capture\n    url: rtsp://x/s\n    transport: http\n", 10, "sources.0.transport"),
])
def test_bad_capture_options_name_line_and_key(body: str, line: int, says: str):
    with pytest.raises(ConfigError) as err:
        parse_config(HEAD + body, "device.yaml")
    assert f"device.yaml:{line}:" in str(err.value) and says in str(err.value)


@pytest.mark.skipif(shutil.which("gst-inspect-1.0") is None, reason="GStreamer is missing (scripts/install.sh)")
def test_validate_config_names_a_missing_decoder_element(tmp_path):
    """On this machine GStreamer is installed but L4T's nvv4l2decoder is not: validate-config says so (exit 8,
    BackendUnavailable) before any daemon starts; the software pipeline's elements are all there."""
    from click.testing import CliRunner

    from runtime.errors import BackendUnavailable
    from shadowline.cli import cli

    base = HEAD + "  - type: capture\n    url: rtsp://10.0.0.5/s\n    backend: gstreamer\n"
    jetson, software = tmp_path / "jetson.yaml", tmp_path / "software.yaml"
    jetson.write_text(base + "    decoder: nvv4l2decoder\n")
    software.write_text(base)
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(jetson), "--no-bundles"])
    assert r.exit_code == BackendUnavailable.exit_code and "'nvv4l2decoder' is not available" in r.output
    r = CliRunner().invoke(cli, ["edge", "validate-config", str(software), "--no-bundles"])
    assert r.exit_code == 0, r.output
