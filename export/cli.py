"""`shadowline export ...` and `shadowline keys ...`."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from export.options import build_options, load_preset


class DefaultGroup(click.Group):
    """`shadowline export MODEL.onnx ...` runs the `model` subcommand; named subcommands work as usual."""

    lazy: dict[str, tuple[str, str]] = {
        "coreml-inspect": ("export.coreml.cli", "coreml_inspect_command"),
        "tensorrt": ("export.tensorrt.cli", "tensorrt_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError:
                return None
        return super().get_command(ctx, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.list_commands(ctx) and args[0] not in ("-h", "--help"):
            args = ["model", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup)
def export_group() -> None:
    """Turn a trained ONNX model into a signed bundle (`shadowline export MODEL.onnx --preset NAME`), and inspect,
    verify or build device artifacts from bundles."""


class Display:
    """The export's one progress display on stderr. On a terminal each step is one line that shows `...` while it
    runs and its time when done; in a log only the finished steps and their findings appear, one line each."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.running = ""

    def __call__(self, message: str) -> None:
        if message.endswith("] ..."):
            self.running = message
            if self.tty:
                self.stream.write("\r\033[K" + message)
                self.stream.flush()
            return
        if self.tty and self.running:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        if " done in " in message:
            self.running = ""
        elif self.tty and self.running:
            self.stream.write(self.running)
        self.stream.flush()


def _progress(quiet: bool) -> Callable[[str], None]:
    return (lambda _m: None) if quiet else Display()


@export_group.command("model")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--preset", help="shipped preset name (pcb-aoi, squeezenet, yolox-nano, yolov8) or a YAML file of options")
@click.option("--name", help="bundle name, e.g. pcb-screen")
@click.option("--version", "version_", help="bundle version MAJOR.MINOR")
@click.option("--task", type=click.Choice(["classify", "detect"]), help="what the model does")
@click.option("--labels", help="labels file, comma-separated list, or 'model-metadata'")
@click.option("--author", help="who made the model: the manifest's and the Core ML package's author")
@click.option("--license", "license_", help="the model's licence (manifest and Core ML package metadata)")
@click.option("--description", help="one line on what the model does (manifest and Core ML package)")
@click.option("--dedupe-labels", is_flag=True, default=None, help="rename duplicate labels to 'label [index]'")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]),
              help="input layout (default: from the input shape; needed when it reads both ways)")
@click.option("--color-order", type=click.Choice(["RGB", "BGR"]), help="channel order the model expects")
@click.option("--resize", type=click.Choice(["stretch", "letterbox", "short_side_center_crop"]),
              help="how an image of any size becomes the input size")
@click.option("--letterbox-alignment", type=click.Choice(["top_left", "center"]), help="where a letterboxed image sits")
@click.option("--pad-value", type=float, help="letterbox pad value (0..255)")
@click.option("--resize-short", type=int, help="short side before the centre crop")
@click.option("--interpolation", type=click.Choice(["bilinear", "bilinear_antialias", "nearest", "area", "bicubic"]),
              help="resize filter; bilinear_antialias = PIL's bilinear (models trained on PIL-resized images)")
@click.option("--input-size", nargs=2, type=int, help="HEIGHT WIDTH when the model's input size is dynamic")
@click.option("--scale", type=float, help="multiplies 0..255 pixels first (1/255 for 0..1 models)")
@click.option("--mean", nargs=3, type=float, help="per-channel mean, model colour order, after scaling")
@click.option("--std", nargs=3, type=float, help="per-channel std, after scaling")
@click.option("--decoder", type=click.Choice(["softmax", "sigmoid", "probabilities", "yolox", "yolov8"]),
              help="how the output is read: logits (softmax/sigmoid), scores as given, YOLOX boxes "
                   "[N, anchors, 5 + C], or YOLOv8/YOLO11 boxes [N, 4 + C, anchors]")
@click.option("--nms-iou", type=float, help="NMS IoU for detectors")
@click.option("--class-agnostic-nms/--per-class-nms", default=None, help="NMS across classes, or per class")
@click.option("--threshold", type=float, help="default decision threshold")
@click.option("--class-threshold", multiple=True, metavar="CLASS=T", help="per-class threshold (repeatable)")
@click.option("--ignore-class", multiple=True, help="class that never flags, e.g. Normal (repeatable)")
@click.option("--calibration", help="folder of real images for reference.npz (bad files are skipped and reported)")
@click.option("--validation", help="folder of labelled images: per-class precision/recall/F1 into the manifest")
@click.option("--validation-labels", type=click.Choice(["folder", "prefix"]), help="class from sub-folder or prefix")
@click.option("--fp16", is_flag=True, default=None, help="add model.fp16.onnx, checked at task level")
@click.option("--int8", is_flag=True, default=None,
              help="add INT8 variants calibrated on half the calibration images and checked on the other half: "
                   "model.int8.onnx (TensorRT Q/DQ) and, where faster here, model.int8.cpu.onnx (ONNX Runtime CPU)")
@click.option("--int8-cpu", type=click.Choice(["auto", "always", "never"]),
              help="the ONNX Runtime CPU INT8 variant: where faster than FP32 on this CPU (auto), always, never")
@click.option("--coreml", is_flag=True, default=None, help="add a Core ML ML Program package (needs [coreml])")
@click.option("--coreml-precision", type=click.Choice(["fp32", "fp16"]), help="Core ML compute precision")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("bundles"), show_default=True,
              help="directory the bundle is written into")
