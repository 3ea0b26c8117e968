"""tegrastats lines as JetPack 6 (Orin), JetPack 5 (Xavier NX) and JetPack 4 (Nano) print them, and the sampler's
process handling with a stand-in executable that prints such lines (tegrastats itself exists only on a Jetson)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runtime.tegrastats import TegrastatsSampler, parse_line, summarize

ORIN = ("11-22-2026 04:10:00 RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
        "CPU [2%@729,1%@729,0%@729,0%@729,off,off] EMC_FREQ 0% GR3D_FREQ 37% cpu@47.5C soc2@46.968C "
        "soc0@47.25C gpu@47.468C tj@47.5C soc1@46.812C VDD_IN 4786mW/4786mW VDD_CPU_GPU_CV 484mW/484mW "
        "VDD_SOC 1492mW/1492mW")
XAVIER = ("RAM 2969/6854MB (lfb 1x4MB) SWAP 0/3427MB (cached 0MB) CPU [12%@1190,9%@1190,7%@1190,10%@1190,"
          "off,off] EMC_FREQ 0% GR3D_FREQ 99% AUX@33.5C CPU@35C thermal@34.4C AO@34C GPU@35C PMIC@50C "
          "VDD_IN 5452/5452 VDD_CPU_GPU_CV 1435/1435 VDD_SOC 1475/1475")
NANO = ("RAM 1404/3964MB (lfb 460x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [8%@102,6%@102,2%@102,3%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@25C CPU@27.5C "
        "PMIC@100C GPU@25.5C AO@33.5C thermal@26.5C POM_5V_IN 1350/1350 POM_5V_GPU 0/0 POM_5V_CPU 157/157")


def test_orin_line():
    s = parse_line(ORIN)
    assert s is not None
    assert (s.ram_used_mb, s.ram_total_mb) == (2448, 7620)
    assert s.cpu_load == [2, 1, 0, 0]  # offline cores are not zeros
    assert s.gpu_load == 37
    assert s.temps_c["gpu"] == 47.468 and s.temps_c["tj"] == 47.5
    assert s.rails_mw == {"VDD_IN": 4786, "VDD_CPU_GPU_CV": 484, "VDD_SOC": 1492}
    assert s.power_mw == 4786


def test_xavier_line_without_units_and_uppercase_temperatures():
    s = parse_line(XAVIER)
    assert s is not None and s.power_mw == 5452 and s.gpu_load == 99
    assert "CPU" not in s.rails_mw and s.temps_c["CPU"] == 35.0
    assert s.cpu_load == [12, 9, 7, 10]


def test_nano_line_input_rail_is_pom_5v_in():
    s = parse_line(NANO)
    assert s is not None and s.power_mw == 1350
    assert s.rails_mw["POM_5V_CPU"] == 157 and "IRAM" not in s.rails_mw and "RAM" not in s.rails_mw
    assert s.gpu_load == 0


def test_not_a_tegrastats_line():
    assert parse_line("") is None
    assert parse_line("tegrastats: permission denied") is None


def test_summarize():
    samples = [parse_line(ORIN), parse_line(ORIN.replace("VDD_IN 4786mW/4786mW", "VDD_IN 6000mW/5393mW")
                                           .replace("GR3D_FREQ 37%", "GR3D_FREQ 99%"))]
    out = summarize([s for s in samples if s])
    assert out == {"samples": 2, "power_avg_mw": 5393.0, "power_max_mw": 6000, "gpu_load_avg_pct": 68.0,
                   "cpu_load_avg_pct": 0.8}
    assert summarize([])["power_avg_mw"] is None


def test_sampler_runs_and_stops_the_process(tmp_path: Path):
    exe = tmp_path / "tegrastats"
    # prints one line per --interval like the real tool, forever, until terminated
    exe.write_text(f"#!/bin/sh\nwhile true; do echo '{ORIN}'; sleep 0.02; done\n")
    os.chmod(exe, 0o755)
    sampler = TegrastatsSampler(interval_ms=20, exe=str(exe)).start()
    time.sleep(0.3)
    proc = sampler._proc
    out = sampler.stop()
    assert out is not None and out["samples"] >= 3 and out["power_avg_mw"] == 4786.0
    assert proc is not None and proc.poll() is not None


def test_sampler_absent_is_harmless():
    s = TegrastatsSampler(exe=None)
    s.exe = None
    assert not s.available
    assert s.start().stop() is None


def test_power_is_sampled_during_the_timed_calls(bundles, tmp_path: Path, monkeypatch):
    """On a Jetson `tegrastats` is on PATH; here the stand-in is, and hwbench's measurement picks it up."""
    from hwbench.bench import BenchOptions, measure
    from hwbench.plan import Config
    from runtime.bundle import load_bundle

    exe = tmp_path / "tegrastats"
    exe.write_text(f"#!/bin/sh\nwhile true; do echo '{ORIN}'; sleep 0.02; done\n")
    os.chmod(exe, 0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with load_bundle(bundles["squeezenet"]) as b:
        r = measure(b, Config("onnxruntime", "fp32", 1, "cpu"), BenchOptions(min_iterations=5, min_seconds=0.4))
        off = measure(b, Config("onnxruntime", "fp32", 1, "cpu"),
                      BenchOptions(min_iterations=5, min_seconds=0, power=False))
    assert r.status == "ok" and r.power is not None
    assert r.power["samples"] >= 3 and r.power["power_avg_mw"] == 4786.0 and r.power["gpu_load_avg_pct"] == 37.0
    assert off.power is None
