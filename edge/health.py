"""What the platform says about the device: resident memory, CPU use, temperatures and power. On a Jetson the
figures come from tegrastats (runtime.tegrastats); elsewhere temperatures from Linux thermal zones, and no power
reading (a key that cannot be measured is left out, never sent as 0)."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import resource
import time
from pathlib import Path

from runtime.tegrastats import TegrastatsSampler

THERMAL = Path("/sys/class/thermal")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, loaded once (None on other C libraries): `platform.libc_ver()` reads the interpreter's executable, too
    much to repeat at every idle trim."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas. By default every thread that allocates (decode workers, inference,
    commit, API, ONNX Runtime's pool) may get an arena of its own, which keeps freed image buffers resident; two
    arenas measured about 3 MB less RSS for the running daemon here. No-op (False) on other C libraries."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, n))


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def keep_freed_buffers(trim_threshold: int = 1 << 30) -> bool:
    """Let glibc reuse freed frame buffers instead of handing them to the kernel at every free(). With glibc's
    defaults a block over the mmap threshold is mapped and unmapped per use, and a heap whose free top grows past
    the trim threshold (twice the largest block freed so far) is trimmed, so the frame path's buffers (file bytes,
    decoded images, Pillow's images, input tensors: 0.2 to 4 MB each, dozens in flight) were faulted in anew: 200
    to 400 minor faults and a median 0.85 CPU ms per frame of decode + preprocess (docs/daemon.md). Blocks up to
    32 MB now come from the heaps and stay there while frames flow; the daemon hands the free pages back with
    `release_free_memory` when its frame path goes idle. Larger blocks (a 12-megapixel image and up) are still
    mapped per use. No-op (False) on other C libraries."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def release_free_memory() -> bool:
    """glibc's malloc_trim(0): hand the free pages inside the heap and the thread arenas back to the kernel."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


PR_SET_NAME = 15  # prctl option: the calling thread's name (15 bytes), shown by top -H and /proc/<pid>/task/*/comm


def name_os_thread(name: str) -> bool:
    """Give the calling thread its Python name at the OS level too, so `top -H`, `py-spy` and
    /proc/<pid>/task/<tid>/comm tell the frame path's threads apart (the throughput benchmark reads each stage's
    CPU time from there). Threads started by this one (ONNX Runtime's pool) inherit it. No-op (False) off Linux."""
    if platform.system() != "Linux":
        return False
    try:
        return ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def mem_available_bytes() -> int | None:
    """Linux MemAvailable: what can be allocated without swapping (None where /proc/meminfo is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def thermal_zones() -> dict[str, float]:
    """Zone type -> degrees C from /sys/class/thermal (empty where the kernel exposes none, e.g. in a VM)."""
    out: dict[str, float] = {}
    try:
        zones = sorted(THERMAL.glob("thermal_zone*"))
    except OSError:
        return out
    for z in zones:
        try:
            name = (z / "type").read_text().strip() or z.name
            out[name] = int((z / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return out


class Health:
    """Samples for the windowed metrics records: CPU use since the previous call, memory, temperatures, power."""

    def __init__(self, use_tegrastats: bool = True) -> None:
        self.tegra = TegrastatsSampler(interval_ms=1000, keep=1) if use_tegrastats else None
        if self.tegra is not None and not self.tegra.available:
            self.tegra = None
        self._cpu = self._cpu_s()
        self._wall = time.monotonic()

    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> Health:
        if self.tegra is not None:
            self.tegra.start()
        return self

    def stop(self) -> None:
        if self.tegra is not None:
            self.tegra.stop()

    def reading(self) -> dict[str, float]:
        cpu, wall = self._cpu_s(), time.monotonic()
        values: dict[str, float] = {}
        if wall > self._wall:
            values["cpu_percent"] = round(100.0 * (cpu - self._cpu) / (wall - self._wall), 1)
        self._cpu, self._wall = cpu, wall
        rss = rss_bytes()
        if rss is not None:
            values["rss_bytes"] = float(rss)
        sample = self.tegra.latest if self.tegra is not None else None
        if sample is not None:
            values.update({f"temp_c:{k}": v for k, v in sample.temps_c.items()})
            values.update({f"power_mw:{k}": float(v) for k, v in sample.rails_mw.items()})
            if sample.gpu_load is not None:
                values["gpu_percent"] = float(sample.gpu_load)
        else:
            values.update({f"temp_c:{k}": v for k, v in thermal_zones().items()})
        return values
