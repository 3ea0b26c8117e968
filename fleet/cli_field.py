"""`shadowline fleet tune` and `shadowline fleet promote-data`: the field-truth analytics (threshold tuning,
training-data promotion) from the command line. Registered on the `fleet` group by fleet/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fleet.cli import Api, _api_options
from fleet.cli_output import emit, json_option, pairs
from runtime.errors import ConfigError, ImageError


def _class_recalls(values: tuple[str, ...]) -> dict[str, Any]:
    """`--class-recall Defective=0.98` -> {"Defective": MinRecall(0.98)}; errors name the bad value."""
    from fleet.analytics.tuning import MinRecall

    out: dict[str, Any] = {}
    for v in values:
        cls, sep, target = v.partition("=")
        try:
            out[cls.strip()] = MinRecall(recall=float(target))
        except ValueError as err:
            raise ConfigError(f"--class-recall {v!r}: expected CLASS=RECALL with RECALL in (0, 1]") from err
        if not sep or not cls.strip():
            raise ConfigError(f"--class-recall {v!r}: expected CLASS=RECALL")
    return out


@click.command("tune")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@click.option("--validation", "folder", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Labelled images: a sub-folder per class, files named <Class>_..., or a labels.json.")
@click.option("--strategy", type=click.Choice(["max_f1", "min_recall", "cost"]), default="max_f1", show_default=True,
              help="How each class's threshold is chosen (classes without --class-recall).")
@click.option("--recall", type=float, default=0.98, show_default=True, help="Recall target of --strategy min_recall.")
@click.option("--class-recall", multiple=True, metavar="CLASS=RECALL",
              help="Minimum-recall strategy for one class, e.g. Defective=0.98 (repeatable).")
@click.option("--miss-cost", type=float, default=10.0, show_default=True, help="Cost of a miss (--strategy cost).")
@click.option("--false-alarm-cost", type=float, default=1.0, show_default=True,
              help="Cost of a false alarm (--strategy cost).")
@click.option("--holdout", type=float, default=0.3, show_default=True,
              help="Fraction of images held out to check the choice (0: none).")
@click.option("--plot", type=click.Path(path_type=Path), default=Path("pr-curve.png"), show_default=True,
              help="Where the precision-recall PNG is written.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the full result as JSON here.")
@click.option("--trust-store", type=click.Path(path_type=Path), help="Refuse the bundle unless signed by these keys.")
@click.option("--backend", default="onnxruntime", show_default=True, help="Runner backend for the bundle.")
@click.option("--create-revision", "release", metavar="RELEASE",
              help="Create the next revision of RELEASE (name@rev) with the proposed thresholds, via the fleet API.")
@_api_options
def tune(bundle: Path, folder: Path, strategy: str, recall: float, class_recall: tuple[str, ...], miss_cost: float,
         false_alarm_cost: float, holdout: float, plot: Path, json_out: Path | None, trust_store: Path | None,
         backend: str, release: str | None, url: str, token: str | None) -> None:
    """Tune per-class thresholds of BUNDLE on a labelled validation folder: prints the per-class table (precision,
    recall, F1, false positives, misses per threshold) and the proposed thresholds, writes the PR plot."""
    from fleet.analytics.tuning import (
        CostWeighted,
        MaxF1,
        MinRecall,
        TuningConfig,
        plot_pr,
        render_table,
        retune_release,
    )
    from fleet.analytics.tuning import tune as run_tune
    from fleet.analytics.tuning_data import samples_from_images
    from fleet.protocol import ReleaseSpec
    from runtime.bundle import load_bundle
    from runtime.fsio import atomic_write_text
    from runtime.predictor import BundleModel
    from runtime.signing import TrustStore

    default = {"max_f1": MaxF1(), "min_recall": MinRecall(recall=recall),
               "cost": CostWeighted(miss_cost=miss_cost, false_alarm_cost=false_alarm_cost)}[strategy]
    try:
        config = TuningConfig(default=default, per_class=_class_recalls(class_recall), holdout=holdout)
    except ValueError as err:
        raise ConfigError(f"tuning options: {err}") from err
    api = Api(url, token) if release else None  # no token: refused before the images are run, not after
    trust = TrustStore.load(trust_store) if trust_store else None
    with load_bundle(bundle, trust) as b:
        model = BundleModel(b, backend).load()
        try:
            data = samples_from_images(model, folder)
        finally:
            model.close()
    for s in data.skipped:
        click.echo(f"skipped {s.source}: {s.reason}", err=True)
    result = run_tune(data.samples, config)
    click.echo(f"{result.samples} images: {result.train} to tune, {result.holdout} held out")
    for cls, ch in result.proposed.items():
        click.echo(f"\n## {cls} ({ch.strategy})\n")
        click.echo(render_table(result, cls), nl=False)
    click.echo("\nproposed thresholds:")
    for cls, ch in result.proposed.items():
        held = ""
        if ch.holdout is not None:
            held = f"; held out: precision {ch.holdout.precision:.3f}, recall {ch.holdout.recall:.3f}"
        note = "" if ch.met else " (recall target not met at any threshold: lowest proposed)"
        click.echo(f"  {cls}: {ch.threshold:.2f}{note}{held}")
    click.echo(f"plot: {plot_pr(result, plot)}")
    if json_out is not None:
        atomic_write_text(json_out, result.model_dump_json(indent=2))
        click.echo(f"json: {json_out}")
    if api is not None:
        spec = ReleaseSpec.model_validate(api.call("GET", f"/api/releases/{release}"))
        new = retune_release(spec, result.thresholds, note=f"thresholds tuned on {folder.name}, same bundles")
        stage = next((s for s in new.stages if s.role == "verify"), new.stages[-1])
        change = {"role": stage.role, "note": new.note,
                  **({"thresholds": stage.thresholds} if stage.role == "verify" else {"threshold": stage.threshold})}
        created = api.call("POST", f"/api/releases/{spec.ref}/thresholds", json=change)
        click.echo(f"created {created['name']}@{created['revision']} from {spec.ref}")


@click.command("promote-data")
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The fleet service's data directory (holds fleet.db).")
@click.option("--images-dir", type=click.Path(path_type=Path, file_okay=False),
              help="The fleet's uploaded images (its config's images.dir; default: <data-dir>/images).")
@click.option("--store-url", help="Or the fleet store's URL (postgresql://user@host/db, sqlite:///path).")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Also look in this folder for images the devices did not upload: <dir>/<device>/<file> or "
                   "<dir>/<file> (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Dataset folder to write (replaced atomically).")
@click.option("--task", type=click.Choice(["classify", "detect"]), default="classify", show_default=True,
              help="Folder per class (classify) or images/ + COCO annotations.json (detect).")
@click.option("--release", help="Only predictions of this release (name or name@rev).")
@click.option("--group", help="Only predictions of this device group.")
@click.option("--since", help="Only predictions at or after this ISO-8601 time.")
@click.option("--near-threshold", type=float, default=0.1, show_default=True,
              help="A top score within this of its class threshold is near-threshold.")
@click.option("--high-confidence", type=float, default=0.9, show_default=True,
              help="Confirmed predictions at or above this score are left out (nothing to learn).")
@click.option("--negative-label", help="Class folder for samples without a defect, e.g. Normal (default: none).")
@click.option("--no-unreviewed", is_flag=True, help="Leave out samples nobody reviewed (else: _unreviewed folder).")
@json_option
def promote_data(data_dir: Path | None, store_url: str | None, images_dir: Path | None, image_dirs: tuple[Path, ...],
                 out: Path, task: str,
                 release: str | None,
                 group: str | None, since: str | None, near_threshold: float, high_confidence: float,
                 negative_label: str | None, no_unreviewed: bool, as_json: bool) -> None:
    """Export the field's hard cases (overridden, disagreed-on, near-threshold) from the fleet store as a
    training dataset with a provenance manifest, with the images the devices uploaded for them; prints what was
    promoted, left out and missing."""
    from fleet.analytics.promotion import PromotionPolicy, promote
    from fleet.images import ImageStore
    from fleet.store import Store

    if (data_dir is None) == (store_url is None):
        raise ConfigError("give --data-dir or --store-url (one of them)")
    if data_dir is not None and not (data_dir / "fleet.db").is_file():
        raise ConfigError(f"{data_dir}: no fleet.db (not a fleet data directory)")
    try:
        policy = PromotionPolicy(near_threshold=near_threshold, high_confidence=high_confidence,
                                 include_unreviewed=not no_unreviewed,
                                 **({"negative_label": negative_label} if negative_label else {}))
    except ValueError as err:
        raise ConfigError(f"promotion options: {err}") from err

    def fetch(p) -> bytes | None:
        # the image the device uploaded for this prediction (PUT /api/images), else a folder given with --images,
        # where a kept image goes by its own file name, which the record's source names (folder:<file>)
        try:
            data = images.read(p.device, p.id)
        except ImageError as err:  # a damaged blob: promote reports it as a failed fetch and goes on
            raise OSError(str(err)) from err
        if data is not None:
            return data
        name = Path(p.source.split(":", 1)[-1].split("#")[0]).name
        if not name:
            return None
        for d in image_dirs:
            for cand in (d / p.device / name, d / name):
                if cand.is_file():
                    return cand.read_bytes()
        return None

    if images_dir is None and data_dir is None:
        raise ConfigError("with --store-url, give --images-dir (the fleet's uploaded images, its config's images.dir)")
    store = Store(store_url or data_dir / "fleet.db", create=False)  # type: ignore[operator]
    images = ImageStore(store, images_dir or data_dir / "images", 0, 0)  # type: ignore[operator]  # read only
    try:
        preds = list(store.predictions(release=release, group=group, since=since))
        revs = list(store.reviews(release=release, group=group))
        manifest = promote(preds, revs, fetch, out, "detect" if task == "detect" else "classify", policy=policy)
    finally:
        store.close()
    summary = {"out": str(out), "predictions": len(preds), "promoted": len(manifest.samples),
               "counts": manifest.counts, "left_out": manifest.left_out, "missing": len(manifest.missing)}
    emit(summary, as_json, lambda d: pairs([
        ("dataset", d["out"]), ("predictions read", d["predictions"]), ("promoted", d["promoted"]),
        ("per label", ", ".join(f"{k} {v}" for k, v in sorted(d["counts"].items()))),
        ("left out", ", ".join(f"{k} {v}" for k, v in sorted(d["left_out"].items()))),
        ("without an image", d["missing"])]))
    for m in manifest.missing:
        click.echo(f"missing {m['prediction_id']}: {m['reason']}", err=True)
