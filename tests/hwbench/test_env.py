"""Environment parsers on real-format text (an x86 server, a Jetson AGX Orin on JetPack 6, a Jetson Nano on
JetPack 4) and the probe on this machine."""

from __future__ import annotations

import platform
from pathlib import Path

import onnxruntime

from hwbench import env

CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
stepping\t: 7

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
"""

# JetPack 6 kernels print no "model name" on ARM
CPUINFO_ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd42
CPU revision\t: 1
"""

CPUINFO_NANO_OLD = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 38.40
CPU implementer\t: 0x41
CPU part\t: 0xd07
"""

NV_TEGRA_RELEASE_R36 = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                        "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\n"
                        "TARGET_USERSPACE_LIB_DIR=nvidia\nTARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n")
NV_TEGRA_RELEASE_R32 = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                        "DATE: Sat Feb 19 17:05:08 UTC 2022\n")

NVPMODEL_ORIN = "NV Power Mode: MAXN\n0\n"
NVPMODEL_WARN = ("NVPM WARN: power mode is not set!\nNVPM WARN: Reading /etc/nvpmodel.conf\n"
                 "NV Power Mode: 15W\n2\n")


def test_cpu_model_x86_and_arm():
    assert env.parse_cpu_model(CPUINFO_X86) == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert env.parse_cpu_model(CPUINFO_ORIN) == "ARM Cortex-A78AE"
    assert env.parse_cpu_model(CPUINFO_NANO_OLD) == "ARMv8 Processor rev 1 (v8l)"
    unknown = CPUINFO_ORIN.replace("0xd42", "0xd99")
    assert env.parse_cpu_model(unknown) == "ARM implementer 0x41 part 0xd99"
    assert env.parse_cpu_model("") is None


def test_device_tree_model_is_nul_terminated_and_only_jetsons_count():
    assert env.parse_device_tree_model(b"NVIDIA Jetson AGX Orin Developer Kit\x00") == \
        "NVIDIA Jetson AGX Orin Developer Kit"
    assert env.parse_device_tree_model(b"Raspberry Pi 4 Model B Rev 1.4\x00") is None
    assert env.parse_device_tree_model(b"") is None


def test_l4t_release():
    assert env.parse_l4t_release(NV_TEGRA_RELEASE_R36) == "36.4.0"
    assert env.parse_l4t_release(NV_TEGRA_RELEASE_R32) == "32.7.1"
    assert env.parse_l4t_release("garbage") is None


def test_nvpmodel():
    assert env.parse_nvpmodel(NVPMODEL_ORIN) == "MAXN (id 0)"
    assert env.parse_nvpmodel(NVPMODEL_WARN) == "15W (id 2)"
    assert env.parse_nvpmodel("NV Power Mode: 7W") == "7W"
    assert env.parse_nvpmodel("bash: nvpmodel: command not found") is None


def test_cuda_version_from_json_or_txt():
    vjson = '{"cuda" : {"name" : "CUDA SDK", "version" : "12.6.68"}, "cuda_cudart" : {"version" : "12.6.68"}}'
    assert env.parse_cuda_version(vjson, None) == "12.6.68"
    assert env.parse_cuda_version(None, "CUDA Version 10.2.89\n") == "10.2.89"
    assert env.parse_cuda_version("{broken", "CUDA Version 11.4.315") == "11.4.315"
    assert env.parse_cuda_version(None, None) is None


def test_meminfo():
    assert env.parse_meminfo_total_mb("MemTotal:        7620508 kB\nMemFree:  100 kB\n") == 7441
    assert env.parse_meminfo_total_mb("") is None


def test_collect_on_this_machine():
    e = env.collect()
    assert e.onnxruntime_version == onnxruntime.__version__
    assert "CPUExecutionProvider" in e.onnxruntime_providers
    assert e.machine == platform.machine()
    expect_jetson = Path("/proc/device-tree/model").exists() and b"jetson" in \
        Path("/proc/device-tree/model").read_bytes().lower()
    assert e.is_jetson == expect_jetson
    s = env.summary(e)
    assert s["onnxruntime_version"] == onnxruntime.__version__
    assert ("jetson_model" in s) == expect_jetson
