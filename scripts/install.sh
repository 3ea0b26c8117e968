#!/usr/bin/env bash
# Install everything Shadowline and its tests need on a fresh Debian/Ubuntu machine:
# system packages (Python venv, Mosquitto, PostgreSQL server binaries for the fleet store's tests and benchmarks,
# Chromium for page tests, Prometheus for promtool and the scrape test,
# systemd for `systemd-analyze verify` of the unit, iproute2 and iptables for the hostile-network tests'
# namespaces (ip netns, tc tbf, iptables statistic), GStreamer with its RTSP server and Python bindings for the
# camera tests: the test RTSP server runs under the system python3) and the project in .venv with all extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in python3-venv mosquitto postgresql chromium chromium-driver prometheus systemd iproute2 iptables \
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
    gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 python3-gi; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || { echo "Shadowline needs Python 3.10-3.12 (set PYTHON=...)"; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,test]"
echo "installed: $(.venv/bin/shadowline --version)"
