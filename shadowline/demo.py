"""`shadowline demo`: the README's main job on the shipped real models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


def _default_realdata() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@click.command("demo")
@click.option("--realdata", type=click.Path(path_type=Path), default=None,
              help="folder with models/ and images/ (default: ../shared/realdata beside the checkout)")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="where keys and bundles go")
def demo_command(realdata: Path | None, workdir: Path | None) -> None:
    """Export the shipped PCB inspection model into a signed bundle and run it on the shipped PCB images."""
    from edge.predictor import BundleModel
    from edge.processing.image import read_image
    from export.bundle import load_bundle
    from export.exporter import export_model
    from export.options import build_options, load_preset
    from export.signing import TrustStore, generate_keys, load_private_key

    realdata = realdata or _default_realdata()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="shadowline-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = realdata / "models" / "pcb-aoi_opset11.onnx"
    click.echo(f"[demo] work directory {workdir}")
    priv, pub, kid = generate_keys(workdir / "keys", "demo") if not (workdir / "keys" / "demo.key").exists() \
        else (workdir / "keys" / "demo.key", workdir / "keys" / "demo.pub", "")
    opts = build_options(load_preset("pcb-aoi", model_path), {"fp16": True})
    path, manifest, timings = export_model(model_path, opts, workdir / "bundles", load_private_key(priv),
                                           force=True, progress=lambda m: click.echo(f"[export] {m}"))
    click.echo(f"[demo] signed bundle {path} ({sum(timings.values()):.1f} s)")
    with load_bundle(path, TrustStore.load(pub)) as b:
        click.echo(f"[demo] bundle verified, signer {b.signer}")
        model = BundleModel(b).load()
        for img in sorted((realdata / "images" / "pcb_winml").iterdir()):
            out = model.predict([read_image(img)])[0]
            hits = out.hits(b.manifest.thresholds)
            scores = ", ".join(f"{k} {v:.3f}" for k, v in (out.scores or {}).items())
            click.echo(f"[demo] {img.name:18s} {'FLAG' if hits else 'PASS'}  ({scores})")
        model.close()
