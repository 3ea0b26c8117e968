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
    from runtime.bundle import load_bundle
    from runtime.errors import ImageError
    from runtime.predictor import BundleModel
    from runtime.processing.image import read_image
    from runtime.signing import TrustStore

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


@edge_group.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="device config YAML (see docs/daemon.md)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="log verbosity")
def run_command(config_path: Path, log_level: str) -> None:
    """Run the edge daemon: sources -> two-stage pipeline -> store, actions, local API and review page. Stops
    cleanly on SIGTERM/SIGINT after the frame in flight."""
    import gc

    # Start-up allocates about 100,000 objects that live as long as the process (modules, classes, pydantic's
    # schemas): the cyclic collector's passes over them (133 young, 12 middle and 1 full collection) took 30 to 40 ms
    # of a 300 ms start. Off until the daemon runs; Daemon.run collects once and turns it back on.
    gc.disable()
    import logging
    import os

    # numpy's OpenBLAS starts a thread per core at import, which then spins (40 ms of CPU at start, competing with
    # the start's threads on a 2-core device); nothing in the daemon calls BLAS (ONNX Runtime has its own kernels).
    # Before numpy is imported; an explicit setting in the environment is kept.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # pydantic looks for plugins by scanning every installed distribution's entry points when the first model is
    # built (9 ms of CPU at start here, more in a system Python with hundreds of packages); the daemon uses none.
    # A setting in the environment is kept: PYDANTIC_DISABLE_PLUGINS= (empty) loads them as usual.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

    from edge.config import load_config
    from edge.daemon import Daemon
    from runtime.errors import ShadowlineError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path)
        Daemon(cfg).run()
    except ShadowlineError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from err


@edge_group.command("validate-config")
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--bundles/--no-bundles", "check_bundles", default=True, show_default=True,
              help="also verify the release's bundles and load its models (class names, thresholds, signatures)")
def validate_config_command(config_path: Path, check_bundles: bool) -> None:
    """Check a device config file and exit: every problem is printed as file:line: key.path: message."""
    from edge.config import load_config
    from runtime.errors import ShadowlineError

    try:
        cfg = load_config(config_path)
        from edge.config import CaptureSource
        from edge.sources.capture import check_source

        for src in cfg.sources:  # e.g. the Jetson's nvv4l2decoder missing: said now, not at the first frame
            if isinstance(src, CaptureSource):
                check_source(src)
        if check_bundles and cfg.release is not None:
            from edge.daemon import build_local_pipeline

            build_local_pipeline(cfg).close()
    except ShadowlineError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(err.exit_code) from err
    rel = cfg.release
    click.echo(f"{config_path}: OK (device {cfg.device_id}"
               + (f", release {rel.ref} {rel.mode}, {len(rel.stages)} stage(s)" if rel else "")
               + (f", candidate {rel.candidate.ref}" if rel and rel.candidate else "")
               + (", fleet agent" if cfg.fleet else "") + (", bundles verified" if check_bundles and rel else "")
               + ")")
