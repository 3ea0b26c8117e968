"""What the agent acts on: only desired states and commands the fleet signed with a control key this device
trusts (`fleet.fleet_keys`), for this device, at a revision it has not handled yet, and commands not expired and
not seen before. Everything else is refused, counted, and reported to the fleet as a `control.refused` event; a
refused message never touches the activation record (the handled revision), whichever broker carried it."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge.agent.config import AgentConfig
from fleet.protocol import Command, Desired, verify_message
from runtime.errors import ConfigError, SignatureError
from runtime.signing import TrustStore

log = logging.getLogger(__name__)

# refusal reasons (the `reason` of a control.refused event, what the fleet counts per device)
UNSIGNED, BAD_SIGNATURE, WRONG_DEVICE, STALE, REPLAY, EXPIRED = (
    "unsigned", "bad_signature", "wrong_device", "stale_revision", "replayed_command", "expired_command")


@dataclass
class Refused(Exception):
    reason: str
    error: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.error}"


def _parse_time(text: str | None, what: str) -> datetime:
    try:
        at = datetime.fromisoformat(str(text))
    except ValueError as err:
        raise Refused(EXPIRED, f"{what} {text!r} is not an ISO 8601 time") from err
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


class ControlGuard:
    """Checks control messages for one device. `check_*` (signature, device, expiry: stateless) may run on paho's
    thread; `fresh_nonce` (replay) runs on the agent's worker, which persists the nonces it has seen in
    `{releases_dir}/agent.db` until they expire, so a restart does not reopen the window."""

    def __init__(self, config: AgentConfig, device_id: str) -> None:
        self.device_id = device_id
        self.trust: TrustStore | None = None
        if config.fleet_keys:
            self.trust = TrustStore.load(*config.fleet_keys)
        elif not config.allow_unsigned_control:
            raise ConfigError("fleet.fleet_keys: no fleet control key configured, so the agent would obey anyone "
                              "who can publish on the broker; give the fleet's public key (`shadowline fleet "
                              "provision` writes fleet.pub), or set fleet.allow_unsigned_control: true to accept "
                              "unsigned desired states and commands")
        else:
            log.warning("%s: fleet.allow_unsigned_control is set and no fleet_keys are configured: desired states "
                        "and commands are NOT verified; anyone who can publish on the broker controls this device",
                        device_id)
        self.db = Path(config.releases_dir) / "agent.db"

    @property
    def verifying(self) -> bool:
        return self.trust is not None

    def _signature(self, topic: str, payload: bytes) -> str | None:
        if self.trust is None:
            return None
        try:
            return verify_message(topic, payload, self.trust)
        except SignatureError as err:
            text = str(err)
            raise Refused(UNSIGNED if text.endswith(": unsigned") else BAD_SIGNATURE, text) from err

    def check_desired(self, topic: str, payload: bytes, desired: Desired) -> str | None:
        """The signer's key id (None when not verifying), or Refused."""
        kid = self._signature(topic, payload)
        if desired.device != self.device_id:
            raise Refused(WRONG_DEVICE, f"{topic}: desired state for {desired.device!r}")
        return kid

    def check_command(self, topic: str, payload: bytes, cmd: Command, now: datetime | None = None) -> str | None:
        kid = self._signature(topic, payload)
        if self.trust is None:
            return kid
        if cmd.device != self.device_id:
            raise Refused(WRONG_DEVICE, f"{topic}: command {cmd.id} for {cmd.device!r}")
        if cmd.expires_at is None:
            raise Refused(EXPIRED, f"{topic}: command {cmd.id} has no expires_at")
        now = now or datetime.now(timezone.utc)
        expires = _parse_time(cmd.expires_at, "expires_at")
        if expires <= now:
            raise Refused(EXPIRED, f"{topic}: command {cmd.id} expired at {cmd.expires_at}")
        return kid

    def fresh_nonce(self, cmd: Command) -> None:
        """Remember the command's nonce until it expires; Refused if it was seen before (a replay)."""
        if self.trust is None or cmd.expires_at is None:
            return
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        expires = _parse_time(cmd.expires_at, "expires_at").astimezone(timezone.utc).isoformat(timespec="milliseconds")
        self.db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.db), timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS control_nonces (nonce TEXT PRIMARY KEY, expires_at TEXT NOT NULL)")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM control_nonces WHERE expires_at <= ?", (now,))
            try:
                conn.execute("INSERT INTO control_nonces (nonce, expires_at) VALUES (?, ?)", (cmd.nonce, expires))
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                raise Refused(REPLAY, f"command {cmd.id}: nonce {cmd.nonce} was used before (replay)") from None
            conn.execute("COMMIT")
        finally:
            conn.close()
