"""`shadowline fleet`: run the fleet service, and admin commands that talk to its HTTP API."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from fleet import cli_output as show
from fleet.cli_output import emit, json_option
from runtime import errors
from runtime.errors import (
    AccessDenied,
    ConfigError,
    Conflict,
    NotFound,
    ServiceError,
    ShadowlineError,
    StoreError,
    TooLarge,
)

DEFAULT_URL = "http://127.0.0.1:8700"


# The fleet API could not be reached or failed: the ServiceError case itself, under the name this module uses.
ApiError = ServiceError


# a refusal becomes the domain error it stands for, so the exit code says what went wrong (docs/cli.md)
_BY_STATUS: dict[int, type[ShadowlineError]] = {400: ConfigError, 401: AccessDenied, 403: AccessDenied,
                                                 404: NotFound, 409: Conflict, 413: TooLarge, 422: ConfigError}


def _raise_for(resp: Any) -> None:
    if resp.status_code < 400:
        return
    kind = None
    try:
        body = resp.json()
        text = body.get("error") or body.get("detail") if isinstance(body, dict) else resp.text
        kind = body.get("type") if isinstance(body, dict) else None
    except ValueError:
        text = resp.text
    # the API names the domain error it raised (a tampered bundle is a BundleError, not any 422)
    named = getattr(errors, kind, None) if isinstance(kind, str) else None
    cls = named if isinstance(named, type) and issubclass(named, ShadowlineError) else \
        _BY_STATUS.get(resp.status_code, ApiError)
    raise cls(f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code}: {text}")


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        if not token:
            raise ConfigError("no API token: pass --token or set SHADOWLINE_FLEET_TOKEN")
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=120,
                                   headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, text: bool = False, **kw: Any) -> Any:
        """The JSON answer (or the text, with `text`) of one request; a refusal raises its domain error."""
        import httpx

        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise ApiError(f"cannot reach the fleet API at {self.client.base_url}: {err}") from err
        _raise_for(resp)
        return resp.text if text else resp.json()


def _api_options(f):
    f = click.option("--token", envvar="SHADOWLINE_FLEET_TOKEN", help="API token (env SHADOWLINE_FLEET_TOKEN).")(f)
    f = click.option("--url", envvar="SHADOWLINE_FLEET_URL", default=DEFAULT_URL, show_default=True,
                     help="Fleet API base URL (env SHADOWLINE_FLEET_URL).")(f)
    return f


@click.group("fleet")
def fleet_group() -> None:
    """The fleet service and its admin commands (bundles, releases, rollouts, devices)."""


@fleet_group.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), help="Fleet config YAML.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the store and artifacts live.")
@click.option("--broker-url", help="mqtt://host:port; without it an embedded broker runs on localhost.")
@click.option("--embedded-broker-port", type=int, help="Port of the embedded broker.")
@click.option("--host", "http_host", help="HTTP listen address.")
@click.option("--port", "http_port", type=int, help="HTTP port.")
@click.option("--public-url", help="Base URL devices use to download artifacts.")
@click.option("--trust-store", type=click.Path(path_type=Path), help="Directory of trusted signing keys (*.pub).")
@click.option("--tokens-file", type=click.Path(path_type=Path), help="API tokens file.")
@click.option("--client-id", help="MQTT client id (fixed so the broker keeps the session).")
@click.option("--broker-credentials-dir", type=click.Path(path_type=Path),
              help="passwd and acl for the embedded broker (from `fleet credentials add`).")
@click.option("--store-url", help="sqlite:///path or postgresql://user@host/db (default: SQLite in the data dir).")
def serve(config_path: Path | None, **overrides: Any) -> None:
    """Run the fleet service: MQTT ingest, rollout loop and the HTTP API, until interrupted."""
    import logging

    import uvicorn

    from fleet.api import create_app
    from fleet.config import load_config
    from fleet.service import FleetService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.ingest import tune_gc_for_ingest

    config = load_config(config_path, **overrides)
    tune_gc_for_ingest()
    service = FleetService(config).start()
    click.echo(f"fleet: broker {service.broker_url}, API http://{config.http_host}:{config.http_port}", err=True)
    try:
        uvicorn.run(create_app(service.fleet, lambda: service.ready), host=config.http_host,
                    port=config.http_port, log_level="warning")
    finally:
        service.stop()


@fleet_group.command("ingest-worker")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), help="Fleet config YAML.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory (its fleet.db, by default).")
@click.option("--store-url", help="sqlite:///path or postgresql://user@host/db (default: SQLite in the data dir).")
@click.option("--broker-url", help="mqtt://host:port of an MQTT 5 broker (Mosquitto 2, EMQX).")
@click.option("--client-id", help="Prefix of the worker's MQTT client id (<client-id>-ingest-<worker-id>).")
@click.option("--share-group", "ingest_share_group",
              help="MQTT 5 shared subscription group (default: ingest_share_group, else shadowline-ingest).")
@click.option("--decode-processes", "ingest_decode_processes", type=int,
              help="Processes decoding batches of predictions beside the worker, 0 for none (default: "
                   "ingest_decode_processes, 1).")
@click.option("--worker-id", default="1", show_default=True,
              help="Stable id of this worker: restarted with the same id, it gets back the messages it had not "
                   "acknowledged.")
def ingest_worker(config_path: Path | None, worker_id: str, **overrides: Any) -> None:
    """Ingest device records from the broker into the fleet store, sharing the record topics with other workers
    through an MQTT 5 shared subscription; each message is acknowledged only after its records are committed.
    Runs until SIGTERM or SIGINT, which finish the batch in hand."""
    import logging
    import signal
    import threading

    from fleet.config import load_config
    from fleet.ingest import tune_gc_for_ingest
    from fleet.ingest_worker import IngestWorker
    from fleet.store.engine import normalise_url, redact

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path, **overrides)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", worker_id):
        raise ConfigError(f"--worker-id {worker_id!r}: letters, digits, '_', '.', '-' (at most 40)")
    tune_gc_for_ingest()
    worker = IngestWorker(config, worker_id).start()
    click.echo(f"ingest worker {worker_id}: broker {config.broker_url}, store {redact(normalise_url(config.store))}, "
               f"share group {worker.group_name}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(60):
            log_stats = worker.ingest.stats.as_dict()
            logging.getLogger("fleet.ingest_worker").info("worker %s: %s", worker_id, log_stats)
    finally:
        worker.stop()


@fleet_group.command("migrate")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), help="Fleet config YAML.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory (its fleet.db, by default).")
@click.option("--store-url", help="sqlite:///path or postgresql://user@host/db (default: SQLite in the data dir).")
@click.option("--check", is_flag=True, help="Only print the schema revision and whether it is this version's.")
def migrate(config_path: Path | None, check: bool, **overrides: Any) -> None:
    """Create or upgrade the fleet store's schema (SQLite or PostgreSQL) to this version's, in one transaction;
    also upgrades a data directory made before schema versions. Prints the revision before and after as JSON."""
    import logging

    from fleet.config import load_config
    from fleet.store import engine as engines
    from fleet.store import migrate as migrations

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(config_path, **overrides)
    url = engines.normalise_url(config.store)
    engine = engines.create(url)
    try:
        head = migrations.head()
        if check:
            now = migrations.revision(engine)
            click.echo(json.dumps({"store": engines.redact(url), "revision": now, "head": head, "current": now == head}))
            if now != head:
                raise StoreError(f"the store's schema is at {now or 'nothing'}, this version's is {head}: "
                                 "run `shadowline fleet migrate`")
            return
        done = migrations.upgrade(engine)
    finally:
        engine.dispose()
    click.echo(json.dumps({"store": engines.redact(url), "before": done.before, "after": done.after,
                           "changed": done.changed}))


@fleet_group.group("token")
def token_group() -> None:
    """API bearer tokens for the admin API, inspectors and devices."""


@token_group.command("create")
@click.option("--tokens-file", type=click.Path(path_type=Path), required=True, help="Tokens file to add to.")
@click.option("--name", required=True, help="Who holds the token.")
@click.option("--role", "roles", multiple=True, required=True,
              type=click.Choice(["admin", "viewer", "inspector", "device"]), help="Role (repeatable).")
@click.option("--device", help="Device a device token is bound to (default: --name).")
@json_option
def token_create(tokens_file: Path, name: str, roles: tuple[str, ...], device: str | None, as_json: bool) -> None:
    """Create a token; it is printed once (alone on its line, for scripts), only its hash is stored. A device
    token is bound to its device."""
    from fleet.security import add_token, ensure_unique_name

    if "inspector" in roles:
        ensure_unique_name(tokens_file, name)  # the name is the inspector's identity on every verdict
    token = add_token(tokens_file, name, list(roles), device=device)
    emit({"name": name, "roles": sorted(set(roles)), "token": token}, as_json, lambda d: d["token"])


@token_group.command("revoke")
@json_option
@click.option("--tokens-file", type=click.Path(path_type=Path), required=True, help="Tokens file to change.")
@click.option("--name", required=True, help="Whose tokens to revoke (all tokens held by this name).")
def token_revoke(tokens_file: Path, name: str, as_json: bool) -> None:
    """Revoke a holder's tokens: the fleet API refuses them at once, devices at their next inspector sync."""
    from fleet.security import revoke_token

    n = revoke_token(tokens_file, name)
    emit({"revoked": n, "name": name}, as_json, lambda d: f"revoked {d['revoked']} token(s) of {d['name']}")


