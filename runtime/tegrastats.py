"""Power, temperatures and load on a Jetson from `tegrastats`: sampled while hwbench times a configuration, and
in the background by the device daemon for its windowed metrics records.

tegrastats prints one line per interval. Rails are `NAME current/average` in mW; JetPack 5+ appends `mW` to
each figure, JetPack 4 (POM_5V_IN ...) does not. The board's input rail (VDD_IN on Orin/Xavier NX, POM_5V_IN on
Nano/TX2) is the total draw; the others are parts of it.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field

INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VDD_IN_TOTAL")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?\b")
_RAM = re.compile(r"\bRAM\s+(\d+)/(\d+)MB")
_GPU = re.compile(r"\bGR3D_FREQ\s+(\d+)%")
_CPU = re.compile(r"\bCPU\s+\[([^\]]*)\]")
_TEMP = re.compile(r"\b([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C\b")


@dataclass
class TegraSample:
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    cpu_load: list[int] = field(default_factory=list)  # percent per online core
    gpu_load: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, int] = field(default_factory=dict)  # instantaneous

    @property
    def power_mw(self) -> int | None:
        for rail in INPUT_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail]
        return None


def parse_line(line: str) -> TegraSample | None:
    """One tegrastats line -> a sample; None when the line is not a tegrastats report."""
    ram = _RAM.search(line)
    if ram is None:
        return None
    s = TegraSample(ram_used_mb=int(ram.group(1)), ram_total_mb=int(ram.group(2)))
    cpu = _CPU.search(line)
    if cpu:
        s.cpu_load = [int(c.split("%")[0]) for c in cpu.group(1).split(",") if "%" in c]
    gpu = _GPU.search(line)
    if gpu:
        s.gpu_load = int(gpu.group(1))
    # temperatures come before the rails; "CPU@47.5C" must not be read as a rail
    s.temps_c = {name: float(v) for name, v in _TEMP.findall(line)}
    for name, cur, _avg in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "IRAM", "CPU", "EMC_FREQ", "GR3D_FREQ"):
            continue
        s.rails_mw[name] = int(cur)
    return s


def summarize(samples: list[TegraSample]) -> dict[str, float | int | None]:
    """Average and peak board power, GPU and CPU load over a run."""
    power = [p for p in (s.power_mw for s in samples) if p is not None]
    gpu = [s.gpu_load for s in samples if s.gpu_load is not None]
    cpu = [statistics.mean(s.cpu_load) for s in samples if s.cpu_load]
    return {
        "samples": len(samples),
        "power_avg_mw": round(statistics.mean(power), 1) if power else None,
        "power_max_mw": max(power) if power else None,
        "gpu_load_avg_pct": round(statistics.mean(gpu), 1) if gpu else None,
        "cpu_load_avg_pct": round(statistics.mean(cpu), 1) if cpu else None,
    }


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` in the background between start() and stop()."""

    def __init__(self, interval_ms: int = 100, exe: str | None = None, keep: int | None = None) -> None:
        """`keep`: only the last `keep` samples are kept (a daemon samples for months); None keeps all of a run."""
        self.interval_ms = interval_ms
        self.exe = exe or shutil.which("tegrastats")
        self.keep = keep
        self.samples: list[TegraSample] = []
        self._recent: deque[TegraSample] = deque(maxlen=keep or 1)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self) -> TegrastatsSampler:
        if not self.available:
            return self
        self.samples = []
        self._proc = subprocess.Popen([str(self.exe), "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            s = parse_line(line)
            if s is not None:
                self._recent.append(s)
                if self.keep is None:
                    self.samples.append(s)

    @property
    def latest(self) -> TegraSample | None:
        """The newest sample, or None before the first line."""
        return self._recent[-1] if self._recent else None

    def stop(self) -> dict[str, float | int | None] | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        try:
            self._proc.wait(3)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(3)
        self._proc = None
        return summarize(self.samples if self.keep is None else list(self._recent))
