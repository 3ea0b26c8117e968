"""The GStreamer capture backend's parts that need no stream: the pipelines it builds (the Jetson one included,
where GStreamer or the NVIDIA elements are absent), the element check, and the PPM frame reader on real pnmenc
output and on broken input."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.sources.gstreamer import PPMReader, pipeline, require_elements, rgb_to_bgr
from edge.sources.stream import StreamError
from runtime.errors import BackendUnavailable, ConfigError
from tests.cameras.conftest import BOARD

needs_gst = pytest.mark.skipif(shutil.which("gst-launch-1.0") is None,
                               reason="GStreamer is missing (scripts/install.sh installs it)")


def desc(argv: list[str]) -> str:
    assert argv[:3] == ["gst-launch-1.0", "-q", "-e"]
    return " ".join(argv[3:])


def test_rtsp_pipeline_with_the_jetson_hardware_decoder():
    d = desc(pipeline("rtsp://10.0.0.5:554/stream1", decoder="nvv4l2decoder", codec="h265", transport="udp",
                      latency_ms=100))
    assert d.startswith("rtspsrc location=rtsp://10.0.0.5:554/stream1 protocols=udp latency=100 ! "
                        "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! "
                        "videoconvert ! video/x-raw,format=RGB ! pnmenc ! fdsink fd=1 sync=false")


def test_rtsp_pipeline_in_software():
    d = desc(pipeline("rtsp://cam/live"))
    assert "rtspsrc location=rtsp://cam/live protocols=tcp latency=200 ! rtph264depay ! h264parse ! avdec_h264 ! " \
           "videoconvert ! video/x-raw,format=RGB ! pnmenc" in d


def test_url_with_spaces_and_quotes_stays_one_property(tmp_path: Path):
    odd = tmp_path / 'a "b" c.mp4'
    argv = pipeline(str(odd))
    (loc,) = [a for a in argv if a.startswith("uri=")]
    assert loc == f"uri={odd.resolve().as_uri()}"  # one argv item: gst-launch escapes it whole
    rtsp = [a for a in pipeline("rtsp://u:p w@cam/x") if a.startswith("location=")]
    assert rtsp == ["location=rtsp://u:p w@cam/x"]


def test_files_play_at_their_own_rate_and_need_software_decoding(tmp_path: Path):
    assert desc(pipeline(str(tmp_path / "v.mp4"))).endswith("fdsink fd=1 sync=true")
    with pytest.raises(ConfigError, match="needs an rtsp:// URL"):
        pipeline(str(tmp_path / "v.mp4"), decoder="nvv4l2decoder")
    with pytest.raises(ConfigError, match="decoder 'vaapi'"):
        pipeline("rtsp://cam/x", decoder="vaapi")


def test_missing_gstreamer_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gst-launch-1.0 anywhere on it
    with pytest.raises(BackendUnavailable, match="apt install gstreamer1.0-tools"):
        require_elements("software", "h264")


@needs_gst
def test_missing_nvidia_element_is_named():
    """This machine has GStreamer but not L4T's plugins: the check says which element and where it comes from."""
    with pytest.raises(BackendUnavailable, match="'nvv4l2decoder' is not available: it is part of NVIDIA's L4T"):
        require_elements("nvv4l2decoder", "h264")
    require_elements("software", "h264")  # everything the software pipeline uses is here


def reader_over(data: bytes, timeout_s: float = 5.0) -> PPMReader:
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as fh:
            fh.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return PPMReader(r, timeout_s)


@needs_gst
def test_reads_pnmenc_frames_of_a_real_image(tmp_path: Path):
    """pnmenc's stream of a real picture, odd width included: every frame equals OpenCV's own resize of it within
    the rounding of a YUV round trip."""
    out = tmp_path / "frames.ppm"
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={BOARD}", "!", "decodebin", "!", "videoconvert",
                    "!", "imagefreeze", "num-buffers=3", "!", "videoscale", "!",
                    "video/x-raw,width=641,height=480", "!", "videoconvert", "!", "video/x-raw,format=RGB", "!",
                    "pnmenc", "!", "filesink", f"location={out}"], check=True, timeout=60)
    reader = reader_over(out.read_bytes())
    frames = [reader.frame() for _ in range(3)]
    with pytest.raises(StreamError, match="ended"):
        reader.frame()
    assert (reader.width, reader.height) == (641, 480)
    img = rgb_to_bgr(frames[0], 641, 480)
    want = cv2.resize(cv2.imread(str(BOARD)), (641, 480), interpolation=cv2.INTER_LINEAR)
    assert img.shape == want.shape and frames[0] == frames[2]
    assert np.abs(img.astype(int) - want.astype(int)).mean() < 6


def test_reader_follows_a_change_of_size():
    a = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(2, 4, 3)
    b = np.full((3, 2, 3), 7, np.uint8)
    data = b"P6\n4 2\n255\n" + a.tobytes() + b"P6 # a comment\n2 3 255\n" + b.tobytes()
    r = reader_over(data)
    assert r.frame() == a.tobytes() and (r.width, r.height) == (4, 2)
    assert r.frame() == b.tobytes() and (r.width, r.height) == (2, 3)
    assert (rgb_to_bgr(a.tobytes(), 4, 2) == a[:, :, ::-1]).all()


@pytest.mark.parametrize("data, says", [
    (b"YUV4MPEG2 W640 H480\n", "not a binary PPM frame"),
    (b"P6\n4 2\n65535\n" + bytes(48), "expected 8-bit RGB"),
    (b"P6\nfour 2\n255\n", "bad PPM header"),
    (b"P6\n4 2\n255\n" + bytes(10), "the stream ended"),
])
def test_reader_refuses_what_is_not_a_frame(data: bytes, says: str):
    with pytest.raises(StreamError, match=says):
        reader_over(data).frame()


def test_reader_times_out_on_a_silent_stream():
    r, w = os.pipe()
    try:
        with pytest.raises(StreamError, match="no frame for 0.2s"):
            PPMReader(r, 0.2).frame()
    finally:
        os.close(w)
        os.close(r)
