"""The capture source's config: backend options are validated with the key path and line, like the rest."""

from __future__ import annotations

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
