"""`shadowline hwbench BUNDLE`: measure a bundle on this device's hardware and judge it against use-case targets."""

from __future__ import annotations

import os
from pathlib import Path

import click


def _csv(kind: type):
    def convert(_ctx, _param, value: str | None):
        if not value:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError as err:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from err
    return convert


@click.command("hwbench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trust-store", type=click.Path(path_type=Path), help="refuse the bundle unless signed by these keys")
@click.option("--backends", callback=_csv(str), help="comma-separated backends (default: every known backend; "
              "those that cannot run here are listed with the reason)")
@click.option("--precisions", callback=_csv(str), help="comma-separated: fp32,fp16 (default both)")
@click.option("--batch-sizes", callback=_csv(int), help="comma-separated batch sizes inside the manifest's range "
              "(default: min, opt and max of the range)")
@click.option("--warmup", default=3, show_default=True, help="calls excluded before timing")
@click.option("--iterations", default=20, show_default=True, help="timed calls at least per configuration")
@click.option("--max-iterations", default=1000, show_default=True, help="timed calls at most per configuration")
@click.option("--seconds", default=2.0, show_default=True, help="time each configuration at least this long")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
@click.option("--targets", "targets_file", type=click.Path(path_type=Path),
              help="YAML file of use-case targets (default: hwbench/targets.yaml: real-time line, batch review, "
              "drone, mobile, Jetson)")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="folder of real images: measure pre/post-processing and judge whole frames, not inference alone")
@click.option("--engine-cache", type=click.Path(path_type=Path), envvar="SHADOWLINE_ENGINE_CACHE",
              help="TensorRT engine cache directory (env SHADOWLINE_ENGINE_CACHE)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="directory for hwbench-BUNDLE.json, .md and .png")
@click.option("--publish", is_flag=True, help="send the summary to the fleet as this device's capability record")
@click.option("--broker", envvar="SHADOWLINE_BROKER_URL", help="mqtt://host:port (env SHADOWLINE_BROKER_URL)")
@click.option("--device-id", envvar="SHADOWLINE_DEVICE_ID", help="this device's id (env SHADOWLINE_DEVICE_ID)")
@click.option("--prefix", default="shadowline", show_default=True, help="the fleet's MQTT topic prefix")
@click.option("--username", envvar="SHADOWLINE_MQTT_USERNAME", help="broker user (default: the device id)")
@click.option("--password-file", type=click.Path(path_type=Path),
              help="file holding the broker password (or env SHADOWLINE_MQTT_PASSWORD)")
@click.option("--ca-file", type=click.Path(path_type=Path), help="broker CA certificate (mqtts)")
@click.option("--quiet", is_flag=True, help="no progress lines")
def hwbench_command(bundle: Path, trust_store: Path | None, backends: list[str] | None, precisions: list[str] | None,
                    batch_sizes: list[int] | None, warmup: int, iterations: int, max_iterations: int, seconds: float,
                    threads: int | None, targets_file: Path | None, images_dir: Path | None, engine_cache: Path | None, out_dir: Path,
                    publish: bool, broker: str | None, device_id: str | None, prefix: str, username: str | None,
                    password_file: Path | None, ca_file: Path | None, quiet: bool) -> None:
    """Measure BUNDLE on every backend, precision and batch size this device can run: load and engine-build time,
    latency (avg, P50, P95, P99, max; warm-up excluded), throughput, peak memory, power on a Jetson. Writes JSON,
    Markdown and a latency histogram, prints the verdict against the use-case targets, and with --publish sends
    the summary to the fleet."""
    from hwbench.bench import BenchOptions
    from hwbench.processing import list_images
    from hwbench.publish import PublishTarget
    from hwbench.publish import publish as send
    from hwbench.report import capability_summary, write
    from hwbench.run import benchmark
    from hwbench.verdict import load_targets
    from runtime.bundle import load_bundle
    from runtime.errors import ConfigError
    from runtime.signing import TrustStore

    targets = load_targets(targets_file)
    images = list_images(images_dir) if images_dir is not None else None
    target = None
    if publish:
        if not broker or not device_id:
            raise ConfigError("--publish needs --broker and --device-id (or SHADOWLINE_BROKER_URL and "
                              "SHADOWLINE_DEVICE_ID)")
        password = os.environ.get("SHADOWLINE_MQTT_PASSWORD")
        if password_file is not None:
            try:
                password = password_file.read_text().strip()
            except OSError as err:
                raise ConfigError(f"--password-file {password_file}: {err.strerror}") from err
        target = PublishTarget(broker_url=broker, device_id=device_id, prefix=prefix, username=username,
                               password=password, ca_file=ca_file)
    try:
        options = BenchOptions(warmup=warmup, min_iterations=iterations, max_iterations=max(iterations, max_iterations),
                               min_seconds=seconds, threads=threads)
    except ValueError as err:
        raise ConfigError(f"invalid benchmark option: {err}") from err
    store = TrustStore.load(trust_store) if trust_store else None
    echo = None if quiet else (lambda line: click.echo(line, err=True))
    with load_bundle(bundle, store) as b:
        report = benchmark(b, options, targets, backends, precisions, batch_sizes, engine_cache, echo, images)
    paths = write(report, out_dir)
    for v in report.verdicts:
        value = "-" if v.value is None else f"{v.value:g} {v.unit}"
        click.echo(f"{v.target:18s} {v.status.upper():7s} {v.requirement:40s} {value:>16s}  {v.best_config or ''}")
    click.echo(f"report: {paths['json']}  {paths['markdown']}  {paths['png']}")
    if target is not None:
        record_id = send(target, capability_summary(report))
        click.echo(f"published capability record {record_id} for device {target.device_id}")
    if not report.ok():
        from runtime.errors import BackendUnavailable

        raise BackendUnavailable("no configuration could be measured on this device (see the report's 'Not measured')")
