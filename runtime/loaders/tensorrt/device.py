"""What the engine was built for: GPU compute capability, L4T release (Jetson) or driver version (dGPU).

Engines are not portable across GPU architectures, TensorRT versions or JetPack releases, so these values are part
of the engine cache key. The parsers take the text of the real files and commands, so they are tested without a GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import BackendUnavailable

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")

# Public L4T -> JetPack pairs, for the report only (the key uses the L4T release itself).
JETPACK_OF_L4T = {"35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "36.2.0": "6.0 DP", "36.3.0": "6.0",
                  "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1", "38.2.0": "7.0"}


class DeviceInfo(BaseModel):
    """The identity of this GPU platform as far as an engine cares."""

    model_config = ConfigDict(extra="forbid")
    gpu_name: str = Field("", description="CUDA device name, e.g. 'Orin'")
    compute_capability: str = Field(description="major.minor, e.g. '8.7' (Orin) or '8.6' (RTX 30xx)")
    l4t: str | None = Field(None, description="L4T release on a Jetson, e.g. '36.4.0'")
    driver: str | None = Field(None, description="NVIDIA kernel driver version, e.g. '535.129.03'")
    cuda_driver: int | None = Field(None, description="CUDA driver API version, e.g. 12060")

    @property
    def platform(self) -> str:
        """The platform part of the cache key: the L4T release on a Jetson (it pins CUDA, cuDNN and TensorRT),
        the driver version elsewhere."""
        if self.l4t:
            return f"l4t-{self.l4t}"
        if self.driver:
            return f"driver-{self.driver}"
        if self.cuda_driver:
            return f"cuda-driver-{self.cuda_driver}"
        return "unknown"

    @property
    def jetpack(self) -> str | None:
        return JETPACK_OF_L4T.get(self.l4t or "")


def parse_nv_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, ...' -> '36.4.0'."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3) or 0)}"


def parse_driver_version(text: str) -> str | None:
    """The driver version from /proc/driver/nvidia/version (proprietary or open kernel module)."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)\b", line)
            if m:
                return m.group(1)
    return None


def parse_nvidia_smi(text: str) -> dict[str, str]:
    """The first GPU of `nvidia-smi --query-gpu=driver_version,compute_cap,name --format=csv,noheader`."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and re.match(r"^\d+\.\d+", parts[0]):
            out = {"driver": parts[0], "name": ",".join(parts[2:]).strip()}
            if re.match(r"^\d+\.\d+$", parts[1]):
                out["compute_capability"] = parts[1]
            return out
    return {}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _nvidia_smi() -> dict[str, str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version,compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else {}


def detect(device: int = 0, tegra_release: Path = NV_TEGRA_RELEASE,
           proc_version: Path = PROC_DRIVER_VERSION) -> DeviceInfo:
    """Ask CUDA (through pycuda) for the device, and the files/commands above for the platform."""
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailable(
            "pycuda is not installed: pip install 'shadowline[tensorrt]' (needs the CUDA headers: set CUDA_ROOT "
            "and put /usr/local/cuda/bin on PATH)") from err
    try:
        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        name = dev.name()
        cuda_driver = int(cuda.get_driver_version())
    except Exception as err:  # pycuda raises its own LogicError/RuntimeError family
        raise BackendUnavailable(f"no usable CUDA device {device}: {err}") from err
    l4t = parse_nv_tegra_release(_read(tegra_release) or "")
    driver = parse_driver_version(_read(proc_version) or "")
    if driver is None and l4t is None:
        driver = _nvidia_smi().get("driver")
    return DeviceInfo(gpu_name=name, compute_capability=f"{major}.{minor}", l4t=l4t, driver=driver,
                      cuda_driver=cuda_driver)
