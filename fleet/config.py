"""The fleet service's configuration (YAML or JSON): where it keeps its data, which broker it uses, how it serves
HTTP, whom it trusts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.alerting.config import AlertingConfig
from fleet.analytics.alerts import AlertRules
from fleet.analytics.shadow import ExitCriteria
from fleet.validation import RecordLimits
from runtime.errors import ConfigError
from runtime.mqtt import TLSSettings, checked_url, parse_url
from runtime.yamlconf import describe, parse_yaml_model, read_config_text


class ImagesConfig(BaseModel):
    """Images devices upload for their inspectors' cases (fleet.images, PUT /api/images/{sha256})."""

    model_config = ConfigDict(extra="forbid")
    dir: Path | None = Field(None, description="where the image blobs go (default: <data_dir>/images; shared "
                                               "storage when several service instances run)")
    budget_mb: float = Field(10240, gt=0, description="disk budget of the images: over it uploads get 507 and the "
                                                      "devices keep them and retry")
    max_image_mb: float = Field(25, gt=0, description="largest image accepted (413 above)")


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Field(Path("fleet-data"), description="artifacts live here, and the store (fleet.db) unless "
                                                          "store_url names another")
    store_url: str | None = Field(None, description="the fleet store: sqlite:///path/fleet.db or postgresql://user@"
                                                    "host:port/database (password from the URL, PGPASSWORD or "
                                                    "~/.pgpass); none: SQLite at data_dir/fleet.db")
    broker_url: str | None = Field(None, description="mqtt://host:port or mqtts://host:port; none: start an "
                                                     "embedded broker on localhost")
    embedded_broker_port: int = Field(1883, ge=1, le=65535, description="port of the embedded broker")
    embedded_broker_host: str = Field("127.0.0.1", description="address the embedded broker listens on; beyond "
                                                               "loopback only with broker_credentials_dir")
    broker_credentials_dir: Path | None = Field(None, description="directory with the broker's passwd and acl "
                                                                  "(`fleet credentials add` writes it); the "
                                                                  "embedded broker reads it like Mosquitto")
    prefix: str = Field("shadowline", description="the fleet's MQTT topic prefix")
    client_id: str = Field("shadowline-fleet", description="MQTT client id; fixed so the broker keeps the session")
    mqtt_username: str | None = Field(None, description="the fleet service's broker user")
    mqtt_password: str | None = Field(None, description="its password (prefer mqtt_password_file)")
    mqtt_password_file: Path | None = Field(None, description="file holding the broker password")
    tls: TLSSettings | None = Field(None, description="TLS options for an mqtts:// broker_url (unset: the "
                                                       "system's CAs)")
    ingest_share_group: str | None = Field(None, description="subscribe to the record topics through this MQTT 5 "
                                                              "shared subscription ($share/<group>/...), sharing the "
                                                              "load with other instances and `fleet ingest-worker` "
                                                              "processes; needs an MQTT 5 broker (Mosquitto 2, EMQX), "
                                                              "not the embedded one")
    ingest_in_service: bool = Field(True, description="false: leave the record topics to `fleet ingest-worker` "
                                                      "processes; the service handles devices' status and reported "
                                                      "state only")
    ingest_group: int = Field(50, ge=1, le=10000, description="messages committed per transaction at most before "
                                                               "their PUBACKs (bounded so PUBACKs are not held back "
                                                               "long under load)")
    ingest_decode_processes: int = Field(1, ge=0, le=64, description="processes that decode, validate and screen "
                                                                     "batches of predictions beside the process that "
                                                                     "writes them (0: decoded in that process, by a "
                                                                     "thread); measured in docs/scale-out.md")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="MQTT 5: how long the broker keeps a stopped "
                                                                   "instance's or worker's session (its unacknowledged "
                                                                   "and queued messages) for it to come back")
    instance_name: str | None = Field(None, description="this service instance's name in leader election and logs "
                                                        "(default: client_id)")
    leader_check_s: float = Field(1.0, gt=0, description="how often a standby instance tries to take over the "
                                                         "rollout and monitoring loops, and the leader checks it "
                                                         "still holds its lock")
    http_host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    http_port: int = Field(8700, ge=0, le=65535, description="port of the HTTP API")
    public_url: str | None = Field(None, description="base URL devices use for artifacts (default: from host/port)")
    trust_store: Path | None = Field(None, description="directory of *.pub keys pushed bundles must be signed by")
    control_key: Path | None = Field(None, description="the fleet's ed25519 control key (private, 0600) that signs "
                                                      "every desired state and command; its public half is read from "
                                                      "the .pub beside it (written when missing). Default: made on "
                                                      "first start as data_dir/control.key")
    command_ttl_s: float = Field(24 * 3600, gt=0, description="a signed command expires this long after it was "
                                                               "sent: a device refuses it later (replays too)")
    tokens_file: Path | None = Field(None, description="JSON file of API token hashes and roles")
    max_upload_mb: float = Field(2048, gt=0, description="largest bundle accepted by POST /api/bundles")
    max_body_kb: float = Field(1024, gt=0, description="largest request body of every other API route (413 above)")
    images: ImagesConfig = Field(default_factory=ImagesConfig, description="images uploaded by devices")
    rollout_tick_s: float = Field(0.2, gt=0, description="how often running rollouts are advanced")
    publish_timeout_s: float = Field(10.0, gt=0, description="wait this long for the broker's PUBACK before "
                                                             "leaving a message queued for after reconnection")
    monitor_interval_s: float = Field(60.0, ge=0, description="how often the alert rules run over the fleet's "
                                                                "records (0: never; the dashboard can still run them)")
    monitor_window: str = Field("1h", description="window the alert rules judge, e.g. 1h or 24h")
    monitor_lookback_days: float = Field(60.0, gt=0, description="records this old at most feed each evaluation "
                                                                 "(the baseline of a release is its first days)")
    record_limits: RecordLimits = Field(default_factory=RecordLimits, description="what ingest accepts beyond the "
                                                                               "schema (clock skew, sizes)")
    alert_rules: AlertRules = Field(default_factory=AlertRules, description="alert rule settings (defaults: the "
                                                                            "field guide's)")
    alerting: AlertingConfig = Field(default_factory=AlertingConfig, description="severity per rule, runbook links, "
                                     "grouping, and the channels alerts are sent to (webhook, e-mail)")
    adjudicators: list[str] = Field(default_factory=list, description="reviewers (QA leads) whose latest verdict "
                                    "decides a case: it upholds or overturns the line inspector's. Every figure, "
                                    "the shadow report and the gate use this one list; without adjudicators every "
                                    "dispute stays unresolved")
    exit_criteria: ExitCriteria = Field(default_factory=ExitCriteria, description="what a shadow period must show "
                                        "for GO (the shadow report, the API, the CLI and the gate use these)")

    @field_validator("monitor_window")
    @classmethod
    def _window(cls, v: str) -> str:
        from fleet.analytics.windows import WINDOWS

        if v not in WINDOWS:
            raise ValueError(f"unknown window {v!r}; known: {', '.join(WINDOWS)}")
        return v

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        if v is not None:
            from fleet.store.engine import normalise_url

            try:
                normalise_url(v)
            except ConfigError as err:  # as a ValueError, so the message names the key
                raise ValueError(str(err)) from err
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        return None if v is None else checked_url(v)

    @model_validator(mode="after")
    def _share_needs_mqtt5(self) -> FleetConfig:
        if self.tls is not None and (self.broker_url is None or not parse_url(self.broker_url)[2]):
            raise ValueError("tls is set but broker_url is not mqtts:// (the embedded broker speaks no TLS)")
        if self.ingest_share_group is not None and self.broker_url is None:
            raise ValueError("ingest_share_group needs an MQTT 5 broker (broker_url); the embedded broker speaks "
                             "MQTT 3.1.1 only")
        if self.ingest_share_group is not None and any(c in self.ingest_share_group for c in "/+#"):
            raise ValueError(f"ingest_share_group {self.ingest_share_group!r}: no '/', '+' or '#'")
        return self

    @property
    def store(self) -> str | Path:
        """The store URL, or the path of the SQLite file in the data directory."""
        return self.store_url or Path(self.data_dir) / "fleet.db"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    def password(self) -> str | None:
        if self.mqtt_password_file is not None:
            try:
                return self.mqtt_password_file.read_text().strip()
            except OSError as err:
                raise ConfigError(f"mqtt_password_file: {err}") from err
        return self.mqtt_password


def load_config(path: Path | None, **overrides: object) -> FleetConfig:
    """Read a YAML/JSON config (optional) and apply non-None command-line overrides; every error is given as
    `file:line: key.path: message` (options given on the command line have no line)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if path is None:
        try:
            return FleetConfig.model_validate(given)
        except ValidationError as err:
            raise ConfigError(describe(err, None, "fleet config (command-line options)")) from err
    return parse_yaml_model(read_config_text(path), FleetConfig, str(path), given)
