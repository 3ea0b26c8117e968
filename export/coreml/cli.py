"""`shadowline export coreml-inspect BUNDLE`: what an iOS developer gets from a bundle's Core ML package."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _packages(files: dict) -> list[str]:
    return sorted({name.split("/")[0] + "/" + name.split("/")[1] for name in files
                   if name.startswith("coreml/") and name.split("/")[1].endswith(".mlpackage")})


def inspect_bundle(bundle: Path, trust_store: Path | None = None) -> dict:
    """Inputs, outputs, labels, metadata and recorded parity of every Core ML package in a verified bundle, and
    whether the package's metadata (author, licence, version, labels, thresholds, ...) still says what the signed
    manifest says."""
    from export.coreml.describe import check_metadata, class_labels
    from export.coreml.executor import load_package
    from export.coreml.package import _features
    from runtime.bundle import load_bundle
    from runtime.errors import BundleError
    from runtime.signing import TrustStore

    store = TrustStore.load(trust_store) if trust_store else None
    with load_bundle(bundle, store) as b:
        m = b.manifest
        packages = _packages(m.files)
        if not packages:
            raise BundleError(f"{bundle}: no Core ML package (export with --coreml)")
        result: dict = {"bundle": m.bundle_id, "signer": b.signer, "packages": []}
        for rel in packages:
            package = load_package(b.root / rel)
            spec = package.spec
            meta = spec.description.metadata
            nms = package.stages[-1].nms
            metadata = check_metadata(spec, m)[0]
            result["packages"].append({
                "path": rel, "inputs": _features(spec.description.input),
                "outputs": _features(spec.description.output),
                "stages": package.stage_names,
                "labels": class_labels(package.network.program) or (nms.labels if nms else None) or m.labels,
                "metadata_check": {"passed": metadata.passed, "detail": metadata.detail},
                "metadata": {"author": meta.author, "license": meta.license,
                             "description": meta.shortDescription, "version": meta.versionString,
                             **dict(meta.userDefined)},
                "parity": [c.model_dump(mode="json") for c in m.parity if c.kind == "coreml" and c.artifact == rel],
            })
        result["extras"] = m.extras.get("coreml", {})
        return result


@click.command("coreml-inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trust-store", type=click.Path(path_type=Path), help="directory of trusted *.pub keys")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
def coreml_inspect_command(bundle: Path, trust_store: Path | None, as_json: bool) -> None:
    """Verify BUNDLE and print its Core ML package: inputs, outputs, labels, metadata and the parity recorded at
    export."""
    from runtime.errors import BundleError

    info = inspect_bundle(bundle, trust_store)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print(info)
    bad = [p["path"] for p in info["packages"] if not p["metadata_check"]["passed"]]
    if bad:
        raise BundleError(f"{bundle}: the metadata of {', '.join(bad)} does not match the signed manifest: "
                          + "; ".join(p["metadata_check"]["detail"] for p in info["packages"] if p["path"] in bad))


def _print(info: dict) -> None:
    click.echo(f"{info['bundle']}  signer={info['signer'] or 'not checked'}")
    for p in info["packages"]:
        click.echo(f"package {p['path']} ({' -> '.join(p['stages'])})")
        for f in p["inputs"]:
            extra = f"{f['width']}x{f['height']} {f['color']}" if f["type"] == "imageType" else ""
            click.echo(f"  input  {f['name']}: {f['type']} {extra}  {f['description']}")
        for f in p["outputs"]:
            extra = f"{f['shape']} {f['dtype']}" if f["type"] == "multiArrayType" else ""
            click.echo(f"  output {f['name']}: {f['type']} {extra}  {f['description']}")
        labels = p["labels"]
        shown = ", ".join(labels[:10]) + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")
        click.echo(f"  labels {shown}")
        for k, v in p["metadata"].items():
            text = v if len(str(v)) <= 100 else str(v)[:97] + "..."
            click.echo(f"  meta   {k}: {text}")
        check = p["metadata_check"]
        click.echo(f"  check  metadata vs manifest: {'pass' if check['passed'] else 'FAIL'} ({check['detail']})")
        for c in p["parity"]:
            click.echo(f"  parity {c['precision']} {c['level']}: {'pass' if c['passed'] else 'FAIL'} "
                       f"{json.dumps(c['stats'])}" + (f"  {c['detail']}" if c["detail"] else ""))
