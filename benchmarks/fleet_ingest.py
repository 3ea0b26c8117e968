"""Durable ingest rate: prediction records per second published by devices (paho, QoS 1, batches) through a real
Mosquitto into the fleet store, committed before each PUBACK, against a raw batched SQLite insert of the same rows
into the same table schema in the same run (median of --repeat runs).

Prints one line per run and the ratio last; writes benchmarks/results/fleet_ingest.json. Goal: ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test Mosquitto helper lives in tests.conftest

from fleet.config import FleetConfig  # noqa: E402
from fleet.protocol import Batch, PredictionRecord, Topics, encode  # noqa: E402
from fleet.service import FleetService  # noqa: E402
from fleet.store import Store, row_values  # noqa: E402


def make_batches(devices: int, batches: int, per_batch: int) -> list[tuple[str, list[dict]]]:
    out = []
    for d in range(devices):
        dev = f"bench-{d:02d}"
        for b in range(batches):
            recs = [PredictionRecord(device=dev, source=f"capture:cam#{b * per_batch + i}", release="seal",
                                     revision=3, mode="shadow", decision="flag" if i % 7 == 0 else "pass",
                                     models={"verify": "pcb-aoi-v1.0"}, thresholds={"default": 0.5},
                                     top_label="defect", top_score=0.1 + (i % 9) / 10,
                                     latency_ms={"verify": 4.2, "total": 5.0 + i % 3}).model_dump(mode="json")
                    for i in range(per_batch)]
            out.append((dev, recs))
    return out


def raw_insert(db_path: Path, batches: list[tuple[str, list[dict]]], rows_per_tx: int) -> float:
    """Seconds to insert the same rows into a fresh database with the fleet's schema, `rows_per_tx` rows per
    transaction, WAL + synchronous=NORMAL like the fleet store (rows prepared beforehand: only the insert is
    timed)."""
    Store(db_path).close()  # creates the schema
    con = sqlite3.connect(str(db_path), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    flat = [row_values("predictions", r) for _, recs in batches for r in recs]
    rows = [flat[i:i + rows_per_tx] for i in range(0, len(flat), rows_per_tx)]
    n_cols = len(flat[0])
    cols = [r[1] for r in con.execute("PRAGMA table_info(predictions)")]
    sql = f"INSERT OR IGNORE INTO predictions ({', '.join(cols)}) VALUES ({', '.join('?' * n_cols)})"
    start = time.perf_counter()
    for chunk in rows:
        con.execute("BEGIN")
        con.executemany(sql, chunk)
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def _publish_all(url: str, payloads: list[tuple[str, bytes]], publishers: int, ready, go) -> None:
    """In a separate process, like devices on their own machines: connect, wait for `go`, publish everything
    with QoS 1 and wait for every PUBACK."""
    sys.path.insert(0, str(ROOT))
    from tests.fleet.devicesim import client, wait_for

    clients = [client(url, f"bench-pub-{i}") for i in range(publishers)]
    for c in clients:
        wait_for(c.is_connected, 30)
    ready.set()
    go.wait()

    def send(i: int) -> None:
        infos = [clients[i].publish(t, p, qos=1) for t, p in payloads[i::publishers]]
        for info in infos:
            info.wait_for_publish(300)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.disconnect()
        c.loop_stop()


def mqtt_ingest(workdir: Path, batches: list[tuple[str, list[dict]]], publishers: int,
                inflight: int) -> tuple[float, int]:
    import multiprocessing as mp

    from tests.conftest import Mosquitto
    from tests.fleet.devicesim import wait_for

    # max_inflight_messages bounds how many unacknowledged messages the broker has out to the fleet; the fleet
    # acknowledges after each commit, so a deeper window lets the next messages arrive while it commits
    broker = Mosquitto(workdir / "broker", extra_conf=f"user root\nallow_anonymous true\n"
                                                      f"max_inflight_messages {inflight}\n").start()
    svc = FleetService(FleetConfig(data_dir=workdir / "fleet", broker_url=broker.url,
                                   client_id=f"bench-{time.monotonic_ns()}")).start()
    topics = Topics()
    payloads = [(topics.device(dev, "predictions"), encode(Batch(device=dev, kind="predictions", records=recs)))
                for dev, recs in batches]
    total = sum(len(r) for _, r in batches)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_publish_all, args=(broker.url, payloads, publishers, ready, go))
    try:
        proc.start()
        if not ready.wait(60):
            raise SystemExit("publisher process did not connect")
        start = time.perf_counter()
        go.set()
        # poll the in-memory counter (records committed), not count(*): a table scan every 20 ms under the
        # store's lock would slow down the ingest it measures; the stored count is checked once at the end
        wait_for(lambda: svc.fleet.ingest.stats.records >= total, 300, "ingest")
        elapsed = time.perf_counter() - start
        stored = svc.fleet.store.count("predictions")
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
        svc.stop()
        broker.stop()
    return elapsed, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=4, help="publishing devices")
    ap.add_argument("--batches", type=int, default=50, help="batches per device")
    ap.add_argument("--per-batch", type=int, default=200, help="records per batch (the agent's default batch_size)")
    ap.add_argument("--repeat", type=int, default=3, help="runs (median reported)")
    ap.add_argument("--broker-inflight", type=int, default=20,
                    help="Mosquitto max_inflight_messages (20 is Mosquitto's default; docs/fleet.md suggests 200)")
    ap.add_argument("--raw-rows-per-tx", type=int, default=1000,
                    help="rows per transaction of the raw baseline (1000: the FIELD-NOTES measurement)")
    args = ap.parse_args()
    batches = make_batches(args.devices, args.batches, args.per_batch)
    total = sum(len(r) for _, r in batches)
    runs = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            raw_s = raw_insert(Path(tmp) / "raw.db", batches, args.raw_rows_per_tx)
            raw_msg_s = raw_insert(Path(tmp) / "raw-msg.db", batches, args.per_batch)
            mqtt_s, stored = mqtt_ingest(Path(tmp), batches, args.devices, args.broker_inflight)
        if stored != total:
            raise SystemExit(f"run {i}: stored {stored} of {total} records")
        run = {"records": total, "raw_s": raw_s, "mqtt_s": mqtt_s, "raw_per_s": total / raw_s,
               "ingest_per_s": total / mqtt_s, "ratio": raw_s / mqtt_s,
               "raw_per_message_tx_per_s": total / raw_msg_s, "ratio_vs_per_message_tx": raw_msg_s / mqtt_s}
        runs.append(run)
        print(f"run {i}: {total} records  raw insert {run['raw_per_s']:,.0f}/s  "
              f"MQTT->store {run['ingest_per_s']:,.0f}/s  ratio {run['ratio']:.2f}  "
              f"(vs {args.per_batch} rows/tx: {run['raw_per_message_tx_per_s']:,.0f}/s, "
              f"ratio {run['ratio_vs_per_message_tx']:.2f})")
    med = {k: statistics.median(r[k] for r in runs) for k in ("raw_per_s", "ingest_per_s", "ratio",
                                                               "raw_per_message_tx_per_s",
                                                               "ratio_vs_per_message_tx")}
    result = {"benchmark": "fleet_ingest", "goal": "ratio >= 0.5", "params": vars(args), "runs": runs,
              "median": med, "machine": {"python": platform.python_version(), "cpu": platform.machine()}}
    out = ROOT / "benchmarks" / "results" / "fleet_ingest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"durable ingest {med['ingest_per_s']:,.0f} predictions/s vs raw batched SQLite "
          f"({args.raw_rows_per_tx} rows/tx) {med['raw_per_s']:,.0f}/s: ratio {med['ratio']:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
