"""`shadowline fleet credentials|tls|provision|mosquitto-conf`: provisioning an admin can follow. Every command
merges into what exists (other devices keep their passwords), writes files atomically with the permissions the
broker or the device needs, prints JSON, and reloads Mosquitto when told where its pid file is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fleet.cli_output import emit, json_option, pairs

PREFIX_HELP = "The fleet's MQTT topic prefix."


def _out(data: dict[str, Any], as_json: bool) -> None:
    """A summary of what was written (`--json`: the same as JSON)."""
    emit(data, as_json, lambda d: pairs(sorted(d.items())))


def _reload(pid_file: Path | None) -> int | None:
    from fleet.credentials import reload_mosquitto

    return reload_mosquitto(pid_file) if pid_file is not None else None


def _dir_option(f: Any) -> Any:
    return click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
                        help="Credentials directory (passwd, acl, credentials.json); the embedded broker's "
                             "broker_credentials_dir and Mosquitto's password_file/acl_file point here.")(f)


def _reload_option(f: Any) -> Any:
    return click.option("--reload-pid-file", type=click.Path(path_type=Path),
                        help="Mosquitto's pid_file: send it SIGHUP so it rereads passwd and acl (the embedded "
                             "broker rereads them by itself).")(f)


@click.group("credentials")
def credentials_group() -> None:
    """Broker users: add, rotate, revoke (merged into the existing passwd, acl and credentials.json)."""


@credentials_group.command("add")
@json_option
@_dir_option
@_reload_option
@click.option("--prefix", default="shadowline", show_default=True, help=PREFIX_HELP)
@click.option("--role", type=click.Choice(["device", "fleet"]), default="device", show_default=True,
              help="device: confined to its own subtree; fleet: a service user (the fleet, an ingest worker).")
@click.argument("users", nargs=-1, required=True)
def credentials_add(directory: Path, reload_pid_file: Path | None, prefix: str, role: str,
                    users: tuple[str, ...], as_json: bool) -> None:
    """Add broker users with fresh passwords (kept in credentials.json, 0600); existing users are untouched and
    an existing name is refused (rotate it instead)."""
    from fleet.credentials import CredentialStore
    from fleet.protocol import Topics

    store = CredentialStore(directory, Topics(prefix))
    for u in users:
        store.add(u, role)  # type: ignore[arg-type]
    store.save()
    _out({"added": list(users), "role": role, "directory": str(directory), "users": sorted(store.hashes),
          "reloaded_pid": _reload(reload_pid_file)}, as_json)


@credentials_group.command("rotate")
@json_option
@_dir_option
@_reload_option
@click.option("--prefix", default="shadowline", show_default=True, help=PREFIX_HELP)
@click.argument("users", nargs=-1, required=True)
def credentials_rotate(directory: Path, reload_pid_file: Path | None, prefix: str, users: tuple[str, ...], as_json: bool) -> None:
    """Give existing users new passwords; the old ones stop working at the reload."""
    from fleet.credentials import CredentialStore
    from fleet.protocol import Topics

    store = CredentialStore(directory, Topics(prefix))
    for u in users:
        store.rotate(u)
    store.save()
    _out({"rotated": list(users), "directory": str(directory), "reloaded_pid": _reload(reload_pid_file)}, as_json)


@credentials_group.command("revoke")
@json_option
@_dir_option
@_reload_option
@click.option("--prefix", default="shadowline", show_default=True, help=PREFIX_HELP)
@click.argument("users", nargs=-1, required=True)
def credentials_revoke(directory: Path, reload_pid_file: Path | None, prefix: str, users: tuple[str, ...], as_json: bool) -> None:
    """Remove users; the brokers disconnect them at the reload and refuse them from then on."""
    from fleet.credentials import CredentialStore
    from fleet.protocol import Topics

    store = CredentialStore(directory, Topics(prefix))
    for u in users:
        store.revoke(u)
    store.save()
    _out({"revoked": list(users), "directory": str(directory), "users": sorted(store.hashes),
          "reloaded_pid": _reload(reload_pid_file)}, as_json)


@click.group("tls")
def tls_group() -> None:
    """TLS material for the broker: a CA, the server certificate, device client certificates."""


@tls_group.command("init")
@json_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for ca.*, server.*, devices/.")
@click.option("--hostname", "hostnames", multiple=True, required=True,
              help="A name (or IP address) devices use to reach the broker (repeatable; the first is the CN).")
@click.option("--device", "devices", multiple=True, help="Also issue a client certificate for this device.")
@click.option("--days", type=int, default=825, show_default=True, help="Validity of the server certificate.")
@click.option("--group", default="mosquitto", show_default=True,
              help="Group that may read server.key (the broker's, after it drops root).")
def tls_init_cmd(out: Path, hostnames: tuple[str, ...], devices: tuple[str, ...], days: int, group: str, as_json: bool) -> None:
    """Make (or reuse) a CA and issue the broker's certificate; server.key is 0640 for the broker's group, CA
    and device keys 0600."""
    from fleet.tls import tls_init

    files = tls_init(out, list(hostnames), list(devices), days=days, group=group)
    _out({k: str(v) for k, v in files.items()}, as_json)


@click.command("mosquitto-conf")
@_dir_option
@click.option("--tls-dir", type=click.Path(path_type=Path), help="Directory from `fleet tls init`.")
@click.option("--port", type=int, default=8883, show_default=True, help="Port devices connect to.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address of that listener.")
@click.option("--local-port", type=int, default=1883, show_default=True,
              help="Plain listener on 127.0.0.1 for a fleet service on the same host (0: none).")
@click.option("--persistence-dir", type=click.Path(path_type=Path), default=Path("/var/lib/mosquitto"),
              show_default=True, help="Where Mosquitto keeps sessions and queued messages.")
@click.option("--pid-file", type=click.Path(path_type=Path), default=Path("/run/mosquitto/mosquitto.pid"),
              show_default=True, help="Mosquitto's pid file (for --reload-pid-file).")
def mosquitto_conf_cmd(directory: Path, tls_dir: Path | None, port: int, bind: str, local_port: int,
                       persistence_dir: Path, pid_file: Path) -> None:
    """Print a mosquitto.conf with the embedded broker's rules: passwords, the ACL, client id = user, TLS."""
    from fleet.mosquitto import mosquitto_conf

    click.echo(mosquitto_conf(directory, tls_dir, port=port, bind=bind, local_port=local_port or None,
                              persistence_dir=persistence_dir, pid_file=pid_file), nl=False)


