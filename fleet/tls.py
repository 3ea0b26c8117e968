"""TLS material for a fleet's broker: a CA, a server certificate for the broker's host names, and client
certificates for devices (mutual TLS, optional). Files are written with the permissions the broker needs after it
drops root: the server key is 0640 and belongs to the broker's group; the CA key and device keys are 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.credentials import BROKER_GROUP, share_with_broker
from runtime.errors import ConfigError
from runtime.fsio import atomic_write_bytes

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec


def _name(cn: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    crt, key = directory / "ca.crt", directory / "ca.key"
    if not crt.exists() and not key.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{directory}: cannot load the existing CA (ca.crt, ca.key): {err}") from err
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key}: not an EC private key")
    return cert, private


def _issue(ca: x509.Certificate | None, ca_key: ec.EllipticCurvePrivateKey | None, subject: str, days: int, *,
           is_ca: bool = False, server_names: list[str] | None = None,
           client: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = ca_key or key
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(ca.subject if ca is not None else _name(subject)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True))
    if is_ca:
        builder = (builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
    if server_names:
        san: list[x509.GeneralName] = []
        for n in server_names:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                san.append(x509.DNSName(n))
        builder = (builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def tls_init(directory: Path, hostnames: list[str], devices: list[str] | None = None, days: int = 825,
             group: str = BROKER_GROUP, ca_name: str = "shadowline fleet CA") -> dict[str, Path]:
    """Write (or reuse) `ca.crt`/`ca.key`, a new `server.crt`/`server.key` for `hostnames`, and
    `devices/<id>.crt`/`.key` for each device. An existing CA is kept, so certificates issued before stay valid."""
    if not hostnames:
        raise ConfigError("tls init needs at least one host name of the broker (--hostname)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {"ca": directory / "ca.crt", "ca_key": directory / "ca.key",
                            "cert": directory / "server.crt", "key": directory / "server.key"}
    loaded = _load_ca(directory)
    if loaded is None:
        ca, ca_key = _issue(None, None, ca_name, days * 4, is_ca=True)
        atomic_write_bytes(out["ca_key"], _key_pem(ca_key), mode=0o600)
        atomic_write_bytes(out["ca"], _cert_pem(ca), mode=0o644)
    else:
        ca, ca_key = loaded
    cert, key = _issue(ca, ca_key, hostnames[0], days, server_names=hostnames)
    atomic_write_bytes(out["cert"], _cert_pem(cert), mode=0o644)
    atomic_write_bytes(out["key"], _key_pem(key), mode=0o640)
    # Mosquitto reads its key after dropping root to the `mosquitto` user: root-only would stop it starting
    share_with_broker(out["key"], 0o640, group)
    for dev in devices or []:
        out[f"device:{dev}"], _ = issue_device_cert(directory, dev, days)
    return out


def issue_device_cert(directory: Path, device: str, days: int = 825) -> tuple[Path, Path]:
    """A client certificate for `device` signed by the CA in `directory` (made by `tls_init`):
    devices/<id>.crt and .key (0600)."""
    loaded = _load_ca(Path(directory))
    if loaded is None:
        raise ConfigError(f"{directory}: no CA (ca.crt, ca.key); run `shadowline fleet tls init` first")
    cert, key = _issue(loaded[0], loaded[1], device, days, client=True)
    crt_path, key_path = Path(directory) / "devices" / f"{device}.crt", Path(directory) / "devices" / f"{device}.key"
    atomic_write_bytes(crt_path, _cert_pem(cert), mode=0o644)
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    return crt_path, key_path


def make_tls(directory: Path, hostname: str = "localhost", days: int = 30) -> dict[str, Path]:
    """A CA and a server certificate for `hostname` and 127.0.0.1 (tests and small sites): ca.crt, server.crt,
    server.key in `directory`."""
    return tls_init(directory, [hostname, "127.0.0.1"], days=days, ca_name="shadowline test CA")
