"""Export options: from a preset file (YAML) and/or the command line; validated with the key path on error."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="bundle name, e.g. pcb-screen")
    version: str = Field("1.0", description="MAJOR.MINOR")
    task: Literal["classify", "detect"] | None = None
    description: str = ""
    author: str = ""
    license: str = ""
    labels: str | list[str] | None = Field(None, description="file, comma list, list, or 'model-metadata'")
    dedupe_labels: bool = False
    layout: Literal["NCHW", "NHWC"] | None = Field(None, description="input layout; read from the shape when unset")
    color_order: Literal["RGB", "BGR"] | None = None
    resize: Literal["stretch", "letterbox", "short_side_center_crop"] | None = None
    letterbox_alignment: Literal["top_left", "center"] = "center"
    pad_value: float = 114.0
    resize_short: int | None = None
    interpolation: Literal["bilinear", "bilinear_antialias", "nearest", "area", "bicubic"] = "bilinear"
    input_size: list[int] | None = Field(None, description="[height, width]; taken from the model when static")
    scale: float = 1.0
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    decoder: Literal["softmax", "sigmoid", "probabilities", "yolox", "yolov8"] | None = None
    nms_iou: float = 0.45
    class_agnostic_nms: bool = False
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])
    min_score: float = 0.05
    threshold: float = 0.5
    thresholds: dict[str, float] = Field(default_factory=dict)
    ignore_classes: list[str] = Field(default_factory=list)
    calibration: str | None = Field(None, description="folder of real images for reference.npz")
    max_calibration: int = Field(32, ge=1)
    validation: str | None = Field(None, description="folder of labelled images")
    validation_labels: Literal["folder", "prefix"] = Field("folder", description="class = sub-folder or file prefix")
    fp16: bool = False
    int8: bool = Field(False, description="add INT8 variants (TensorRT Q/DQ; ORT CPU where faster), parity-gated")
    int8_cpu: Literal["auto", "always", "never"] = Field(
        "auto", description="ORT-CPU INT8 variant: only where faster than FP32 on this CPU (auto), always, or never")
    coreml: bool = False
    coreml_precision: Literal["fp32", "fp16"] = "fp32"
    max_batch: int = Field(8, ge=1, description="largest batch of the optimisation profile (dynamic batch)")
    max_pixels: int = 50_000_000


def load_preset(ref: str, model_path: Path | None) -> dict:
    """A preset name shipped with Shadowline (export/presets/NAME.yaml) or a path to a YAML file.

    In a preset, `{model_dir}` stands for the directory of the model being exported, and relative paths in a
    preset file given by path are relative to that file.
    """
    path = Path(ref)
    if not path.is_file():
        path = PRESET_DIR / f"{ref}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            raise ConfigError(f"preset {ref!r} is neither a file nor a shipped preset ({known})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path}: must be a mapping of option: value")
    model_dir = str(model_path.resolve().parent) if model_path else "."
    shipped = path.parent == PRESET_DIR
    for key in ("labels", "calibration", "validation"):
        v = data.get(key)
        if isinstance(v, str):
            v = v.replace("{model_dir}", model_dir)
            if not shipped and not Path(v).is_absolute() and (path.parent / v).exists():
                v = str(path.parent / v)
            data[key] = v
    data["_source"] = str(path)
    return data


def build_options(preset: dict | None, overrides: dict) -> ExportOptions:
    merged = {k: v for k, v in (preset or {}).items() if k != "_source"}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExportOptions.model_validate(merged)
    except ValidationError as err:
        src = (preset or {}).get("_source", "options")
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{src}: {msgs}") from err