@fleet_group.group("bundle")
def bundle_group() -> None:
    """Bundles in the fleet registry: push (verified on arrival) and list."""


@bundle_group.command("push")
@_api_options
@json_option
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
def bundle_push(url: str, token: str | None, as_json: bool, bundle: Path) -> None:
    """Upload a signed bundle (.tar or directory); the fleet verifies hashes and signature before storing it."""
    import tarfile
    import tempfile

    api = Api(url, token)
    # the fleet names this in a refusal (never its own temporary upload file)
    sent = {"X-Bundle-Name": bundle.name if bundle.suffix == ".tar" else f"{bundle.name}.tar"}
    if bundle.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            tar_path = Path(tmp) / f"{bundle.name}.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(bundle, arcname=bundle.name)
            done = api.call("POST", "/api/bundles", content=tar_path.read_bytes(), headers=sent)
    else:
        done = api.call("POST", "/api/bundles", content=bundle.read_bytes(), headers=sent)
    emit(done, as_json, show.bundle)


@bundle_group.command("list")
@_api_options
@json_option
def bundle_list(url: str, token: str | None, as_json: bool) -> None:
    """List registered bundles."""
    emit(Api(url, token).call("GET", "/api/bundles"), as_json, show.bundles)


@fleet_group.group("release")
def release_group() -> None:
    """Releases: revisioned pipelines of bundles."""


