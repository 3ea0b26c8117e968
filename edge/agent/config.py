"""The `fleet:` section of the device config: how the agent reaches the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.mqtt import MqttSettings, TLSSettings, checked_url, parse_url


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker_url: str = Field(description="mqtt://host:port or mqtts://host:port")
    prefix: str = Field("shadowline", description="the fleet's topic prefix")
    username: str | None = Field(None, description="this device's broker user (defaults to the device id)")
    password: str | None = Field(None, description="this device's broker password")
    password_file: Path | None = Field(None, description="file holding the password (preferred over password)")
    tls: TLSSettings | None = Field(None, description="TLS options for mqtts:// (unset: the system's CAs)")
    trust_store: Path | None = Field(None, description="directory of public keys bundles must be signed by")
    fleet_keys: list[Path] = Field(default_factory=list, description="the fleet's control public key(s) (`fleet "
                                    "provision` writes fleet.pub): a *.pub file or a directory of them, or a list "
                                    "(key rotation: trust the old and the new key until every device has both). "
                                    "Desired states and commands must be signed by one of them")
    allow_unsigned_control: bool = Field(False, description="start the agent without fleet_keys and act on "
                                         "unsigned desired states and commands (anyone who can publish on the "
                                         "broker then controls the device; logged as a warning). Ignored when "
                                         "fleet_keys is set")
    http_token: str | None = Field(None, description="device token for artifact downloads")
    releases_dir: Path = Field(Path("releases"), description="where downloaded bundles and releases are kept")
    keep_releases: int = Field(3, ge=1, description="releases kept on disk, ready, for rollback without download")
    batch_size: int = Field(200, ge=1, le=5000, description="records per outbox MQTT message")
    outbox_budget_mb: float = Field(512.0, gt=0, description="disk budget of the outbox; see overflow policy")
    outbox_fleet_acks: bool = Field(True, description="delete an outbox row only when the fleet acknowledges it "
                                    "committed (its `acks` topic), not on the broker's PUBACK; false for a fleet "
                                    "older than acks, which never sends them")
    outbox_ack_timeout_s: float = Field(30.0, gt=0, description="rows the broker acknowledged but the fleet did not "
                                        "within this are sent again (and all of them after a reconnection)")
    latency_budget_ms: float | None = Field(None, description="activation check: max median latency per frame")
    reconnect_min_s: float = Field(0.5, gt=0, description="first reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest delay between reconnect attempts")
    mqtt_version: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version spoken to the broker")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0,
                                  description="MQTT 5: how long the broker keeps this device's session offline")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive; the last will fires after about 1.5x this")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        "auto", description="runtime for the activation check; auto = TensorRT where installed, else ONNX Runtime")
    smoke_images: int = Field(4, ge=0, description="recent images run through a new release before activation")
    download_timeout_s: float = Field(30.0, gt=0, description="HTTP timeout per artifact request")
    publish_interval_s: float = Field(0.2, gt=0, description="outbox poll interval when it was found empty")
    report_interval_s: float = Field(60.0, gt=0, description="periodic reported-state refresh")

    @field_validator("fleet_keys", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, (str, Path)) else v

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        return checked_url(v)

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> AgentConfig:
        if self.tls is not None and not parse_url(self.broker_url)[2]:
            raise ValueError(f"tls is set but broker_url {self.broker_url} is not mqtts://")
        return self

    def mqtt(self, client_id: str) -> MqttSettings:
        """The broker settings of this device's agent (runtime.mqtt builds the client)."""
        return MqttSettings(url=self.broker_url, client_id=client_id, username=self.username, password=self.password,
                            password_file=self.password_file, tls=self.tls, protocol=self.mqtt_version,
                            keepalive_s=self.keepalive_s, persistent=True, session_expiry_s=self.session_expiry_s,
                            reconnect_min_s=self.reconnect_min_s, reconnect_max_s=self.reconnect_max_s,
                            max_queued=0)
