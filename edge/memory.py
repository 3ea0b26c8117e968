"""The daemon's resident memory in library pages: which mappings of /proc/self/smaps hold only page-cache pages of
a file, and handing them back (`release_library_pages`). Standalone (ctypes and the standard library only) so that
benchmarks/footprint.py can do the same to its bare ONNX Runtime process."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MADV_DONTNEED = 4  # Linux madvise advice (the same number on every architecture Linux runs Python on)
KERNEL_DIRS = ("dev", "proc", "sys")  # top-level directories of device and kernel files, never released
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Mapping:
    """One line range of /proc/<pid>/smaps: what `release_library_pages` decides on."""

    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0
    anonymous_kb: int = 0
    locked_kb: int = 0
    page_kb: int = 4  # KernelPageSize (hugetlbfs mappings: 2048 and up)

    @property
    def clean_library_pages(self) -> bool:
        """A private, read-only mapping of a file holding no page of its own: every resident page is the file's
        page-cache page, so dropping the mapping's page-table entries loses nothing (the next touch maps the same
        page again). Writable mappings, copy-on-write pages (RELRO after relocation: `Anonymous` > 0), shared
        mappings (SQLite's -shm), locked ones, huge-page mappings, device and kernel files (/dev: a GPU driver's
        mappings on a Jetson, /proc, /sys) and the kernel's [vdso]/[stack]/anonymous ones are never picked; the
        caller also checks that the path is a regular file."""
        return (self.path.startswith("/") and self.path.split("/", 2)[1] not in KERNEL_DIRS
                and not self.path.endswith(" (deleted)") and len(self.perms) == 4 and self.perms[1] == "-"
                and self.perms[3] == "p" and self.rss_kb > 0 and self.anonymous_kb == 0 and self.locked_kb == 0
                and self.page_kb * 1024 == PAGE)


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a /proc/<pid>/smaps text with their Rss, Anonymous and Locked sizes (kB)."""
    out: list[Mapping] = []
    head: list[str] | None = None
    sizes: dict[str, int] = {}

    def flush() -> None:
        if head is not None:
            lo, _, hi = head[0].partition("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), head[1], " ".join(head[5:]) if len(head) > 5 else "",
                               sizes.get("Rss", 0), sizes.get("Anonymous", 0), sizes.get("Locked", 0),
                               sizes.get("KernelPageSize", PAGE // 1024)))

    for line in text.splitlines():
        first, _, rest = line.partition(" ")
        if first.endswith(":"):
            if first in ("Rss:", "Anonymous:", "Locked:", "KernelPageSize:"):
                sizes[first[:-1]] = int(rest.split()[0])
            continue
        if "-" in first:  # "7f..-7f.. r-xp 00000000 fd:01 1234   /path/lib.so": a new mapping
            flush()
            head, sizes = line.split(), {}
    flush()
    return out


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's madvise, looked up once (None off Linux)."""
    if platform.system() != "Linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def release_library_pages() -> int:
    """Drop this process's page-table entries for the clean pages of its mapped libraries (MADV_DONTNEED on each
    `Mapping.clean_library_pages`); returns the resident kB so released (0 off Linux).

    Why: on kernels with large page-cache folios for regular files (ext4 since 6.16; this machine's 6.18), a fault
    in a library maps the whole folio around the faulting page, so the start-up code of OpenCV, ONNX Runtime's
    graph building and the interpreter's imports stay counted in RSS (cv2.abi3.so alone: 31 MB resident after one
    decode, where 6.6 MB came in when the file had been read by faults). The pages stay in the page cache, shared
    and reclaimable; only the code the running daemon touches again is mapped again (a few ms of minor faults,
    once). The daemon calls this right after its first decode (OpenCV and Pillow load with the first image), at its
    watchdog's first tick and when its frame path goes idle, beside `release_free_memory`."""
    madvise = _madvise()
    if madvise is None:
        return 0
    try:
        maps = parse_smaps(Path("/proc/self/smaps").read_text())
    except (OSError, ValueError):
        return 0
    released = 0
    regular: dict[str, bool] = {}
    for m in maps:
        if not m.clean_library_pages:
            continue
        if m.path not in regular:
            try:
                regular[m.path] = stat.S_ISREG(os.stat(m.path).st_mode)
            except OSError:
                regular[m.path] = False
        if regular[m.path] and madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            released += m.rss_kb
    return released
