"""The fleet's control key: the ed25519 key that signs every desired state and command (fleet.protocol
sign_message), distinct from the bundle-signing keys. Given in fleet.yaml (`control_key`), or made on first start
in the data directory (`control.key`, 0600, with `control.pub` beside it for `fleet provision`)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.protocol import Command, Desired, sign_message
from runtime.errors import ConfigError
from runtime.fsio import atomic_write_bytes
from runtime.signing import TrustStore, generate_keys, key_id, load_private_key, public_pem

log = logging.getLogger(__name__)
CONTROL_KEY = "control"


def control_key_paths(data_dir: Path, control_key: Path | None) -> tuple[Path, Path]:
    """(private, public) key files: `control_key` and the .pub beside it, or data_dir/control.key and .pub."""
    priv = Path(control_key) if control_key is not None else Path(data_dir) / f"{CONTROL_KEY}.key"
    return priv, priv.with_suffix(".pub")


def ensure_control_key(data_dir: Path, control_key: Path | None = None) -> tuple[Ed25519PrivateKey, Path]:
    """Load the fleet's control key, making it in the data directory the first time; (key, its public key file).
    A configured `control_key` must exist (a fleet that silently made a new key would lock its devices out); its
    public half is written beside it when missing."""
    priv, pub = control_key_paths(data_dir, control_key)
    if not priv.exists():
        if control_key is not None:
            raise ConfigError(f"control_key: {priv} does not exist (make one with `shadowline keys generate "
                              f"--name control`, or leave control_key out to have one made in the data directory)")
        priv.parent.mkdir(parents=True, exist_ok=True)
        generate_keys(priv.parent, CONTROL_KEY)
        log.info("made the fleet's control key %s (devices trust %s)", priv, pub)
    elif priv.stat().st_mode & 0o077:
        log.warning("control key %s is readable by others (mode %o): chmod 600 it", priv, priv.stat().st_mode & 0o777)
    key = load_private_key(priv)
    if not pub.exists() or pub.read_bytes() != public_pem(key.public_key()):
        atomic_write_bytes(pub, public_pem(key.public_key()), mode=0o644)
    return key, pub


class ControlSigner:
    """Signs the fleet's control messages. `command_ttl_s`: how long a command stays valid (a device that was
    offline longer refuses it; the desired state, retained, still reaches it)."""

    def __init__(self, key: Ed25519PrivateKey, public_file: Path | None = None, command_ttl_s: float = 24 * 3600,
                 ) -> None:
        self.key, self.public_file, self.command_ttl_s = key, public_file, command_ttl_s
        self.key_id = key_id(key.public_key())

    @classmethod
    def for_fleet(cls, data_dir: Path, control_key: Path | None, trust: TrustStore | None,
                  command_ttl_s: float) -> ControlSigner:
        key, pub = ensure_control_key(data_dir, control_key)
        kid = key_id(key.public_key())
        if trust is not None and kid in trust.keys:
            raise ConfigError(f"control key {kid} is also a bundle-signing key in the trust store "
                              f"({trust.sources.get(kid)}): the fleet's control key must be its own")
        return cls(key, pub, command_ttl_s)

    def desired(self, msg: Desired) -> Desired:
        return sign_message(msg, self.key)

    def command(self, msg: Command, device: str) -> Command:
        """`msg` for `device`, expiring command_ttl_s after now, signed."""
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.command_ttl_s)
        return sign_message(msg.model_copy(update={"device": device,
                                                   "expires_at": expires.isoformat(timespec="milliseconds")}),
                            self.key)
