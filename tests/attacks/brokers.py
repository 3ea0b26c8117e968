"""Brokers for the attack catalogue and the provisioning tests: one credentials directory (fleet/credentials.py)
read by a real Mosquitto started with the generated config (fleet/mosquitto.py) and by the embedded broker."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from fleet.credentials import FLEET_USER, CredentialStore
from fleet.mosquitto import mosquitto_conf
from fleet.protocol import Topics
from tests.conftest import Mosquitto

DEVICES = ("cam-a", "cam-b", "cam-c")


@dataclass
class Creds:
    directory: Path
    passwords: dict[str, str]
    topics: Topics

    def store(self) -> CredentialStore:
        return CredentialStore(self.directory, self.topics)


def make_creds(directory: Path, topics: Topics, devices: tuple[str, ...] = DEVICES) -> Creds:
    store = CredentialStore(directory, topics)
    store.add(FLEET_USER, "fleet")
    store.add("observer", "fleet")  # a second service user: the tests' own eyes on the broker
    for d in devices:
        store.add(d, "device")
    store.save()
    return Creds(directory, {u: e.password for u, e in store.users.items()}, topics)


class GeneratedMosquitto(Mosquitto):
    """Mosquitto started with exactly the config `fleet mosquitto-conf` prints (test paths and port), plus
    `user root` when the tests run as root (pytest's private temporary folders are not the mosquitto user's)."""

    def __init__(self, workdir: Path, creds: Creds, tls_dir: Path | None = None, extra: str = "") -> None:
        super().__init__(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.pid_file = workdir / "mosquitto.pid"
        text = mosquitto_conf(creds.directory, tls_dir, port=self.port, bind="127.0.0.1", local_port=None,
                              persistence_dir=workdir, pid_file=self.pid_file)
        text += f"log_dest file {workdir}/mosquitto.log\n" + extra
        if os.geteuid() == 0 and "\nuser " not in text:
            text += "user root\n"
        self.conf.write_text(text)

    def start(self) -> GeneratedMosquitto:
        self.spawn()
        return self

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

