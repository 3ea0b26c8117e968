"""Durable ingest rate: prediction records per second published by devices (paho, QoS 1, batches of 200, from a
separate process) through a real Mosquitto into the fleet store, each message acknowledged only after its records
are committed, against baselines measured side by side in the same run (median of --repeat runs):

- SQLite (the embedded default: the service ingests): vs a raw batched insert of the same rows into the same schema
  (1000 rows per transaction); and vs raw paho QoS 1 publish -> subscribe of the same batches (the transport alone).
- PostgreSQL (a server of its own from Debian's binaries, durable settings): `shadowline fleet ingest-worker`
  processes on an MQTT 5 shared subscription, 1, 2 and 4 of them, each vs a raw COPY of the same rows into the same
  table run right before it (and a raw executemany for reference).

It also prints where the CPU went during each ingest run (publishers, Mosquitto, the fleet's processes, the
PostgreSQL server), whether the store side or the transport is the limit, and the load average: on a 2-core machine
shared with other work, the machine, not the code, is often the limit.
Prints one line per run, a median line per backend and a summary last; writes benchmarks/results/fleet_ingest.json.
Temporary files (databases, brokers, the PostgreSQL server) are removed at the end, also on SIGTERM.

    python benchmarks/fleet_ingest.py [--quick] [--repeat 3] [--workers 1,2,4] [--no-postgres | --no-sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test Mosquitto and PostgreSQL helpers live in tests/

from fleet.config import FleetConfig  # noqa: E402
from fleet.ingest import tune_gc_for_ingest  # noqa: E402
from fleet.protocol import Batch, PredictionRecord, Topics, encode  # noqa: E402
from fleet.service import FleetService  # noqa: E402
from fleet.store import RECORD_COLUMNS, Store, row_values  # noqa: E402

COLS = ["id", *RECORD_COLUMNS["predictions"], "record"]
TICK = os.sysconf("SC_CLK_TCK")


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


# -- CPU accounting from /proc: where the time of a run went --------------------------------------------------
def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(ppid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


class CpuMeter:
    """CPU seconds of named groups of processes between start() and stop() (processes that end in between are
    counted up to their last reading; one born in between from 0). The groups' processes are listed at start and
    stop only (listing a server's children reads all of /proc), and read at most every `every` seconds in between:
    the meter must not take the CPU it measures."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]], every: float = 0.25) -> None:
        self.groups, self.every = groups, every
        self.pids: dict[str, list[int]] = {}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._at = 0.0

    def _read(self) -> None:
        for ps in self.pids.values():
            for p in ps:
                self.last[p] = _cpu(p) or self.last.get(p, 0.0)
        self._at = time.monotonic()

    def start(self) -> None:
        self.pids = {name: f() for name, f in self.groups.items()}
        self._read()
        self.first = dict(self.last)

    def sample(self) -> None:
        if time.monotonic() - self._at >= self.every:
            self._read()

    def stop(self) -> dict[str, float]:
        self.pids = {name: sorted(set(self.pids.get(name, [])) | set(f())) for name, f in self.groups.items()}
        self._read()
        return {name: round(sum(self.last[p] - self.first.get(p, 0.0) for p in ps), 2)
                for name, ps in self.pids.items()}


# -- baselines ---------------------------------------------------------------------------------------------------
def raw_sqlite(db_path: Path, batches: list[tuple[str, list[dict]]], rows_per_tx: int) -> tuple[float, float]:
    """Seconds to insert the same rows into a fresh database with the fleet's schema, `rows_per_tx` rows per
    transaction, WAL + synchronous=NORMAL like the fleet store (rows prepared beforehand: only the insert is
    timed)."""
    Store(db_path).close()  # creates the schema
    con = sqlite3.connect(str(db_path), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    flat = [row_values("predictions", r) for _, recs in batches for r in recs]
    chunks = [flat[i:i + rows_per_tx] for i in range(0, len(flat), rows_per_tx)]
    sql = f"INSERT INTO predictions ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))}) ON CONFLICT DO NOTHING"
    start, cpu0 = time.perf_counter(), time.process_time()
    for chunk in chunks:
        con.execute("BEGIN")
        con.executemany(sql, chunk)
        con.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    con.close()
    return elapsed, cpu


def raw_postgres(url: str, batches: list[tuple[str, list[dict]]], rows_per_tx: int, copy: bool) -> float:
    """Seconds to COPY (or executemany) the same rows into the fleet's predictions table, `rows_per_tx` rows per
    transaction, one connection."""
    import psycopg

    flat = [row_values("predictions", r) for _, recs in batches for r in recs]
    chunks = [flat[i:i + rows_per_tx] for i in range(0, len(flat), rows_per_tx)]
    names = ", ".join(COLS)
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for chunk in chunks:
            with conn.cursor() as cur:
                if copy:
                    with cur.copy(f"COPY predictions ({names}) FROM STDIN") as cp:
                        for row in chunk:
                            cp.write_row(row)
                else:
                    cur.executemany(f"INSERT INTO predictions ({names}) VALUES ({', '.join(['%s'] * len(COLS))}) "
                                    "ON CONFLICT DO NOTHING", chunk)
            conn.commit()
        return time.perf_counter() - start


# -- publishing like devices ---------------------------------------------------------------------------------------
def _publish_all(url: str, payloads: list[tuple[str, bytes]], publishers: int, ready, go, finish) -> None:
    """In a separate process, like devices on their own machines: connect, wait for `go`, publish everything
    with QoS 1 and wait for every PUBACK; then wait for `finish` before disconnecting and exiting (the process's
    teardown must not take CPU from the ingest being measured)."""
    sys.path.insert(0, str(ROOT))
    from tests.fleet.devicesim import client, wait_for

    clients = [client(url, f"bench-pub-{i}-{os.getpid()}") for i in range(publishers)]
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
    finish.wait(600)
    for c in clients:
        c.disconnect()
        c.loop_stop()


def timed_publish(broker, payloads: list[tuple[str, bytes]], publishers: int, done: Callable[[], bool],
                  groups: dict[str, Callable[[], list[int]]], timeout: float = 600,
                  poll: float = 0.01) -> tuple[float, dict[str, float]]:
    """Publish from a separate process; seconds from `go` until `done()` (checked every `poll` seconds: `done`
    must be cheap), and the CPU seconds per group."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, finish = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_publish_all, args=(broker.url, payloads, publishers, ready, go, finish))
    meter = CpuMeter({**groups, "publishers": lambda: [proc.pid] if proc.pid else [],
                      "mosquitto": lambda: [broker.proc.pid]})
    try:
        proc.start()
        if not ready.wait(60):
            raise SystemExit("publisher process did not connect")
        meter.start()
        start = time.perf_counter()
        go.set()
        while not done():
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"ingest not done after {timeout:.0f} s")
            meter.sample()
            time.sleep(poll)
        elapsed = time.perf_counter() - start
        cpu = meter.stop()
        finish.set()
        proc.join(60)
    finally:
        finish.set()
        if proc.is_alive():
            proc.kill()
    return elapsed, cpu


def payloads_of(batches: list[tuple[str, list[dict]]]) -> list[tuple[str, bytes]]:
    topics = Topics()
    return [(topics.device(dev, "predictions"), encode(Batch(device=dev, kind="predictions", records=recs)))
            for dev, recs in batches]


def mosquitto(workdir: Path, inflight: int):
    from tests.conftest import Mosquitto

    # max_inflight_messages bounds how many unacknowledged messages the broker has out to each consumer; the fleet
    # acknowledges after each commit, so a deeper window lets the next messages arrive while it commits
    return Mosquitto(workdir, extra_conf=f"user root\nallow_anonymous true\nmax_inflight_messages {inflight}\n"
                                         "max_queued_messages 0\n").start()


# -- the runs -----------------------------------------------------------------------------------------------------
def transport_only(workdir: Path, payloads: list[tuple[str, bytes]], publishers: int, inflight: int) -> float:
    """Raw paho: the same batches published with QoS 1 and received by one QoS 1 subscriber that only counts."""
    from tests.fleet.devicesim import client, wait_for

    broker = mosquitto(workdir / "broker-raw", inflight)
    got = [0]
    subscribed = threading.Event()
    sub = client(broker.url, "raw-sub", persistent=True)
    sub.on_message = lambda c, u, m: got.__setitem__(0, got[0] + 1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(Topics().all_devices("predictions"), 1)
    try:
        # the client connects as soon as it is made: if that was before on_connect was set, subscribe here
        wait_for(lambda: sub.is_connected() or subscribed.is_set(), 30, "raw subscriber connected")
        if not subscribed.is_set():
            sub.subscribe(Topics().all_devices("predictions"), 1)
        wait_for(subscribed.is_set, 30, "raw subscriber's SUBACK")
        elapsed, _ = timed_publish(broker, payloads, publishers, lambda: got[0] >= len(payloads), {})
    finally:
        sub.disconnect()
        sub.loop_stop()
        broker.stop()
    return elapsed


def sqlite_ingest(workdir: Path, payloads: list[tuple[str, bytes]], total: int, publishers: int,
                  inflight: int, gc_tuned: bool = True,
                  decode_processes: int | None = None) -> tuple[float, int, dict[str, float]]:
    broker = mosquitto(workdir / "broker-sqlite", inflight)
    if gc_tuned:  # as `fleet serve` does at its start (this process also holds the batches: frozen too)
        tune_gc_for_ingest()
    given = {} if decode_processes is None else {"ingest_decode_processes": decode_processes}
    svc = FleetService(FleetConfig(data_dir=workdir / "fleet", broker_url=broker.url, monitor_interval_s=0,
                                   client_id=f"bench-{time.monotonic_ns()}", **given)).start()
    consumer = svc.consumer
    assert consumer is not None
    try:
        # poll the in-memory counter (records committed), not count(*): a table scan every poll would slow the
        # ingest it measures; the stored count is checked once at the end. The service's decoding processes
        # (ingest_decode_processes) are counted apart and added to its CPU per record.
        elapsed, cpu = timed_publish(broker, payloads, publishers, lambda: svc.fleet.ingest.stats.records >= total,
                                     {"fleet service": lambda: [os.getpid()],
                                      "decoders": lambda: consumer.decoders.pids if consumer.decoders else []})
        stored = svc.fleet.store.count("predictions")
    finally:
        svc.stop()
        broker.stop()
    return elapsed, stored, cpu


def postgres_workers(workdir: Path, server, name: str, payloads: list[tuple[str, bytes]], total: int,
                     publishers: int, inflight: int, workers: int,
                     decode_processes: int | None = None) -> tuple[float, int, dict[str, float]]:
    import psycopg

    url = server.create_database(name)
    Store(url).close()  # the schema, as `fleet migrate` makes it
    broker = mosquitto(workdir / f"broker-{name}", inflight)
    procs: list[subprocess.Popen] = []
    logs = [workdir / f"{name}-worker-{i}.log" for i in range(workers)]
    try:
        for i in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "shadowline.cli", "fleet", "ingest-worker", "--store-url", url, "--broker-url",
                 broker.url, "--client-id", name, "--worker-id", str(i + 1),
                 *([] if decode_processes is None else ["--decode-processes", str(decode_processes)])],
                stdout=subprocess.DEVNULL, stderr=open(logs[i], "wb")))
        from tests.fleet.devicesim import wait_for

        wait_for(lambda: all("ingest worker" in lg.read_text() for lg in logs), 60, "workers connected")
        time.sleep(1.0)  # their SUBSCRIBEs answered
        conn = psycopg.connect(url, autocommit=True)

        def count() -> int:
            return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]  # type: ignore[index]

        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        # count(*) scans the table: polled every 50 ms (at most 50 ms late, which only lowers the ratio)
        elapsed, cpu = timed_publish(broker, payloads, publishers, lambda: count() >= total,
                                     {"ingest workers": lambda: [p.pid for p in procs],
                                      # their decoding processes (ingest_decode_processes), if any
                                      "decoders": lambda: [c for p in procs for c in _children(p.pid)],
                                      "postgresql": lambda: [postmaster, *_children(postmaster)]}, poll=0.05)
        stored = count()
        conn.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
    return elapsed, stored, cpu


def main() -> None:
    # SIGTERM (e.g. `timeout`) ends the run through the finally blocks: the PostgreSQL server, brokers and workers
    # this script started are stopped and its temporary directories removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=4, help="publishing devices")
    ap.add_argument("--batches", type=int, default=50, help="batches per device")
    ap.add_argument("--per-batch", type=int, default=200, help="records per batch (the agent's default batch_size)")
    ap.add_argument("--repeat", type=int, default=3, help="paired runs (median reported)")
    ap.add_argument("--broker-inflight", type=int, default=200,
                    help="Mosquitto max_inflight_messages (docs/fleet.md recommends 200; Mosquitto's default is 20)")
    ap.add_argument("--raw-rows-per-tx", type=int, default=1000,
                    help="rows per transaction of the raw baselines (1000: the FIELD-NOTES measurement)")
    ap.add_argument("--workers", default="1,2,4", help="PostgreSQL ingest worker counts to run")
    ap.add_argument("--decode-processes", type=int, default=None,
                    help="ingest_decode_processes of the service and the workers (default: the config's default)")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    ap.add_argument("--quick", action="store_true", help="a short run: 2 devices x 25 batches (10,000 records), "
                                                         "2 paired runs")
    args = ap.parse_args()
    if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK"):
        args.devices, args.batches, args.repeat = 2, 25, 2
    batches = make_batches(args.devices, args.batches, args.per_batch)
    payloads = payloads_of(batches)
    total = sum(len(r) for _, r in batches)
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    print(f"{total:,} prediction records in {len(payloads)} batches of {args.per_batch} from {args.devices} "
          f"devices; {args.repeat} paired runs; load average {_load()}", flush=True)
    runs: list[dict] = []
    server = None
    if not args.no_postgres:
        from tests.postgres import PostgresServer

        server = PostgresServer(durable=True).start()  # fsync on: durable means durable
    try:
        for i in range(args.repeat):
            run: dict = {"records": total}
            with tempfile.TemporaryDirectory(prefix="shadowline-bench-ingest-") as tmp:
                work = Path(tmp)
                if not args.no_sqlite:
                    run["sqlite"] = _sqlite_pair(work, i, batches, payloads, total, args)
                if server is not None:
                    run["postgres"] = _postgres_pairs(work, server, i, batches, payloads, total, args, worker_counts)
            runs.append(run)
    finally:
        if server is not None:
            server.stop()

    def med(path: tuple) -> float:
        return statistics.median(_get(r, path) for r in runs)

    summary: dict = {}
    if not args.no_sqlite:
        summary["sqlite"] = {k: med(("sqlite", k)) for k in (
            "raw_per_s", "ingest_per_s", "ratio", "transport_per_s", "ratio_vs_transport", "load", "raw_cpu_us",
            "ingest_cpu_us", "service_cpu_us", "decoders_cpu_us", "cpu_ratio")}
        summary["sqlite"]["cpu_s"] = {k: med(("sqlite", "cpu_s", k)) for k in runs[0]["sqlite"]["cpu_s"]}
    if server is not None:
        summary["postgres"] = {"executemany_per_s": med(("postgres", "executemany_per_s")), "workers": {
            n: {k: med(("postgres", "workers", n, k)) for k in ("copy_per_s", "ingest_per_s", "ratio", "load")}
            | {"cpu_s": {k: med(("postgres", "workers", n, "cpu_s", k))
                         for k in runs[0]["postgres"]["workers"][n]["cpu_s"]}}
            for n in worker_counts}}
    result = {"benchmark": "fleet_ingest", "goal": "SQLite >= 0.5x raw insert and >= 50k/s; PostgreSQL >= 0.5x raw COPY",
              "params": vars(args), "runs": runs, "median": summary,
              "machine": {"python": platform.python_version(), "cpu": platform.machine(), "cores": os.cpu_count()}}
    out = ROOT / "benchmarks" / "results" / "fleet_ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    parts = []
    if "sqlite" in summary:
        s = summary["sqlite"]
        limit = ("the store side (decode, validation, insert), not the transport" if s["ratio_vs_transport"] < 0.5
                 else "the transport")
        ratios = ", ".join(f"{r['sqlite']['ratio']:.2f}" for r in runs)
        print(f"SQLite (medians of {len(runs)}, each taken apart): ratio {s['ratio']:.2f}x (runs: {ratios}); ingest "
              f"{s['ingest_per_s']:,.0f}/s, raw insert {s['raw_per_s']:,.0f}/s; CPU per record {s['ingest_cpu_us']:.0f}"
              f" us (service {s['service_cpu_us']:.1f} + decoding processes {s['decoders_cpu_us']:.1f}) vs "
              f"{s['raw_cpu_us']:.0f} us "
              f"({s['cpu_ratio']:.2f}x); {s['ratio_vs_transport']:.3f}x raw paho ({s['transport_per_s']:,.0f}/s): "
              f"the limit is {limit}; CPU s {s['cpu_s']}", flush=True)
        parts.append(f"SQLite {s['ratio']:.2f}x raw insert ({s['ingest_per_s']:,.0f}/s vs {s['raw_per_s']:,.0f}/s), "
                     f"{s['ratio_vs_transport']:.3f}x raw paho ({s['transport_per_s']:,.0f}/s)")
    if "postgres" in summary:
        p = summary["postgres"]
        for n, w in p["workers"].items():
            ratios = ", ".join(f"{r['postgres']['workers'][n]['ratio']:.2f}" for r in runs)
            print(f"PostgreSQL (medians of {len(runs)}, each taken apart): {n} worker(s): ratio {w['ratio']:.2f}x raw "
                  f"COPY (runs: {ratios}); ingest {w['ingest_per_s']:,.0f}/s, raw COPY {w['copy_per_s']:,.0f}/s; "
                  f"CPU s {w['cpu_s']}", flush=True)
        parts.append("PostgreSQL " + ", ".join(f"{n} worker{'s' if n > 1 else ''} {w['ratio']:.2f}x raw COPY "
                                               f"({w['ingest_per_s']:,.0f}/s vs {w['copy_per_s']:,.0f}/s)"
                                               for n, w in p["workers"].items()))
    print(f"durable ingest (medians of {len(runs)} paired runs, ratios and rates each taken apart): " + "; ".join(parts)
          + f"; load {_load()} on {os.cpu_count()} cores (goal >= 0.5x, SQLite >= 50k/s)")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _sqlite_pair(work: Path, i: int, batches: list, payloads: list, total: int, args: argparse.Namespace) -> dict:
    """One paired SQLite run: the raw insert, the durable ingest, the transport alone, back to back."""
    load0 = _load()
    raw_s, raw_cpu = raw_sqlite(work / "raw.db", batches, args.raw_rows_per_tx)
    mq_s, stored, cpu = sqlite_ingest(work, payloads, total, args.devices, args.broker_inflight,
                                      decode_processes=args.decode_processes)
    if stored != total:
        raise SystemExit(f"run {i}: SQLite stored {stored} of {total} records")
    tr_s = transport_only(work, payloads, args.devices, args.broker_inflight)
    # CPU seconds per record, ours against the raw insert's: far less sensitive to a loaded machine than
    # wall-clock (the service's process includes its MQTT thread; the broker and publishers are counted apart)
    fleet_cpu = cpu["fleet service"] + cpu["decoders"]
    s = {"raw_per_s": total / raw_s, "ingest_per_s": total / mq_s, "ratio": raw_s / mq_s,
         "raw_cpu_us": raw_cpu / total * 1e6, "ingest_cpu_us": fleet_cpu / total * 1e6,
         "service_cpu_us": cpu["fleet service"] / total * 1e6, "decoders_cpu_us": cpu["decoders"] / total * 1e6,
         "cpu_ratio": raw_cpu / fleet_cpu if fleet_cpu else 0.0,
         "transport_per_s": total / tr_s, "ratio_vs_transport": tr_s / mq_s, "cpu_s": cpu,
         "load": os.getloadavg()[0], "load_before": load0}
    print(f"run {i}: SQLite: durable ingest {s['ingest_per_s']:,.0f}/s vs raw insert {s['raw_per_s']:,.0f}/s: "
          f"{s['ratio']:.2f}x; vs raw paho {s['transport_per_s']:,.0f}/s: {s['ratio_vs_transport']:.3f}x; CPU per "
          f"record {s['ingest_cpu_us']:.0f} us (service {s['service_cpu_us']:.1f} + decoding processes "
          f"{s['decoders_cpu_us']:.1f}) vs raw {s['raw_cpu_us']:.0f} us ({s['cpu_ratio']:.2f}x); CPU s {cpu}; "
          f"load {_load()}", flush=True)
    return s


def _postgres_pairs(work: Path, server, i: int, batches: list, payloads: list, total: int,  # type: ignore[no-untyped-def]
                    args: argparse.Namespace, worker_counts: list[int]) -> dict:
    """One paired PostgreSQL run: for each worker count, a raw COPY of the same rows right before the ingest."""
    em_s = _raw_pg(server, f"em{i}", batches, args.raw_rows_per_tx, False)
    pg: dict = {"executemany_per_s": total / em_s, "workers": {}}
    for n in worker_counts:
        copy_s = _raw_pg(server, f"copy{n}r{i}", batches, args.raw_rows_per_tx, True)
        w_s, stored, cpu = postgres_workers(work, server, f"w{n}r{i}", payloads, total, args.devices,
                                            args.broker_inflight, n, args.decode_processes)
        if stored != total:
            raise SystemExit(f"run {i}: PostgreSQL with {n} workers stored {stored} of {total}")
        w = pg["workers"][n] = {"copy_per_s": total / copy_s, "ingest_per_s": total / w_s, "ratio": copy_s / w_s,
                                "cpu_s": cpu, "load": os.getloadavg()[0]}
        print(f"run {i}: PostgreSQL: {n} worker(s) {w['ingest_per_s']:,.0f}/s vs raw COPY {w['copy_per_s']:,.0f}/s: "
              f"{w['ratio']:.2f}x (executemany {pg['executemany_per_s']:,.0f}/s); CPU s {cpu}; load {_load()}",
              flush=True)
    return pg


def _get(d: dict, path: tuple) -> float:
    for k in path:
        d = d[k]
    return float(d)  # type: ignore[arg-type]


def _raw_pg(server, name: str, batches: list[tuple[str, list[dict]]], rows_per_tx: int, copy: bool) -> float:
    url = server.create_database(name)
    Store(url).close()
    return raw_postgres(url, batches, rows_per_tx, copy)


if __name__ == "__main__":
    main()
