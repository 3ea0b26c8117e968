"""ed25519 signing of manifest.json and of JSON documents (the fleet's control messages: desired states and
commands), and the trust store of public keys devices and the fleet accept."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import ConfigError, SignatureError
from runtime.fsio import atomic_write_bytes

ALGORITHM = "ed25519"


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    """A public key as the PEM text of a *.pub file."""
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_keys(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write NAME.key (private, mode 0600) and NAME.pub into `directory`; refuse to overwrite a key."""
    directory = Path(directory)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if priv_path.exists() or pub_path.exists():
        raise ConfigError(f"{priv_path} or {pub_path} exists already; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = public_pem(key.public_key())
    atomic_write_bytes(priv_path, priv, mode=0o600)
    atomic_write_bytes(pub_path, pub, mode=0o644)
    return priv_path, pub_path, key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot load signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an ed25519 public key")
    return key


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of manifest.sig: JSON with the algorithm, key id and base64 signature."""
    sig = key.sign(manifest_bytes)
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "signature": base64.b64encode(sig).decode()}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def canonical_json(doc: Any) -> bytes:
    """The bytes a document's signature covers: JSON with sorted keys, no spaces, UTF-8, no NaN or Infinity. The
    same document parsed back from any JSON text gives the same bytes."""
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise SignatureError(f"document cannot be signed: {err}") from err


def sign_document(doc: Any, key: Ed25519PrivateKey) -> dict[str, str]:
    """A detached signature of `doc` (over canonical_json(doc)): algorithm, key id, base64 signature."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(canonical_json(doc))).decode()}


@dataclass
class TrustStore:
    """Public keys by key id. Built from a directory of *.pub files, or from files given one by one."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, *paths: Path | str) -> TrustStore:
        store = cls()
        for p in map(Path, paths):
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            if p.is_dir() and not files:
                raise ConfigError(f"trust store {p} holds no *.pub keys")
            if not p.exists():
                raise ConfigError(f"trust store {p} does not exist")
            for f in files:
                key = load_public_key(f)
                store.keys[key_id(key)] = key
                store.sources[key_id(key)] = str(f)
        return store

    def verify(self, manifest_bytes: bytes, signature_doc: bytes | None, where: str = "bundle") -> str:
        """Return the signer's key id, or raise SignatureError naming the key or the problem."""
        if signature_doc is None:
            raise SignatureError(f"{where}: unsigned (no manifest.sig) but a trust store is configured")
        try:
            doc = json.loads(signature_doc)
        except ValueError as err:
            raise SignatureError(f"{where}: manifest.sig is malformed ({err})") from err
        return self._check(manifest_bytes, doc, where, "manifest.sig", "manifest.json")

    def verify_document(self, doc: Any, signature: Any, where: str = "message") -> str:
        """Check a detached signature (sign_document) of `doc`; the signer's key id, or SignatureError naming the
        problem (unsigned, malformed, unknown key, mismatch)."""
        if signature is None:
            raise SignatureError(f"{where}: unsigned")
        return self._check(canonical_json(doc), signature, where, "signature", "the message")

    def _check(self, data: bytes, sig: Any, where: str, sig_name: str, data_name: str) -> str:
        try:
            kid, algo = sig["key_id"], sig["algorithm"]
            raw = base64.b64decode(sig["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as err:
            raise SignatureError(f"{where}: {sig_name} is malformed ({err})") from err
        if algo != ALGORITHM:
            raise SignatureError(f"{where}: {sig_name} uses {algo!r}, only {ALGORITHM} is accepted")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise SignatureError(f"{where}: signed by unknown key {kid}; trusted keys: {sorted(self.keys) or 'none'}")
        try:
            key.verify(raw, data)
        except InvalidSignature as err:
            raise SignatureError(f"{where}: signature of key {kid} does not match {data_name}") from err
        return kid
