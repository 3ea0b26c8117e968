"""`shadowline export tensorrt BUNDLE`: build (or fetch from the cache) a checked TensorRT engine on this device."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("tensorrt")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto", show_default=True,
              help="auto = fp16 where this TensorRT can build it (10.x: FP16 flag; 11.x: needs model.fp16.onnx)")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="engine cache directory (default $SHADOWLINE_ENGINE_CACHE or ~/.cache/shadowline/engines)")
@click.option("--workspace-mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="builder workspace memory limit in MiB")
@click.option("--max-batch", type=click.IntRange(min=1), help="largest batch of the profile (default: manifest's)")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="timing cache file, reused and updated (default: one per GPU inside the cache dir)")
@click.option("--cache-max-mb", type=click.IntRange(min=1),
              help="evict least recently used engines beyond this many MiB (default: no limit)")
@click.option("--trust-store", type=click.Path(path_type=Path), help="directory of trusted *.pub keys")
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device index")
@click.option("--rebuild", is_flag=True, help="ignore a cached engine and build again")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--quiet", is_flag=True, help="no progress on stderr")
def tensorrt_command(bundle: Path, precision: str, cache_dir: Path | None, workspace_mb: int, max_batch: int | None,
                     timing_cache: Path | None, cache_max_mb: int | None, trust_store: Path | None, device: int,
                     rebuild: bool, as_json: bool, quiet: bool) -> None:
    """Build a TensorRT engine for BUNDLE on this device, check it against the bundle's reference.npz, and keep
    it in the engine cache (a cached engine with the same key is reused). Needs TensorRT and pycuda."""
    from runtime.bundle import load_bundle
    from runtime.loaders.tensorrt.builder import BuildSettings
    from runtime.loaders.tensorrt.cache import EngineCache, default_cache_dir
    from runtime.loaders.tensorrt.prepare import prepare_engine
    from runtime.signing import TrustStore

    settings = BuildSettings(precision=precision, workspace_mb=workspace_mb, max_batch=max_batch,
                             timing_cache=timing_cache)
    cache = EngineCache(cache_dir or default_cache_dir(),
                        max_bytes=cache_max_mb << 20 if cache_max_mb else None)
    store = TrustStore.load(trust_store) if trust_store else None
    progress = (lambda _m: None) if (quiet or as_json) else (lambda m: click.echo(m, err=True))
    with load_bundle(bundle, store) as b:
        prepared = prepare_engine(b, cache, settings, device, progress, rebuild=rebuild)
    if as_json:
        click.echo(json.dumps(prepared.summary(), indent=2, default=str))
        return
    how = "from cache" if prepared.cache_hit else f"built in {prepared.build_seconds:.1f} s, parity passed"
    click.echo(f"engine {prepared.path} ({prepared.plan.precision}, TensorRT {prepared.key.trt_version}, "
               f"sm {prepared.key.compute_capability}, {prepared.key.platform}, batch {prepared.profile.batch}) {how}")
