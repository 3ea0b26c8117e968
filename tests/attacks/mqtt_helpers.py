"""Raw paho clients for attackers and honest devices: connect with any client id, credentials, clean-session flag
and last will, and report the broker's CONNACK."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runtime.mqtt import parse_url


class Peer:
    def __init__(self, url: str, client_id: str, user: str | None = None, password: str | None = None, *,
                 clean: bool = True, will: tuple[str, bytes, bool] | None = None) -> None:
        host, port, _ = parse_url(url)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                             protocol=mqtt.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1, retain=will[2])
        self.answered = threading.Event()
        self.rc: object = None
        self.got: list[tuple[str, bytes, bool]] = []
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, bool(m.retain)))
        self.c.on_disconnect = lambda *args: self.answered.set()
        self.subacks: dict[int, list] = {}
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subacks.__setitem__(mid, list(codes))
        self.c.reconnect_delay_set(1, 2)
        self.c.connect_async(host, port, 30)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, rc, props) -> None:
        self.rc = rc
        self.answered.set()

    def connected(self, timeout: float = 5.0) -> bool:
        """Wait for the broker's answer: True if it accepted the connection."""
        self.answered.wait(timeout)
        return self.c.is_connected()

    def subscribe(self, *filters: str, timeout: float = 5.0) -> list:
        """Subscribe and wait for the SUBACKs; returns their reason codes (a broker may refuse a filter)."""
        mids = [self.c.subscribe(f, 1)[1] for f in filters]
        wait_until(lambda: all(m in self.subacks for m in mids), timeout)
        return [self.subacks.get(m) for m in mids]

    def publish(self, topic: str, payload: bytes, retain: bool = False, wait: float = 5.0) -> bool:
        """Publish with QoS 1; True if the broker acknowledged it (a broker may acknowledge what its ACL drops)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(wait)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def kill(self) -> None:
        """End the TCP connection without DISCONNECT: the broker sends the last will."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