@release_group.command("create")
@_api_options
@json_option
@click.argument("spec_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def release_create(url: str, token: str | None, as_json: bool, spec_file: Path) -> None:
    """Create a release from a YAML spec (name, mode, stages, actions); prints it with its revision. The spec is
    checked here first: every problem is printed as file:line: key.path: message."""
    from fleet.protocol import ReleaseSpec
    from runtime.yamlconf import parse_yaml_model, read_config_text

    spec = parse_yaml_model(read_config_text(spec_file, "release spec"), ReleaseSpec, str(spec_file))
    api = Api(url, token)
    try:
        made = api.call("POST", "/api/releases", json=spec.model_dump(mode="json", exclude_unset=True))
    except ShadowlineError as err:  # e.g. a bundle the registry does not have: name the file the admin sent
        raise type(err)(f"{spec_file}: refused by the fleet: {err}") from err
    emit(made, as_json, show.release)


@release_group.command("list")
@_api_options
@json_option
def release_list(url: str, token: str | None, as_json: bool) -> None:
    """List releases with their revisions."""
    emit(Api(url, token).call("GET", "/api/releases"), as_json, show.releases)


@fleet_group.group("rollout")
def rollout_group() -> None:
    """Staged rollouts of a release to a device group: start one, follow its waves and gates."""


@rollout_group.command("start")
@_api_options
@json_option
@click.argument("release")
@click.option("--group", required=True, help="Device group to target.")
@click.option("--waves", default="1,10%,50%,100%", show_default=True, help="Cumulative wave sizes.")
@click.option("--shadow-first", is_flag=True, help="Run the release as candidate beside production.")
@click.option("--gates", "gates_json", help='Gate settings as JSON, e.g. {"max_error_rate": 0.02}.')
def rollout_start(url: str, token: str | None, as_json: bool, release: str, group: str, waves: str,
                  shadow_first: bool, gates_json: str | None) -> None:
    """Start rolling RELEASE (name@revision) out to a group."""
    body: dict[str, Any] = {"release": release, "group": group, "waves": [w.strip() for w in waves.split(",")],
                            "shadow_first": shadow_first}
    if gates_json:
        try:
            body["gates"] = json.loads(gates_json)
        except ValueError as err:
            raise ConfigError(f"--gates: not JSON ({err})") from err
    emit(Api(url, token).call("POST", "/api/rollouts", json=body), as_json, show.rollout)


@rollout_group.command("status")
@_api_options
@json_option
@click.argument("rollout_id", required=False)
def rollout_status(url: str, token: str | None, as_json: bool, rollout_id: str | None) -> None:
    """Show one rollout (waves, gates, devices), or list all without an id."""
    api = Api(url, token)
    if rollout_id:
        emit(api.call("GET", f"/api/rollouts/{rollout_id}"), as_json, show.rollout)
    else:
        emit(api.call("GET", "/api/rollouts"), as_json, show.rollouts)


@rollout_group.command("halt")
@_api_options
@json_option
@click.argument("rollout_id")
@click.option("--reason", default="manual halt", show_default=True, help="Why it is halted (kept on the rollout).")
def rollout_halt(url: str, token: str | None, as_json: bool, rollout_id: str, reason: str) -> None:
    """Stop a running rollout from starting further waves; devices stay where they are until a rollback."""
    emit(Api(url, token).call("POST", f"/api/rollouts/{rollout_id}/halt", json={"reason": reason}), as_json,
         show.rollout)


@fleet_group.command("rollback")
@_api_options
@json_option
@click.argument("rollout_id")
def rollback(url: str, token: str | None, as_json: bool, rollout_id: str) -> None:
    """Return every device targeted by a rollout to its previous release."""
    emit(Api(url, token).call("POST", f"/api/rollouts/{rollout_id}/rollback"), as_json, show.rollout)


@fleet_group.group("devices", invoke_without_command=True)
@_api_options
@json_option
@click.option("--group", help="Only this group.")
@click.option("--tag", help="Only devices with this tag (key or key=value).")
@click.option("--set-groups", help="With --device: replace its groups (comma-separated).")
@click.option("--device", help="Device to change (registers it if new).")
@click.pass_context
def devices(ctx: click.Context, url: str, token: str | None, as_json: bool, group: str | None, tag: str | None,
            set_groups: str | None, device: str | None) -> None:
    """List devices (status, active release, groups, activation, last seen), or set a device's groups;
    `devices show DEVICE` gives one device in full."""
    if ctx.invoked_subcommand is not None:
        return
    api = Api(url, token)
    if device:
        if set_groups is None:
            raise ConfigError("--device needs --set-groups")
        emit(api.call("PUT", f"/api/devices/{device}", json={"groups": [g for g in set_groups.split(",") if g]}),
             as_json, lambda d: show.devices([d]))
        return
    params = {k: v for k, v in (("group", group), ("tag", tag)) if v}
    emit(api.call("GET", "/api/devices", params=params), as_json, show.devices)


@devices.command("show")
@_api_options
@json_option
@click.argument("device")
def device_show(url: str, token: str | None, as_json: bool, device: str) -> None:
    """One device in full: groups and tags, what it reported (releases, activation, versions, backends, hardware),
    what the fleet asked it to run, 24 h health, open alerts, latest capability record and recent errors."""
    emit(Api(url, token).call("GET", f"/api/devices/{device}"), as_json, show.device)


# registered last: fleet.cli_field uses the API helpers above
from fleet.cli_decisions import alerts_group, pillars, shadow_group  # noqa: E402
from fleet.cli_field import promote_data, tune  # noqa: E402

fleet_group.add_command(tune)
fleet_group.add_command(promote_data)
for _cmd in (shadow_group, alerts_group, pillars):
    fleet_group.add_command(_cmd)

from fleet.cli_security import (  # noqa: E402
    credentials_group,
    mosquitto_conf_cmd,
    provision_cmd,
    tls_group,
)

for _cmd in (credentials_group, tls_group, mosquitto_conf_cmd, provision_cmd):
    fleet_group.add_command(_cmd)

if __name__ == "__main__":
    sys.exit(fleet_group())