@click.option("--tar", "as_tar", is_flag=True, help="write one uncompressed .tar instead of a directory")
@click.option("--key", type=click.Path(path_type=Path), help="ed25519 private key to sign with")
@click.option("--force", is_flag=True, help="replace an existing bundle of the same name and version")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--quiet", is_flag=True, help="nothing on stderr but an error: no progress, no third-party output")
def export_model_command(model: Path, preset: str | None, version_: str | None, license_: str | None,
                         class_threshold: tuple[str, ...],
                         ignore_class: tuple[str, ...], input_size, mean, std, out_dir: Path, as_tar: bool,
                         key: Path | None, force: bool, as_json: bool, quiet: bool, **kw) -> None:
    """Export MODEL (ONNX) into a signed bundle. Refuses models ONNX Runtime cannot run, labels that do not fit,
    and (with --fp16/--coreml) artifacts that disagree with the reference."""
    from export.exporter import export_model
    from runtime.errors import ConfigError
    from runtime.signing import load_private_key

    thresholds = {}
    for item in class_threshold:
        cls, sep, value = item.rpartition("=")
        if not sep:
            raise ConfigError(f"--class-threshold {item!r}: use CLASS=VALUE")
        thresholds[cls] = float(value)
    overrides = dict(kw, version=version_, license=license_, input_size=list(input_size) if input_size else None,
                     mean=list(mean) if mean else None, std=list(std) if std else None,
                     thresholds=thresholds or None, ignore_classes=list(ignore_class) or None)
    opts = build_options(load_preset(preset, model) if preset else None, overrides)
    signing_key = load_private_key(key) if key else None
    path, manifest, timings = export_model(model, opts, out_dir, signing_key, as_tar=as_tar, force=force,
                                           progress=_progress(quiet or as_json))
    sizes = {k: v.size for k, v in manifest.files.items()}
    summary = {"bundle": str(path), "name": manifest.name, "version": manifest.version, "task": manifest.task,
               "signed": signing_key is not None, "files": sizes,
               "parity": [c.model_dump() for c in manifest.parity],
               "validation": manifest.validation.model_dump() if manifest.validation else None,
               "seconds": timings}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"bundle {path} ({'signed' if signing_key else 'UNSIGNED'}), "
                   f"{sum(sizes.values()) / 1e6:.1f} MB in {sum(timings.values()):.1f} s")


@export_group.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trust-store", type=click.Path(path_type=Path), help="directory of trusted *.pub keys")
@click.option("--json", "as_json", is_flag=True, help="print the whole manifest as JSON")
def inspect_command(bundle: Path, trust_store: Path | None, as_json: bool) -> None:
    """Verify BUNDLE (hashes; signature with --trust-store) and print its manifest."""
    from runtime.bundle import load_bundle
    from runtime.signing import TrustStore

    store = TrustStore.load(trust_store) if trust_store else None
    with load_bundle(bundle, store) as b:
        m = b.manifest
        if as_json:
            click.echo(m.to_bytes().decode())
            return
        click.echo(f"{m.bundle_id}  task={m.task}  labels={len(m.labels)}  signer={b.signer or 'not checked'}")
        click.echo(f"input  {m.input.name} {m.input.shape} {m.input.color_order} {m.input.resize} "
                   f"scale={m.input.scale} mean={m.input.mean} std={m.input.std}")
        click.echo(f"output {m.output.names} decoder={m.output.decoder}")
        click.echo(f"thresholds default={m.thresholds.default} per_class={m.thresholds.per_class} "
                   f"ignore={m.thresholds.ignore}")
        for name, f in sorted(m.files.items()):
            click.echo(f"  {f.size:>10}  {f.sha256[:16]}  {name}")
        for c in m.parity:
            click.echo(f"  parity {c.kind} {c.precision}: {'pass' if c.passed else 'FAIL'} {c.stats}")


@export_group.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trust-store", type=click.Path(path_type=Path), required=True, help="directory of trusted keys")
def verify_command(bundle: Path, trust_store: Path) -> None:
    """Check BUNDLE's signature and every file hash; exit non-zero naming the file or key on any mismatch."""
    from runtime.bundle import load_bundle
    from runtime.signing import TrustStore

    with load_bundle(bundle, TrustStore.load(trust_store)) as b:
        click.echo(f"ok: {b.manifest.bundle_id} signed by {b.signer}, {len(b.manifest.files)} files verified")


@click.group("keys")
def keys_group() -> None:
    """ed25519 signing keys for bundles."""


@keys_group.command("generate")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("keys"), show_default=True,
              help="where NAME.key and NAME.pub are written")
@click.option("--name", default="signer", show_default=True, help="file name stem")
def keys_generate(directory: Path, name: str) -> None:
    """Generate a key pair: NAME.key (private, 0600) and NAME.pub (put it in devices' trust stores)."""
    from runtime.errors import ConfigError
    from runtime.signing import generate_keys

    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--dir {directory} is a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub, kid = generate_keys(directory, name)
    click.echo(f"key {kid}: private {priv}, public {pub}")


@keys_group.command("show")
@click.argument("key", type=click.Path(path_type=Path))
def keys_show(key: Path) -> None:
    """Print the key id of a public (.pub) or private (.key) key file."""
    from runtime.signing import key_id, load_private_key, load_public_key

    k = load_private_key(key).public_key() if key.suffix == ".key" else load_public_key(key)
    click.echo(key_id(k))

