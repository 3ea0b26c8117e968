"""The hwbench report: one pydantic model, written as JSON, Markdown and a latency-histogram PNG, plus the
compact summary a device publishes as its capability record. Files are written atomically."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from hwbench.bench import BenchOptions, ConfigResult
from hwbench.env import Environment
from hwbench.env import summary as env_summary
from hwbench.processing import ProcessingResult
from hwbench.verdict import TargetVerdict
from runtime import __version__
from runtime.fsio import atomic_write_bytes, atomic_write_text

SCHEMA_ID: Literal["shadowline.hwbench"] = "shadowline.hwbench"
SCHEMA_VERSION = 1


class BundleInfo(BaseModel):
    id: str
    task: str
    input_shape: list[int | str]
    model_sha256: str
    batch_range: list[int]


class Report(BaseModel):
    schema_id: Literal["shadowline.hwbench"] = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    shadowline_version: str = __version__
    bundle: BundleInfo
    environment: Environment
    options: BenchOptions
    configs: list[ConfigResult]
    processing: ProcessingResult | None = Field(None, description="pre/post-processing on real images (--images)")
    verdicts: list[TargetVerdict]

    def ok(self) -> list[ConfigResult]:
        return [c for c in self.configs if c.status == "ok"]


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def to_markdown(r: Report) -> str:
    e = r.environment
    lines = [f"# hwbench: {r.bundle.id} on {e.hostname}", "",
             f"{r.created_at} · shadowline {r.shadowline_version} · {r.bundle.task}, input {r.bundle.input_shape}, "
             f"batch range {r.bundle.batch_range[0]}..{r.bundle.batch_range[1]}", "", "## Environment", ""]
    env_rows = [("CPU", f"{e.cpu_model or '?'} ({e.cpu_count} cores, {e.machine})"),
                ("Memory", f"{e.memory_mb} MB" if e.memory_mb else None), ("GPU", e.gpu_model),
                ("Jetson", e.jetson_model), ("L4T", e.l4t_version), ("Power mode", e.power_mode),
                ("OS", e.os), ("Python", e.python),
                ("ONNX Runtime", f"{e.onnxruntime_version} (providers: {', '.join(e.onnxruntime_providers)})"
                 if e.onnxruntime_version else None),
                ("TensorRT", e.tensorrt_version), ("CUDA", e.cuda_version)]
    lines += [f"- {k}: {v}" for k, v in env_rows if v]
    lines += ["", "## Verdict", "", "| use case | requirement | status | best configuration | value |",
              "|---|---|---|---|---|"]
    for v in r.verdicts:
        val = "-" if v.value is None else f"{v.value:g} {v.unit}"
        lines.append(f"| {v.description or v.target} | {v.requirement} | **{v.status}** | {v.best_config or '-'} "
                     f"| {val} |")
    lines += ["", "## Measurements", "",
              f"Warm-up of {r.options.warmup} calls excluded. Latency is per call (every image of a batch waits for "
              "all of it); amortized ms/image = latency per call / batch size.", "",
              "| configuration | providers | load ms | build ms | calls | avg | p50 | p95 | p99 | max "
              "| amortized ms/image p95 | images/s | peak RSS MB | power mW |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r.ok():
        assert c.latency_ms is not None and c.latency_per_image_ms is not None
        prov = ",".join(p.replace("ExecutionProvider", "") for p in c.runner.get("active_providers", [])) or "-"
        power = _f((c.power or {}).get("power_avg_mw"), 0)
        s = c.latency_ms
        lines.append(f"| {c.id} | {prov} | {_f(c.load_ms, 1)} | {_f(c.build_ms, 1)} | {c.iterations} | "
                     f"{_f(s.avg)} | {_f(s.p50)} | {_f(s.p95)} | {_f(s.p99)} | {_f(s.max)} | "
                     f"{_f(c.latency_per_image_ms.p95)} | {_f(c.throughput_ips, 1)} | {_f(c.peak_rss_mb, 1)} | {power} |")
    if r.processing is not None:
        p = r.processing
        lines += ["", "## Pre- and post-processing (CPU, real images)", "",
                  f"{p.images} image(s) x {p.repeats}; added to inference latency in the verdict: "
                  f"{p.overhead_ms:.2f} ms per image (medians).", "",
                  "| step | avg | p50 | p95 | max |", "|---|---|---|---|---|"]
        for name, s in (("read + decode file", p.read_ms), ("preprocess", p.preprocess_ms),
                        ("decode output", p.decode_ms)):
            lines.append(f"| {name} | {_f(s.avg)} | {_f(s.p50)} | {_f(s.p95)} | {_f(s.max)} |")
        lines += [f"- skipped {name}: {why}" for name, why in p.skipped.items()]
    others = [c for c in r.configs if c.status != "ok"]
    if others:
        lines += ["", "## Not measured", ""]
        by_reason: dict[tuple[str, str | None], list[str]] = {}
        for c in others:
            by_reason.setdefault((c.status, c.reason), []).append(c.id)
        lines += [f"- {', '.join(ids)}: {status}: {reason}" for (status, reason), ids in by_reason.items()]
    return "\n".join(lines) + "\n"


def histogram_png(r: Report) -> bytes:
    """Latency histograms (per call) of every measured configuration, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = r.ok()
    n = max(1, len(ok))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.8), squeeze=False)
    for ax, c in zip(axes[:, 0], ok):
        ax.hist(c.samples_ms, bins=min(40, max(5, len(c.samples_ms) // 3)), color="#3b7dd8")
        assert c.latency_ms is not None
        for stat, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(getattr(c.latency_ms, stat), color="k", linestyle=style, linewidth=1, label=stat)
        ax.set_title(c.id, fontsize=9, loc="left")
        ax.set_ylabel("calls", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper right")
    if not ok:
        axes[0, 0].text(0.5, 0.5, "no configuration could be measured", ha="center", va="center")
    axes[-1, 0].set_xlabel("latency per call (ms); a call holds `batch` images", fontsize=8)
    fig.suptitle(f"{r.bundle.id} on {r.environment.hostname}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write(r: Report, out_dir: Path) -> dict[str, Path]:
    """Write hwbench-{bundle}.json/.md/.png into `out_dir`; returns the paths by kind."""
    out_dir = Path(out_dir)
    stem = f"hwbench-{r.bundle.id}"  # the id holds a dot (name-v1.0): no with_suffix
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(r.model_dump(mode="json"), indent=2) + "\n")
    atomic_write_text(paths["markdown"], to_markdown(r))
    atomic_write_bytes(paths["png"], histogram_png(r))
    return paths


def capability_summary(r: Report) -> dict[str, Any]:
    """What the fleet keeps as this device's capability for the bundle: hardware, verdicts, headline figures."""
    configs = []
    for c in r.ok():
        assert c.latency_per_image_ms is not None
        configs.append({"id": c.id, "providers": c.runner.get("active_providers"), "batch": c.batch,
                        "p50_ms": c.latency_ms.p50 if c.latency_ms else None,
                        "p95_ms": c.latency_ms.p95 if c.latency_ms else None, "throughput_ips": c.throughput_ips,
                        "load_ms": c.load_ms, "build_ms": c.build_ms, "peak_rss_mb": c.peak_rss_mb,
                        "power_avg_mw": (c.power or {}).get("power_avg_mw")})
    return {"schema": SCHEMA_ID, "version": SCHEMA_VERSION, "bundle": r.bundle.id,
            "model_sha256": r.bundle.model_sha256, "measured_at": r.created_at,
            "hardware": env_summary(r.environment),
            "verdicts": {v.target: {"status": v.status, "value": v.value, "unit": v.unit, "best": v.best_config}
                         for v in r.verdicts},
            "configs": configs,
            "processing_ms_per_image": round(r.processing.overhead_ms, 3) if r.processing else None,
            "not_measured": {c.id: c.reason for c in r.configs if c.status != "ok"}}
