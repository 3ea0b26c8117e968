"""What validation at the edge of ingest (fleet/validation.py) costs: the real Ingest.handle_many of the same
prediction batches into a fresh SQLite store, with the validator and with it switched off (records passed through
unchecked), side by side in one run, median of --repeat paired runs. Prints records/s of both, the ratio
(validated / unvalidated; 1.0 = free) and the load average during the run.

    python benchmarks/ingest_validation.py [--batches 80] [--per-batch 500] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet.devices import Devices  # noqa: E402
from fleet.ingest import Ingest  # noqa: E402
from fleet.protocol import Batch, PredictionRecord, StageOutput, Topics, encode  # noqa: E402
from fleet.store import Store  # noqa: E402


class PassThrough:
    """The baseline: no checks at all (what ingest did before validation existed)."""

    def screen(self, kind, device, records, pending, received=None):  # type: ignore[no-untyped-def]
        return list(records), []


def batches(n: int, per: int) -> list[tuple[str, bytes]]:
    t = Topics()
    out = []
    for b in range(n):
        dev = f"bench-{b % 4:02d}"
        recs = [PredictionRecord(device=dev, source=f"capture:cam#{b * per + i}", release="seal", revision=3,
                                 mode="shadow", decision="flag" if i % 7 == 0 else "pass",
                                 models={"verify": "pcb-aoi-v1.0"}, thresholds={"verify": {"default": 0.5}},
                                 stages=[StageOutput(role="verify", bundle="pcb-aoi-v1.0",
                                                     scores={"Defective": 0.3, "Normal": 0.7}, latency_ms=4.2)],
                                 flagged=[("Defective", 0.9)] if i % 7 == 0 else [], top_label="Normal",
                                 top_score=0.7, latency_ms={"verify": 4.2, "total": 5.0 + i % 3}).model_dump(mode="json")
                for i in range(per)]
        out.append((t.device(dev, "predictions"), encode(Batch(device=dev, kind="predictions", records=recs))))
    return out


def run(payloads: list[tuple[str, bytes]], validate: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "fleet.db")
        ingest = Ingest(store, Devices(store), Topics())
        if not validate:
            ingest.validator = PassThrough()  # type: ignore[assignment]
        t0 = time.perf_counter()
        for i in range(0, len(payloads), 10):  # the service's groups: several messages per transaction
            ingest.handle_many(payloads[i:i + 10])
        dt = time.perf_counter() - t0
        n = store.count("predictions")
        store.close()
    assert ingest.stats.refused == 0, ingest.stats.as_dict()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=80)
    ap.add_argument("--per-batch", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="20 batches, 3 paired runs (CI)")
    args = ap.parse_args()
    if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK"):
        args.batches, args.repeat = 20, 3
    payloads = batches(args.batches, args.per_batch)
    load = [os.getloadavg()]
    pairs = []
    for r in range(args.repeat):
        first = r % 2 == 0  # alternate the order so drift in machine load falls on both sides
        a = run(payloads, validate=first)
        b = run(payloads, validate=not first)
        with_v, without = (a, b) if first else (b, a)
        pairs.append((with_v, without))
        load.append(os.getloadavg())
        print(f"run {r + 1}: validated {with_v:,.0f} records/s, unvalidated {without:,.0f} records/s, "
              f"ratio {with_v / without:.3f}", flush=True)
    ratio = statistics.median(w / o for w, o in pairs)
    result = {"records": args.batches * args.per_batch, "validated_per_s": statistics.median(w for w, _ in pairs),
              "unvalidated_per_s": statistics.median(o for _, o in pairs), "ratio": ratio,
              "load_average": [round(x, 2) for x in max(load)]}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"validated ingest {result['validated_per_s']:,.0f} records/s vs {result['unvalidated_per_s']:,.0f} "
          f"unvalidated (same batches, same run): ratio {ratio:.3f} (median of {args.repeat}); "
          f"load average {os.getloadavg()[0]:.2f} (max during run {max(x[0] for x in load):.2f})")


if __name__ == "__main__":
    main()
