"""How a model wants its pixels and how its output is read: part of every bundle manifest."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ResizeMode = Literal["stretch", "letterbox", "short_side_center_crop"]
Decoder = Literal["softmax", "sigmoid", "probabilities", "yolox", "yolov8"]
CLASSIFY_DECODERS: tuple[str, ...] = ("softmax", "sigmoid", "probabilities")
DETECT_DECODERS: tuple[str, ...] = ("yolox", "yolov8")


class LetterboxSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alignment: Literal["top_left", "center"] = Field("center", description="where the resized image sits in the canvas")
    pad_value: float = Field(114.0, description="value of the padding pixels, before normalisation")


class InputSpec(BaseModel):
    """Preprocessing: x = (pixel * scale - mean[c]) / std[c], channels in `color_order`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="input tensor name")
    shape: list[int | str] = Field(description="tensor shape; a string is a dynamic dimension (batch)")
    dtype: Literal["float32", "float16"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color_order: Literal["RGB", "BGR"] = Field(description="channel order the model expects")
    resize: ResizeMode = Field(description="how an image of any size becomes the input size")
    letterbox: LetterboxSpec | None = Field(None, description="letterbox alignment and pad value")
    resize_short: int | None = Field(
        None, description="short_side_center_crop: short side after resizing, before the crop (default: crop size)"
    )
    interpolation: Literal["bilinear", "bilinear_antialias", "nearest", "area", "bicubic"] = "bilinear"
    scale: float = Field(1.0, description="multiplies 0..255 pixel values first (1/255 for 0..1 models)")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], description="per channel, model order")
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], description="per channel, model order")

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.shape) != 4:
            raise ValueError(f"input shape must have 4 dimensions, got {self.shape}")
        if self.channels != 3:
            raise ValueError(f"input must have 3 colour channels, got {self.channels} (layout {self.layout})")
        for field in ("mean", "std"):
            if len(getattr(self, field)) != 3:
                raise ValueError(f"{field} needs 3 values, one per channel")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.resize == "letterbox" and self.letterbox is None:
            self.letterbox = LetterboxSpec()
        return self

    @property
    def height(self) -> int:
        return int(self.shape[2] if self.layout == "NCHW" else self.shape[1])

    @property
    def width(self) -> int:
        return int(self.shape[3] if self.layout == "NCHW" else self.shape[2])

    @property
    def channels(self) -> int:
        c = self.shape[1] if self.layout == "NCHW" else self.shape[3]
        return int(c) if isinstance(c, int) else -1

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.shape[0], int) or self.shape[0] < 1


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[str] = Field(description="output tensor names; the first is decoded")
    decoder: Decoder = Field(description="softmax/sigmoid: raw logits; probabilities: scores as given; yolox: "
                                         "[N, anchors, 5 + classes] grid offsets; yolov8: [N, 4 + classes, anchors] "
                                         "centre/size boxes in input pixels (YOLOv8, YOLO11)")
    nms_iou: float = Field(0.45, ge=0.0, le=1.0, description="NMS IoU (detectors)")
    class_agnostic_nms: bool = Field(False, description="NMS across classes (one box per object) instead of per class")
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32], description="grid strides, in output order")
    min_score: float = Field(0.05, ge=0.0, le=1.0, description="detections below this are dropped before NMS")
    max_detections: int = Field(300, ge=1)
