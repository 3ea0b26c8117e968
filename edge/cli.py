"""`shadowline edge ...`: the device side."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("edge")
def edge_group() -> None:
    """The device daemon and device-side tools."""


@edge_group.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--trust-store", type=click.Path(path_type=Path), help="refuse the bundle unless signed by these keys")
@click.option("--backend", default="onnxruntime", show_default=True, help="runner backend")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per image")
def predict_command(bundle: Path, images: tuple[Path, ...], trust_store: Path | None, backend: str,
                    as_json: bool) -> None:
    """Run BUNDLE on IMAGES (files or folders) and print each decision (flag/pass with the classes that caused it).
    A bad image is reported and the rest still run."""
    from edge.predictor import BundleModel
    from edge.processing.image import read_image
    from export.bundle import load_bundle
    from export.signing import TrustStore
    from shadowline.errors import ImageError

    files = [p for i in images for p in (sorted(x for x in i.iterdir() if x.is_file()) if i.is_dir() else [i])]
    store = TrustStore.load(trust_store) if trust_store else None
    failures = 0
    with load_bundle(bundle, store) as b:
        model = BundleModel(b, backend).load()
        m = b.manifest
        for f in files:
            try:
                out = model.predict([read_image(f)])[0]
            except ImageError as err:
                failures += 1
                click.echo(json.dumps({"image": str(f), "error": str(err)}) if as_json else f"{f.name}: ERROR {err}")
                continue
            hits = out.hits(m.thresholds)
            decision = "flag" if hits else "pass"
            if as_json:
                click.echo(json.dumps({"image": str(f), "decision": decision, "hits": hits, **out.as_dict()}))
            else:
                label, score = out.top()
                why = ", ".join(f"{c} {s:.3f}" for c, s in hits[:5])
                click.echo(f"{f.name}: {decision.upper():4s}  top={label} {score:.3f}" + (f"  because {why}" if why else ""))
        model.close()
    if failures:
        raise SystemExit(6)
