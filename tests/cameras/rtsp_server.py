"""A real RTSP server for the camera tests: GStreamer's RTSP server (gst-rtsp-server) streaming a still image as
live H.264 video, one pipeline per client session. It runs under the system python3, which has the GObject
bindings (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0, installed by scripts/install.sh); the project's venv
does not need them.

    /usr/bin/python3 rtsp_server.py --port 8554 --image board.png --frames 40 --fps 10

It prints `ready` once it listens, then for every session that ends `session N sent M` (frames the encoder made
for that client), and on SIGTERM `stopped` after the open sessions' lines. --frames 0 streams until the client
leaves.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--image", required=True, help="PNG or JPEG streamed as the camera's view")
    ap.add_argument("--frames", type=int, default=0, help="frames per session, then end of stream (0: endless)")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()
    Gst.init(None)

    frames = f"num-buffers={args.frames}" if args.frames > 0 else ""
    launch = (f'( filesrc location="{args.image}" ! decodebin ! videoconvert ! imagefreeze {frames} is-live=true '
              f"! videoscale ! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
              "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 name=enc "
              "! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(False)  # every client gets its own pipeline, counted from its first frame
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)

    sessions: dict[int, list[int]] = {}
    opened = [0]

    def report(n: int) -> None:
        count = sessions.pop(n, None)
        if count is not None:
            print(f"session {n} sent {count[0]}", flush=True)

    def configured(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        opened[0] += 1  # sessions are numbered in the order clients set them up
        n = opened[0]
        count = sessions[n] = [0]

        def probe(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            count[0] += 1
            return Gst.PadProbeReturn.OK

        media.get_element().get_by_name("enc").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe)
        media.connect("unprepared", lambda _m: report(n))

    factory.connect("media-configure", configured)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()

    def stop() -> bool:
        for n in list(sessions):
            report(n)
        print("stopped", flush=True)
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, stop)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
