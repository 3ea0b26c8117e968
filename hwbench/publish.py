"""Send a benchmark summary to the fleet as the device's capability record: one `events` batch holding one
EventRecord(kind="capability") on the device's own events topic, QoS 1, confirmed by the broker's PUBACK."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol import Batch, EventRecord, Topics, encode
from runtime.errors import ConfigError, ShadowlineError
from runtime.mqtt import MqttSettings, TLSSettings, make_client, parse_url


class PublishTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broker_url: str = Field(description="mqtt://host:port or mqtts://host:port")
    device_id: str = Field(description="this device's id; the topic subtree it may publish in")
    prefix: str = Field("shadowline", description="the fleet's topic prefix")
    username: str | None = Field(None, description="broker user (defaults to the device id when a password is set)")
    password: str | None = Field(None, description="broker password")
    ca_file: Path | None = Field(None, description="CA certificate of the broker (mqtts)")
    timeout_s: float = Field(10.0, gt=0, description="give up when the broker has not acknowledged by then")


class PublishError(ShadowlineError):
    """The broker could not be reached or did not acknowledge the capability record."""

    exit_code = 25


def build_message(device_id: str, summary: dict[str, Any], prefix: str = "shadowline") -> tuple[str, bytes, str]:
    """(topic, payload, record id) of the capability record; invalid ids raise ConfigError."""
    try:
        topic = Topics(prefix).device(device_id, "events")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    record = EventRecord(device=device_id, kind="capability", detail=summary)
    batch = Batch(device=device_id, kind="events", records=[record.model_dump(mode="json")])
    return topic, encode(batch), record.id


def publish(target: PublishTarget, summary: dict[str, Any]) -> str:
    """Publish and wait for the PUBACK; returns the record id."""
    topic, payload, record_id = build_message(target.device_id, summary, target.prefix)
    parse_url(target.broker_url)  # ConfigError naming a bad URL
    if target.ca_file is not None and not parse_url(target.broker_url)[2]:
        raise ConfigError(f"--ca-file is for mqtts:// brokers, not {target.broker_url}")
    try:
        settings = MqttSettings(url=target.broker_url, client_id=f"{target.device_id}-hwbench",
                                username=(target.username or target.device_id) if target.password is not None
                                else None,
                                password=target.password, persistent=False,
                                tls=TLSSettings(ca_file=target.ca_file) if target.ca_file else None)
    except ValueError as err:
        raise ConfigError(f"publish target: {err}") from err
    built = make_client(settings)
    client = built.client
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c, _u, _f, reason_code, _p) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    client.on_connect = on_connect
    try:
        built.connect()
    except OSError as err:
        raise PublishError(f"cannot reach the broker at {target.broker_url}: {err}") from err
    client.loop_start()
    try:
        if not connected.wait(target.timeout_s):
            raise PublishError(f"the broker at {target.broker_url} did not answer within {target.timeout_s:g} s")
        if refused:
            raise PublishError(f"the broker at {target.broker_url} refused the connection: {refused[0]}")
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(target.timeout_s)
        except (RuntimeError, ValueError) as err:  # paho raises when the message could not even be queued
            raise PublishError(f"cannot publish the capability record on {topic}: {err}") from err
        if not info.is_published():
            raise PublishError(f"the broker did not acknowledge the capability record on {topic} "
                               f"within {target.timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return record_id
