"""Device identity parsers on the real formats of the files and commands they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import BackendUnavailable
from runtime.loaders.tensorrt.device import (
    DeviceInfo,
    detect,
    parse_driver_version,
    parse_nv_tegra_release,
    parse_nvidia_smi,
)
from tests.tensorrt import fake_trt

TEGRA = {
    # JetPack 6.1 (Orin)
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC "
    "2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\nTARGET_USERSPACE_LIB_DIR_PATH=usr/lib/"
    "aarch64-linux-gnu/nvidia\n": "36.4.0",
    # JetPack 6.2 (r36.4.3)
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC "
    "2025\n": "36.4.3",
    # JetPack 5.1.2 (Xavier)
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC "
    "2023\n": "35.4.1",
    # JetPack 4.6.1 (Nano)
    "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC "
    "2022\n": "32.7.1",
}


@pytest.mark.parametrize("text,expected", list(TEGRA.items()))
def test_nv_tegra_release(text: str, expected: str) -> None:
    assert parse_nv_tegra_release(text) == expected


def test_nv_tegra_release_garbage() -> None:
    assert parse_nv_tegra_release("") is None
    assert parse_nv_tegra_release("Ubuntu 22.04.4 LTS") is None


PROC = {
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n": "535.129.03",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  "
    "(dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\nGCC version:  gcc version 12.3.0 (Ubuntu "
    "12.3.0-1ubuntu1~22.04)\n": "550.54.14",
    "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.4.0  Release Build  "
    "(buildbrain@mobile-u64-6336-d8000)  Thu Sep 12 21:34:28 PDT 2024\nGCC version:  collect2: error: ld returned "
    "1 exit status\n": "540.4.0",
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n": "470.256.02",
}


@pytest.mark.parametrize("text,expected", list(PROC.items()))
def test_proc_driver_version(text: str, expected: str) -> None:
    assert parse_driver_version(text) == expected


def test_proc_driver_version_garbage() -> None:
    assert parse_driver_version("GCC version: gcc 12\n") is None


def test_nvidia_smi() -> None:
    out = "535.129.03, 8.6, NVIDIA GeForce RTX 3080\n535.129.03, 8.9, NVIDIA L4\n"
    assert parse_nvidia_smi(out) == {"driver": "535.129.03", "compute_capability": "8.6",
                                     "name": "NVIDIA GeForce RTX 3080"}
    # Jetson's nvidia-smi answers [N/A] for the compute capability.
    assert parse_nvidia_smi("540.4.0, [N/A], Orin (nvgpu)\n") == {"driver": "540.4.0", "name": "Orin (nvgpu)"}
    assert parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.") == {}


def test_platform_prefers_l4t() -> None:
    assert DeviceInfo(compute_capability="8.7", l4t="36.4.0", driver="540.4.0").platform == "l4t-36.4.0"
    assert DeviceInfo(compute_capability="8.7", l4t="36.4.0").jetpack == "6.1"
    assert DeviceInfo(compute_capability="8.6", driver="535.129.03").platform == "driver-535.129.03"
    assert DeviceInfo(compute_capability="8.6", cuda_driver=12020).platform == "cuda-driver-12020"


def test_detect_reads_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trt.install(monkeypatch, compute_capability=(8, 7))
    tegra, proc = tmp_path / "nv_tegra_release", tmp_path / "version"
    tegra.write_text(next(iter(TEGRA)))
    proc.write_text(list(PROC)[2])
    info = detect(0, tegra, proc)
    assert (info.compute_capability, info.l4t, info.driver, info.cuda_driver) == ("8.7", "36.4.0", "540.4.0", 12060)
    assert info.platform == "l4t-36.4.0"
    with pytest.raises(BackendUnavailable, match="no usable CUDA device 3"):
        detect(3, tegra, proc)


def test_detect_without_pycuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailable, match="CUDA_ROOT"):
        detect()
