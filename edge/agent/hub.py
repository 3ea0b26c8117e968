"""Many device agents in one process without a thread per agent: a `Hub` owns

- one network thread: an epoll selector over every agent's MQTT socket (paho's external-loop API: loop_read,
  loop_write, loop_misc), reconnecting dropped clients with exponential backoff;
- a small pool of worker threads running the agents' queued work (desired states, commands, reports), at most one
  item of one agent at a time, in the order it arrived (the agent's state machine is not thread-safe);
- one outbox thread that drains every agent's outbox (`edge.outbox.Publisher.pump`) when that agent's publisher is
  woken (a row enqueued, a PUBACK, a new connection): event-driven, nothing polls SQLite;
- one timer heap for the agents' delayed work (trailing reports, the periodic reported-state refresh).

A device runs one agent on its own threads (`Agent.start()` without a hub); the hub is for simulating hundreds of
devices per process against a real broker and fleet (tests/agent/simulator.py, benchmarks/fleet_rollout.py), and
for a gateway that fronts several devices. Every agent keeps its own MQTT connection, client id, session and last
will, so the broker and the fleet see exactly what real devices would show them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class Pumped(Protocol):
    def pump(self) -> bool:
        """Do what can be done now; True if something moved (then the pump is called again at once)."""


class Timer:
    """A handle of `Hub.call_later`: `cancel()` keeps it from running."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Conn:
    __slots__ = ("client", "host", "port", "keepalive", "kwargs", "sock", "delay", "min_s", "max_s", "closed",
                 "connected_once")

    def __init__(self, client: mqtt.Client, host: str, port: int, keepalive: int, kwargs: dict[str, Any],
                 min_s: float, max_s: float) -> None:
        self.client, self.host, self.port, self.keepalive, self.kwargs = client, host, port, keepalive, kwargs
        self.sock: socket.socket | None = None
        self.min_s, self.max_s, self.delay = min_s, max_s, min_s
        self.closed = False
        self.connected_once = False


