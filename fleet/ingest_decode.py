"""Decoding processes for ingest (`ingest_decode_processes`): batches of predictions, the bulk of what devices
send, are parsed, validated, screened and turned into store rows in separate processes, so the process that writes
(and holds the store's connection) spends its CPU on the insert. On two cores this overlaps the decoding of the
next group with the insert of the one before; in one process the two threads take turns on the GIL.

Only a batch that passes every check at once (the typed parse and the batch screen of `fleet.validation`) comes
back as rows. Anything else (a bad record, a refusal, a decoding process that died) comes back as None and is
decoded again in the ingest process, record by record, as without decoding processes: what is refused or counted
as malformed, and why, does not depend on this setting. Nothing is acknowledged by the processes: they only
compute; the consumer still commits before its PUBACKs."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from fleet.ingest import tune_gc_for_ingest, typed_records
from fleet.protocol import RecordKind
from fleet.store import row_values
from fleet.validation import RecordLimits, RecordValidator

log = logging.getLogger(__name__)

PREDICTIONS = RecordKind.PREDICTIONS
_STOP = b""  # asks a decoding process to end


def prediction_rows(validator: RecordValidator, device: str, payload: bytes) -> list[tuple] | None:
    """The store rows of a predictions batch of `device` whose records all pass (the typed parse and the screen
    accept all of them unchanged), or None: the caller then decodes it the usual way, which finds the reasons."""
    records = typed_records(PREDICTIONS, device, payload)
    if not records:
        return None
    kept, refusals = validator.screen(PREDICTIONS, device, records, {})
    if refusals or len(kept) != len(records):
        return None
    return [row_values(PREDICTIONS, r) for r in kept]


def serve(conn: Connection, limits_json: str) -> None:
    """A decoding process: (device, payload) pairs in, their rows (or None) out, until told to stop or the
    ingest process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole process group: the parent stops us
    validator = RecordValidator(RecordLimits.model_validate_json(limits_json), _no_lookup)
    tune_gc_for_ingest()
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if msg == _STOP:
            return
        out: list[list[tuple] | None] = []
        for device, payload in pickle.loads(msg):
            try:
                out.append(prediction_rows(validator, device, payload))
            except Exception:  # whatever it is, the ingest process decodes it again and reports it
                out.append(None)
        conn.send_bytes(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))


def _no_lookup(device: str, ids: list[str]) -> dict:
    raise AssertionError("decoding processes screen predictions only; verdicts are looked up by ingest")


class DecoderPool:
    """`processes` decoding processes (`python -m fleet.ingest_decode`, started once: no thread of the service is
    forked, and the embedding program's main module is not run again as multiprocessing's spawn would), each fed
    over its own socket. `rows(batches)` splits the batches between them and waits for all (the GIL released
    meanwhile)."""

    def __init__(self, processes: int, limits: RecordLimits) -> None:
        if processes < 1:
            raise ValueError(f"a decoder pool needs at least one process, not {processes}")
        self.size, self.limits = processes, limits
        self._slots: list[tuple[subprocess.Popen, Connection] | None] = [None] * processes
        self._lock = threading.Lock()
        self.restarts = 0

    def start(self) -> DecoderPool:
        for i in range(self.size):
            self._slots[i] = self._spawn(i)
        return self

    def _spawn(self, i: int) -> tuple[subprocess.Popen, Connection]:
        ours, theirs = socket.socketpair()
        # the child imports this package from where this process did (a checkout on sys.path, not installed)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fleet.ingest_decode", str(theirs.fileno()),
                                     self.limits.model_dump_json()], pass_fds=[theirs.fileno()], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        return proc, Connection(ours.detach())

    @property
    def pids(self) -> list[int]:
        return [s[0].pid for s in self._slots if s is not None]

    def rows(self, batches: list[tuple[str, bytes]]) -> list[list[tuple] | None]:
        """Rows of each (device, payload) predictions batch, or None where ingest must decode it itself (it did
        not pass at once, or its decoding process died: that process is started again for the next call)."""
        if not batches:
            return []
        with self._lock:
            n = min(self.size, len(batches))
            parts = [list(range(i, len(batches), n)) for i in range(n)]
            sent: list[bool] = []
            for slot, idx in enumerate(parts):
                sent.append(self._send(slot, [batches[j] for j in idx]))
            out: list[list[tuple] | None] = [None] * len(batches)
            for slot, idx in enumerate(parts):
                got = self._receive(slot) if sent[slot] else None
                if got is not None and len(got) == len(idx):
                    for j, rows in zip(idx, got, strict=True):
                        out[j] = rows
            return out

    def _send(self, slot: int, items: list[tuple[str, bytes]]) -> bool:
        s = self._slots[slot]
        if s is None or s[0].poll() is not None:
            self._replace(slot)
            s = self._slots[slot]
        assert s is not None
        try:
            s[1].send_bytes(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))
            return True
        except OSError as err:
            log.error("ingest decoding process %d is gone (%s); decoding in the ingest process", slot, err)
            self._replace(slot)
            return False

    def _receive(self, slot: int) -> list | None:
        s = self._slots[slot]
        assert s is not None
        try:
            got = pickle.loads(s[1].recv_bytes())
            return got if isinstance(got, list) else None
        except (EOFError, OSError) as err:
            log.error("ingest decoding process %d is gone (%s); decoding in the ingest process", slot, err)
            self._replace(slot)
            return None

    def _replace(self, slot: int) -> None:
        self._end(self._slots[slot])
        self._slots[slot] = self._spawn(slot)
        self.restarts += 1

    @staticmethod
    def _end(s: tuple[subprocess.Popen, Connection] | None, timeout: float = 5.0) -> None:
        if s is None:
            return
        proc, conn = s
        try:
            if proc.poll() is None:
                conn.send_bytes(_STOP)
        except OSError:
            pass
        conn.close()  # the process also ends when it reads the end of the socket
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def stop(self) -> None:
        """End every decoding process (each finishes the call in hand first)."""
        with self._lock:
            for i, s in enumerate(self._slots):
                self._end(s)
                self._slots[i] = None


if __name__ == "__main__":  # a decoding process, started by DecoderPool: the socket's fd, the limits as JSON
    serve(Connection(int(sys.argv[1])), sys.argv[2])
