"""The environment record of a benchmark: which hardware and software the figures belong to.

Every probe reads a file or runs a small command and returns None when the source is absent, so the record is
complete on a Jetson and honest (nulls, never guesses) elsewhere. The parsers take text, so they are unit-tested
on real-format samples without the hardware.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CPUINFO = Path("/proc/cpuinfo")
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


class Environment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hostname: str
    os: str = Field(description="kernel and distribution")
    machine: str = Field(description="CPU architecture, e.g. x86_64 or aarch64")
    cpu_model: str | None = None
    cpu_count: int
    memory_mb: int | None = None
    gpu_model: str | None = None
    jetson_model: str | None = Field(None, description="from /proc/device-tree/model on a Jetson")
    l4t_version: str | None = Field(None, description="from /etc/nv_tegra_release, e.g. 36.4.0")
    power_mode: str | None = Field(None, description="nvpmodel power mode, e.g. MAXN or 15W")
    python: str
    onnxruntime_version: str | None = None
    onnxruntime_providers: list[str] = Field(default_factory=list, description="providers this build offers")
    tensorrt_version: str | None = None
    cuda_version: str | None = None
    coremltools_version: str | None = None

    @property
    def is_jetson(self) -> bool:
        return self.jetson_model is not None


# -- parsers (pure functions of text) ---------------------------------------------------------------------------
def parse_cpu_model(cpuinfo: str) -> str | None:
    """The CPU's marketing name from /proc/cpuinfo. ARM kernels print no `model name`; the implementer and part
    numbers (and a `Hardware` line on older kernels) are what they offer."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware"):
        if fields.get(key):
            return fields[key]
    if "CPU implementer" in fields and "CPU part" in fields:
        parts = {("0x41", "0xd42"): "ARM Cortex-A78AE", ("0x41", "0xd08"): "ARM Cortex-A57",
                 ("0x41", "0xd0c"): "ARM Neoverse-N1", ("0x4e", "0x004"): "NVIDIA Carmel"}
        key2 = (fields["CPU implementer"].lower(), fields["CPU part"].lower())
        return parts.get(key2, f"ARM implementer {key2[0]} part {key2[1]}")
    return None


def parse_device_tree_model(raw: bytes) -> str | None:
    """/proc/device-tree/model is NUL-terminated; only an NVIDIA Jetson board counts as a Jetson."""
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    return text if "jetson" in text.lower() else None


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' -> '36.4.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> str | None:
    """`nvpmodel -q` prints warnings, then 'NV Power Mode: MAXN' and the mode id on the next line."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(\S.*)$", line)
        if m:
            mode = m.group(1).strip()
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{mode} (id {nxt})" if nxt.isdigit() else mode
    return None


def parse_cuda_version(version_json: str | None, version_txt: str | None) -> str | None:
    """CUDA >= 11.1 ships version.json; older toolkits a version.txt ('CUDA Version 10.2.89')."""
    if version_json:
        try:
            return str(json.loads(version_json)["cuda"]["version"])
        except (ValueError, KeyError, TypeError):
            pass
    if version_txt:
        m = re.search(r"CUDA Version\s+([\d.]+)", version_txt)
        if m:
            return m.group(1)
    return None


def parse_meminfo_total_mb(text: str) -> int | None:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) // 1024 if m else None


# -- probes -----------------------------------------------------------------------------------------------------
def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _text(path: Path) -> str | None:
    raw = _read(path)
    return raw.decode("utf-8", "replace") if raw is not None else None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout + out.stderr


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    """On a Jetson the bindings come from apt (no pip metadata), so ask the module itself."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt_cu12"):
        v = _dist_version(dist)
        if v:
            return v
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt  # noqa: PLC0415 - heavy, optional

        return str(tensorrt.__version__)
    except Exception:  # the stub wheels raise at import without libnvinfer (FIELD-NOTES)
        return None


def gpu_model(jetson_model: str | None) -> str | None:
    """A discrete GPU answers nvidia-smi; a Jetson's GPU is integrated into the SoC the board names."""
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if out and out.strip() and "failed" not in out.lower() and "not found" not in out.lower():
        return out.strip().splitlines()[0].strip()
    if jetson_model:
        return f"integrated ({jetson_model})"
    return None


def collect() -> Environment:
    """Probe this machine once."""
    jetson = parse_device_tree_model(_read(DEVICE_TREE_MODEL) or b"")
    l4t = parse_l4t_release(_text(NV_TEGRA_RELEASE) or "")
    power = parse_nvpmodel(_run(["nvpmodel", "-q"]) or "")
    try:
        import onnxruntime as ort  # noqa: PLC0415

        ort_version: str | None = ort.__version__
        providers = list(ort.get_available_providers())
    except ImportError:
        ort_version, providers = None, []
    uname = platform.uname()
    distro = ""
    os_release = _text(Path("/etc/os-release")) or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release, re.M)
    if m:
        distro = m.group(1)
    return Environment(
        hostname=uname.node,
        os=f"{uname.system} {uname.release}" + (f" ({distro})" if distro else ""),
        machine=uname.machine,
        cpu_model=parse_cpu_model(_text(CPUINFO) or "") or (platform.processor() or None),
        cpu_count=os.cpu_count() or 1,
        memory_mb=parse_meminfo_total_mb(_text(Path("/proc/meminfo")) or ""),
        gpu_model=gpu_model(jetson),
        jetson_model=jetson,
        l4t_version=l4t,
        power_mode=power,
        python=sys.version.split()[0],
        onnxruntime_version=ort_version,
        onnxruntime_providers=providers,
        tensorrt_version=tensorrt_version(),
        cuda_version=parse_cuda_version(_text(CUDA_HOME / "version.json"), _text(CUDA_HOME / "version.txt")),
        coremltools_version=_dist_version("coremltools"),
    )


def summary(env: Environment) -> dict[str, Any]:
    """The few fields a fleet dashboard shows for a device's hardware."""
    keys = ("machine", "cpu_model", "cpu_count", "memory_mb", "gpu_model", "jetson_model", "l4t_version",
            "power_mode", "onnxruntime_version", "tensorrt_version", "cuda_version")
    return {k: getattr(env, k) for k in keys if getattr(env, k) is not None}
