"""What fleet acks cost a device: prediction rows drained from devices' SQLite outboxes (edge.outbox.Publisher,
batches of 200, a window of 8) through a real Mosquitto into the real fleet service (SQLite store), until every row
is stored by the fleet and gone from the outbox. With fleet acks (the default: a row is deleted on the fleet's
commit ack; the window counts batches awaiting it) vs without (deleted on the broker's PUBACK: the baseline),
measured side by side in the same run, alternating which goes first, median of --repeat pairs. Prints seconds,
records/s and the ratio per pair, the medians, the publishers' CPU seconds (their own process, from /proc) and the
load average; writes benchmarks/results/outbox_acks.json. Temporary files are removed at the end.

    python benchmarks/outbox_acks.py [--devices 4] [--records 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test Mosquitto and device helpers live in tests/

from fleet.config import FleetConfig  # noqa: E402
from fleet.protocol import RecordKind, Topics  # noqa: E402
from fleet.service import FleetService  # noqa: E402


def _devices(url: str, names: list[str], workdir: str, records: int, fleet_acks: bool, ready, go, out) -> None:
    """In a process of its own, like devices on their own machines: fill each outbox, connect, wait for `go`, drain;
    report the seconds until every outbox is empty and this process's CPU seconds."""
    sys.path.insert(0, str(ROOT))
    from edge import outbox
    from tests.fleet.devicesim import outbox_device, outbox_rows, predictions, wait_for

    topics = Topics()
    dbs = []
    for name in names:
        db = Path(workdir) / f"{name}.db"
        with sqlite3.connect(db) as conn:
            outbox.ensure_schema(conn)
            with conn:
                for r in predictions(name, records):
                    outbox.enqueue(conn, RecordKind.PREDICTIONS, r)
        dbs.append(db)
    ready.set()
    go.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    devices = [outbox_device(url, n, topics, db, fleet_acks=fleet_acks) for n, db in zip(names, dbs)]
    wait_for(lambda: all(outbox_rows(db) == 0 for db in dbs), 300, "every outbox drained")
    out.put((time.perf_counter() - t0, time.process_time() - c0))
    for c, pub in devices:
        pub.stop()
        c.disconnect()
        c.loop_stop()


def one_run(svc: FleetService, url: str, workdir: Path, tag: str, devices: int, records: int,
            fleet_acks: bool) -> dict:
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    names = [f"{tag}-{i}" for i in range(devices)]
    ids_before = svc.fleet.ingest.stats.records
    proc = ctx.Process(target=_devices, args=(url, names, str(workdir), records, fleet_acks, ready, go, out))
    proc.start()
    if not ready.wait(300):
        raise SystemExit("device process did not fill its outboxes")
    load = os.getloadavg()
    t0 = time.perf_counter()
    go.set()
    total = devices * records
    while svc.fleet.ingest.stats.records - ids_before < total:  # stored by the fleet
        if time.perf_counter() - t0 > 300:
            raise SystemExit("not stored after 300 s")
        time.sleep(0.01)
    stored_s = time.perf_counter() - t0
    drained_s, cpu_s = out.get(timeout=600)
    proc.join(60)
    seconds = max(stored_s, drained_s)  # both: in the fleet's store and gone from the devices
    return {"fleet_acks": fleet_acks, "seconds": round(seconds, 3), "records_per_s": round(total / seconds),
            "device_cpu_s": round(cpu_s, 3), "load": [round(x, 2) for x in load]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--records", type=int, default=5000, help="rows per device's outbox")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from tests.conftest import Mosquitto

    with tempfile.TemporaryDirectory(prefix="outbox-acks-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker", extra_conf="allow_anonymous true\nmax_inflight_messages 200\n").start()
        svc = FleetService(FleetConfig(data_dir=work / "fleet", broker_url=broker.url, monitor_interval_s=0,
                                       client_id="bench-outbox-acks")).start()
        pairs = []
        try:
            print(f"{args.devices} devices x {args.records} prediction rows, batches of 200, window 8; "
                  f"{args.repeat} pairs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            for n in range(args.repeat):
                run: dict[bool, dict] = {}
                for acks in ((True, False) if n % 2 == 0 else (False, True)):
                    d = work / f"r{n}-{int(acks)}"
                    d.mkdir()
                    run[acks] = one_run(svc, broker.url, d, f"r{n}{'a' if acks else 'p'}", args.devices,
                                        args.records, acks)
                ratio = run[True]["seconds"] / run[False]["seconds"]
                pairs.append({"acks": run[True], "puback": run[False], "time_ratio": round(ratio, 3)})
                print(f"pair {n}: fleet acks {run[True]['seconds']:.2f} s ({run[True]['records_per_s']:,}/s, device "
                      f"CPU {run[True]['device_cpu_s']:.2f} s) vs delete on PUBACK {run[False]['seconds']:.2f} s "
                      f"({run[False]['records_per_s']:,}/s, device CPU {run[False]['device_cpu_s']:.2f} s): time "
                      f"ratio {ratio:.2f}; load {run[True]['load']} / {run[False]['load']}", flush=True)
        finally:
            svc.stop()
            broker.stop()
    med = {k: statistics.median(p[k] for p in pairs) for k in ("time_ratio",)}
    acks_s = statistics.median(p["acks"]["seconds"] for p in pairs)
    base_s = statistics.median(p["puback"]["seconds"] for p in pairs)
    cpu_a = statistics.median(p["acks"]["device_cpu_s"] for p in pairs)
    cpu_b = statistics.median(p["puback"]["device_cpu_s"] for p in pairs)
    summary = (f"medians of {len(pairs)} pairs: fleet acks {acks_s:.2f} s vs delete on PUBACK {base_s:.2f} s; time "
               f"ratio {med['time_ratio']:.2f} (median of the pairs' ratios); device CPU {cpu_a:.2f} s vs "
               f"{cpu_b:.2f} s ({cpu_a / cpu_b:.2f}x); load average "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(summary)
    out = ROOT / "benchmarks" / "results" / "outbox_acks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"devices": args.devices, "records": args.records, "pairs": pairs,
                               "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