class Hub:
    def __init__(self, workers: int = 4, name: str = "hub") -> None:
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._conns: dict[int, _Conn] = {}  # id(client) -> connection
        self._by_sock: dict[int, _Conn] = {}  # fileno -> connection
        self._requests: deque[Callable[[], None]] = deque()  # run on the network thread
        self._timers: list[tuple[float, int, Timer, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-work")
        self._serial: dict[object, deque[Callable[[], None]]] = {}  # per-key FIFO of work; key present = running
        self._serial_lock = threading.Lock()
        self._pumps: set[Pumped] = set()
        self._pump_cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> Hub:
        for target, what in ((self._net, "net"), (self._outbox, "outbox")):
            t = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poke()
        with self._pump_cond:
            self._pump_cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in list(self._conns.values()):
            sock = conn.sock
            if sock is not None:
                try:
                    conn.client.loop_write()  # a last DISCONNECT or status still queued
                except Exception:  # closing anyway
                    pass
                sock.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # the buffer is full: the network thread is awake anyway

    def on_network(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the network thread (the only thread that reads, writes or reconnects sockets)."""
        with self._lock:
            self._requests.append(fn)
        self._poke()

    # -- MQTT connections ----------------------------------------------------------------------------------------
    def connect(self, client: mqtt.Client, host: str, port: int, keepalive: int, kwargs: dict[str, Any],
                reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0) -> None:
        """Drive `client` from this hub: connect it (and reconnect it with backoff whenever it drops)."""
        conn = _Conn(client, host, port, keepalive, kwargs, reconnect_min_s, reconnect_max_s)
        client.on_socket_open = lambda c, u, s: self._opened(conn, s)
        client.on_socket_close = lambda c, u, s: self._closed(conn, s)
        client.on_socket_register_write = lambda c, u, s: self.on_network(lambda: self._want_write(conn, True))
        client.on_socket_unregister_write = lambda c, u, s: self._want_write(conn, False)
        self._conns[id(client)] = conn
        self.on_network(lambda: self._dial(conn))

    def disconnect(self, client: mqtt.Client) -> None:
        """Disconnect cleanly (DISCONNECT written, no last will) and stop reconnecting `client`."""
        conn = self._conns.get(id(client))
        if conn is None:
            return
        conn.closed = True

        def bye() -> None:
            client.disconnect()

        self.on_network(bye)

    def _dial(self, conn: _Conn) -> None:
        if conn.closed or self._stop.is_set():
            return
        try:
            if conn.connected_once:
                conn.client.reconnect()
            else:
                conn.client.connect(conn.host, conn.port, conn.keepalive, **conn.kwargs)
                conn.connected_once = True
            conn.delay = conn.min_s
        except OSError as err:
            log.info("connect to %s:%s failed (%s); retrying in %.1fs", conn.host, conn.port, err, conn.delay)
            self._retry(conn)

    def _retry(self, conn: _Conn) -> None:
        delay, conn.delay = conn.delay, min(conn.delay * 2, conn.max_s)
        self.call_later(delay, lambda: self.on_network(lambda: self._dial(conn)))

    def _opened(self, conn: _Conn, sock: Any) -> None:
        conn.sock = sock
        self._by_sock[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _closed(self, conn: _Conn, sock: Any) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        self._by_sock.pop(sock.fileno(), None)
        conn.sock = None
        if not conn.closed and not self._stop.is_set():
            self._retry(conn)

    def _want_write(self, conn: _Conn, on: bool) -> None:
        if conn.sock is None:
            return
        try:
            self._sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0), conn)
        except (KeyError, ValueError):
            pass  # closed meanwhile

    def _net(self) -> None:
        last_misc = time.monotonic()
        while not self._stop.is_set():
            timeout = min(1.0, max(0.0, self._next_timer() - time.monotonic()))
            try:
                events = self._sel.select(timeout)
            except OSError:
                events = []
            for key, mask in events:
                conn = key.data
                if conn is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                try:
                    if mask & selectors.EVENT_READ and conn.sock is not None:
                        conn.client.loop_read()
                    if mask & selectors.EVENT_WRITE and conn.sock is not None:
                        conn.client.loop_write()
                        if not conn.client.want_write() and conn.sock is not None:
                            self._want_write(conn, False)
                except Exception:  # one client's failure must not stop the others
                    log.exception("%s: network event failed", self.name)
            with self._lock:
                requests, self._requests = self._requests, deque()
            for fn in requests:
                try:
                    fn()
                except Exception:
                    log.exception("%s: network request failed", self.name)
            self._run_timers()
            now = time.monotonic()
            if now - last_misc >= 1.0:  # keepalive pings and the broker's silence
                last_misc = now
                for conn in list(self._conns.values()):
                    if conn.sock is not None:
                        conn.client.loop_misc()

    # -- timers --------------------------------------------------------------------------------------------------
    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run `fn` on the network thread after `delay` seconds (it must not block: hand work to `submit`)."""
        handle = Timer()
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), handle, fn))
        self._poke()
        return handle

    def _next_timer(self) -> float:
        with self._lock:
            return self._timers[0][0] if self._timers else time.monotonic() + 1.0

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers))
        for _, _, handle, fn in due:
            if not handle.cancelled:
                try:
                    fn()
                except Exception:
                    log.exception("%s: timer failed", self.name)

    # -- work ----------------------------------------------------------------------------------------------------
    def submit(self, key: object, fn: Callable[[], None]) -> None:
        """Run `fn` on a worker thread, after every earlier item of the same `key` finished (one at a time)."""
        with self._serial_lock:
            q = self._serial.get(key)
            if q is not None:
                q.append(fn)
                return
            self._serial[key] = deque()
        try:
            self._pool.submit(self._run_serial, key, fn)
        except RuntimeError:  # shutting down
            with self._serial_lock:
                self._serial.pop(key, None)

    def _run_serial(self, key: object, fn: Callable[[], None]) -> None:
        while True:
            try:
                fn()
            except Exception:
                log.exception("%s: work item failed", self.name)
            with self._serial_lock:
                q = self._serial[key]
                if not q or self._stop.is_set():
                    del self._serial[key]
                    return
                fn = q.popleft()

    # -- outboxes ------------------------------------------------------------------------------------------------
    def wake(self, pump: Pumped) -> None:
        """Something for `pump` to do: the outbox thread runs it soon."""
        with self._pump_cond:
            self._pumps.add(pump)
            self._pump_cond.notify()

    def _outbox(self) -> None:
        while not self._stop.is_set():
            with self._pump_cond:
                while not self._pumps and not self._stop.is_set():
                    self._pump_cond.wait()
                todo, self._pumps = self._pumps, set()
            for p in todo:
                try:
                    if p.pump():
                        self.wake(p)
                except Exception:
                    log.exception("%s: outbox pump failed", self.name)