@click.command("provision")
@json_option
@click.argument("device")
@click.option("--credentials-dir", type=click.Path(path_type=Path), required=True,
              help="The broker credentials directory (the device's user is added there if new).")
@click.option("--tokens-file", type=click.Path(path_type=Path), required=True,
              help="The fleet's API tokens file (a device token is added; earlier ones of this device revoked).")
@click.option("--broker-url", required=True, help="How the device reaches the broker, e.g. mqtts://fleet:8883.")
@click.option("--fleet-url", required=True, help="How the device reaches the fleet API (inspector sync).")
@click.option("--tls-dir", type=click.Path(path_type=Path), help="From `fleet tls init`: the CA goes to the device.")
@click.option("--client-cert", is_flag=True, help="Also issue a client certificate (mutual TLS).")
@click.option("--trust-store", type=click.Path(path_type=Path, exists=True),
              help="Bundle-signing public keys (*.pub) the device must trust.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The fleet's config (fleet.yaml): the device gets its control public key (made in the data "
                   "directory if the fleet has not started yet).")
@click.option("--control-key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The fleet's control public key (*.pub) instead of --config.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the device's files.")
@click.option("--install-dir", default="/etc/shadowline", show_default=True,
              help="Where the files will live on the device (paths in the config snippet).")
@click.option("--prefix", default="shadowline", show_default=True, help=PREFIX_HELP)
@click.option("--rotate", is_flag=True, help="Give an existing device user a new password.")
@_reload_option
def provision_cmd(device: str, credentials_dir: Path, tokens_file: Path, broker_url: str, fleet_url: str,
                  tls_dir: Path | None, client_cert: bool, trust_store: Path | None, config_path: Path | None,
                  control_key: Path | None,
                  out: Path, install_dir: str, prefix: str, rotate: bool, reload_pid_file: Path | None, as_json: bool) -> None:
    """Everything DEVICE needs in one step, files 0600: broker password, CA, device token, trust store, the
    fleet's control public key (desired states and commands are signed with it) and a device.yaml snippet; its
    broker user is merged into the credentials."""
    from fleet.provision import provision_device

    if control_key is None:
        if config_path is None:
            raise click.UsageError("give --config (the fleet's fleet.yaml) or --control-key (its control public "
                                   "key): the device acts only on desired states and commands signed by it")
        from fleet.config import load_config
        from fleet.control import ensure_control_key

        cfg = load_config(config_path)
        control_key = ensure_control_key(cfg.data_dir, cfg.control_key)[1]
    written = provision_device(device, credentials_dir=credentials_dir, tokens_file=tokens_file,
                               broker_url=broker_url, fleet_url=fleet_url, tls_dir=tls_dir, client_cert=client_cert,
                               trust_store=trust_store, control_key=control_key, out=out, install_dir=install_dir,
                               prefix=prefix, rotate=rotate)
    _out({"device": device, "files": [str(p) for p in written], "reloaded_pid": _reload(reload_pid_file)}, as_json)
