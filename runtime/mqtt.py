"""The one way to make an MQTT client: `MqttSettings` (broker URL, TLS, credentials, client id, protocol version,
keepalive, session, reconnect backoff) and `make_client()`, which builds the paho client from it. The device agent,
production actions, the fleet's service and ingest workers and hwbench's publisher all connect through here, so
URL schemes, TLS and credentials mean the same everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.errors import ConfigError

if TYPE_CHECKING:  # paho loads with the first client made: the settings models (device config) do not need it
    import paho.mqtt.client as mqtt

SCHEMES = {"mqtt": 1883, "mqtts": 8883}


class TLSSettings(BaseModel):
    """TLS to the broker. Without `ca_file` the system's CA certificates are trusted."""

    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(None, description="CA certificate that signed the broker's certificate "
                                                   "(unset: the system's CAs)")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client key (mutual TLS)")
    insecure_skip_hostname: bool = Field(False, description="do not check the broker's host name (tests only)")

    @model_validator(mode="after")
    def _pair(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together (mutual TLS needs both)")
        return self


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host[:1883] or mqtts://host[:8883]; ConfigError naming the URL otherwise."""
    try:
        u = urlparse(url)
        port = u.port
    except ValueError as err:
        raise ConfigError(f"broker URL {url!r}: {err}") from err
    if u.scheme not in SCHEMES or not u.hostname:
        raise ConfigError(f"broker URL {url!r}: expected mqtt://host:port or mqtts://host:port")
    if u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
        raise ConfigError(f"broker URL {url!r}: only mqtt(s)://host:port (credentials go in username/password)")
    return u.hostname, port or SCHEMES[u.scheme], u.scheme == "mqtts"


def checked_url(url: str) -> str:
    """`url` if parse_url accepts it, else a ValueError with parse_url's message: for pydantic validators, so the
    error names the config key that holds the URL."""
    try:
        parse_url(url)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return url


class MqttSettings(BaseModel):
    """Everything a client needs to reach a broker."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="mqtt://host:port or mqtts://host:port (TLS)")
    client_id: str = Field(min_length=1, max_length=128)
    username: str | None = Field(None, description="broker user; with only a password, the client id")
    password: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (preferred over password)")
    tls: TLSSettings | None = Field(None, description="TLS options; mqtts:// without them uses the system CAs")
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = Field(30, ge=5, le=65535)
    persistent: bool = Field(True, description="keep the session (subscriptions, queued QoS 1) across disconnects")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="MQTT 5: how long the broker keeps the session")
    reconnect_min_s: float = Field(0.5, gt=0, description="first reconnect delay; doubles up to reconnect_max_s")
    reconnect_max_s: float = Field(30.0, gt=0)
    max_inflight: int | None = Field(None, ge=1, description="QoS 1 messages in flight at once (paho default 20)")
    max_queued: int | None = Field(0, ge=0, description="messages paho queues beyond those in flight (0: no limit)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return checked_url(v)

    @model_validator(mode="after")
    def _backoff(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        if self.tls is not None and not self.uses_tls:
            raise ValueError(f"tls options given for {self.url}: use mqtts:// for TLS")
        return self

    @property
    def host(self) -> str:
        return parse_url(self.url)[0]

    @property
    def port(self) -> int:
        return parse_url(self.url)[1]

    @property
    def uses_tls(self) -> bool:
        return parse_url(self.url)[2]

    def secret(self) -> str | None:
        """The password, read from password_file when one is set (ConfigError when it cannot be read)."""
        if self.password_file is None:
            return self.password
        try:
            return self.password_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"password_file: cannot read {self.password_file}: {err}") from err


@dataclass
class Client:
    """A paho client built from settings, with what connect() needs."""

    client: mqtt.Client
    settings: MqttSettings
    connect_kwargs: dict[str, Any] = field(default_factory=dict)

    def connect_async(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s,
                                  **self.connect_kwargs)

    def connect(self) -> None:
        """Connect now (OSError when the broker cannot be reached)."""
        self.client.connect(self.settings.host, self.settings.port, self.settings.keepalive_s, **self.connect_kwargs)


def make_client(settings: MqttSettings, *, manual_ack: bool = False) -> Client:
    """The paho client for `settings` (paho-mqtt 2 callback API version 2). Call `connect_async()` or `connect()`
    on the result, then `client.loop_start()`."""
    import paho.mqtt.client as mqtt

    kwargs: dict[str, Any] = {}
    if settings.protocol == "5":
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=manual_ack)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s if settings.persistent else 0
        kwargs = {"clean_start": not settings.persistent, "properties": props}
    else:
        # clean_session False: the broker keeps our subscriptions and queues QoS 1 messages while we are away
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             clean_session=not settings.persistent, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    password = settings.secret()
    if password is not None or settings.username is not None:
        client.username_pw_set(settings.username or settings.client_id, password)
    if settings.uses_tls:
        tls = settings.tls or TLSSettings()
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"tls.{name}: {path} is not a file")
        import ssl

        client.tls_set(ca_certs=str(tls.ca_file) if tls.ca_file else None,
                       certfile=str(tls.cert_file) if tls.cert_file else None,
                       keyfile=str(tls.key_file) if tls.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        if tls.insecure_skip_hostname:
            client.tls_insecure_set(True)
    # paho types the delays as int but sleeps a float
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
    if settings.max_inflight is not None:
        client.max_inflight_messages_set(settings.max_inflight)
    if settings.max_queued is not None:
        client.max_queued_messages_set(settings.max_queued)
    return Client(client, settings, kwargs)
