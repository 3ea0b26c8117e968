"""`fleet provision DEVICE`: everything one device needs, in one directory, each file 0600: its broker password
(its user merged into the broker's credentials), the broker's CA (and a client certificate), a device token for
artifact downloads and the inspector sync (earlier tokens of the device revoked), the bundle-signing keys, the
fleet's control public key (fleet.pub: desired states and commands are signed with its private half), and a
device.yaml snippet naming them where they will live."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fleet.credentials import CredentialStore
from fleet.protocol import DEVICE_ID_RE, Topics
from fleet.security import TokenFile, Tokens, add_token, device_of
from fleet.tls import issue_device_cert
from runtime.errors import ConfigError
from runtime.fsio import atomic_write_bytes, atomic_write_text
from runtime.signing import load_public_key


def _private(dst: Path, data: bytes) -> Path:
    atomic_write_bytes(dst, data, mode=0o600)
    return dst


def _read(src: Path) -> bytes:
    try:
        return Path(src).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {src}: {err}") from err


def _broker_password(credentials_dir: Path, device: str, prefix: str, rotate: bool) -> str:
    store = CredentialStore(credentials_dir, Topics(prefix))
    if device in store.users and not rotate:
        password = store.users[device].password
    elif device in store.users or device in store.hashes:
        if device in store.hashes and device not in store.users and not rotate:
            raise ConfigError(f"broker user {device!r} exists in {store.passwd} but its password is not in "
                              f"{store.secrets_file}: pass --rotate to give it a new one")
        password = store.rotate(device).password
    else:
        password = store.add(device, "device").password
    store.save()
    return password


def _device_token(tokens_file: Path, device: str) -> str:
    """A new device token; earlier device tokens of this device are revoked (one token per device)."""
    kept = [e for e in Tokens.read(tokens_file) if device_of(e) != device]
    atomic_write_text(tokens_file, TokenFile(tokens=kept).model_dump_json(indent=2) + "\n", mode=0o600)
    return add_token(tokens_file, device, ["device"], device=device)


def provision_device(device: str, *, credentials_dir: Path, tokens_file: Path, broker_url: str, fleet_url: str,
                     out: Path, tls_dir: Path | None = None, client_cert: bool = False,
                     trust_store: Path | None = None, control_key: Path,
                     install_dir: str = "/etc/shadowline", prefix: str = "shadowline",
                     rotate: bool = False) -> list[Path]:
    """Write the device's files into `out` (created 0700); returns them."""
    if not DEVICE_ID_RE.match(device):
        raise ConfigError(f"invalid device id {device!r}: letters, digits, '.', '_' and '-', at most 64")
    if client_cert and tls_dir is None:
        raise ConfigError("--client-cert needs --tls-dir (the CA that signs it)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    inst = install_dir.rstrip("/")
    written = [_private(out / "broker-password", (_broker_password(credentials_dir, device, prefix, rotate) + "\n")
                        .encode())]
    token = _device_token(tokens_file, device)
    written.append(_private(out / "fleet-token", (token + "\n").encode()))
    fleet: dict = {"broker_url": broker_url, "prefix": prefix, "username": device,
                   "password_file": f"{inst}/broker-password", "releases_dir": "/var/lib/shadowline/data/releases",
                   "http_token": token}
    if tls_dir is not None:
        written.append(_private(out / "broker-ca.pem", _read(Path(tls_dir) / "ca.crt")))
        fleet["tls"] = {"ca_file": f"{inst}/broker-ca.pem"}
        if client_cert:
            crt, key = issue_device_cert(Path(tls_dir), device)
            written += [_private(out / "device.crt", _read(crt)), _private(out / "device.key", _read(key))]
            fleet["tls"].update(cert_file=f"{inst}/device.crt", key_file=f"{inst}/device.key")
    snippet: dict = {"device_id": device, "fleet": fleet,
                     "api": {"inspectors_file": "/var/lib/shadowline/data/inspectors.json",
                             "inspectors_sync_url": fleet_url.rstrip("/")}}
    if trust_store is not None:
        keys = sorted(Path(trust_store).glob("*.pub")) if Path(trust_store).is_dir() else [Path(trust_store)]
        if not keys:
            raise ConfigError(f"{trust_store}: no *.pub keys to trust")
        (out / "trust").mkdir(exist_ok=True)
        os.chmod(out / "trust", 0o700)
        written += [_private(out / "trust" / k.name, _read(k)) for k in keys]
        snippet["trust_store"] = fleet["trust_store"] = f"{inst}/trust"
    load_public_key(control_key)  # a private key or anything else here would lock the device out
    written.append(_private(out / "fleet.pub", _read(control_key)))
    fleet["fleet_keys"] = [f"{inst}/fleet.pub"]  # the agent acts only on desired states and commands it signed
    text = (f"# written by `shadowline fleet provision {device}`: merge into {inst}/device.yaml and copy the files\n"
            f"# of this directory to {inst}/ (mode 0600, owner of the daemon)\n" + yaml.safe_dump(snippet, sort_keys=False))
    written.append(_private(out / "device.yaml", text.encode()))
    return written
