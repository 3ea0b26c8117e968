"""What signing the control messages costs (fleet/control.py, edge/agent/control.py): on the fleet, building and
encoding N desired states signed vs unsigned (the baseline: what the fleet did before); on the device, decoding a
desired state and checking its signature vs decoding only. Side by side in one run, median of --repeat paired runs
(order alternated). Prints messages/s of both sides, the ratios (signed / unsigned time; 1.0 = free) and the load
average during the run.

    python benchmarks/control_signing.py [--messages 2000] [--repeat 5] [--quick]
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

from edge.agent.config import AgentConfig  # noqa: E402
from edge.agent.control import ControlGuard  # noqa: E402
from fleet.control import ControlSigner, ensure_control_key  # noqa: E402
from fleet.protocol import Artifact, Desired, ReleaseSpec, StageSpec, Topics, decode, encode  # noqa: E402

RELEASE = ReleaseSpec(name="pcb-line", revision=7, mode="shadow", stages=[
    StageSpec(role="screen", bundle="pcb-aoi-v1.0", candidate_classes=["Defective"], threshold=0.5),
    StageSpec(role="verify", bundle="pcb-aoi-v1.1", thresholds={"default": 0.5, "Defective": 0.4})])
ARTIFACTS = [Artifact(bundle=b, url=f"https://fleet.plant.example/artifacts/{b}.tar", sha256="ab" * 32, size=9_000_000)
             for b in ("pcb-aoi-v1.0", "pcb-aoi-v1.1")]


def fleet_side(n: int, signer: ControlSigner | None) -> tuple[float, list[bytes]]:
    t0 = time.perf_counter()
    out = []
    for i in range(n):
        msg = Desired(device="cam", revision=i + 1, release=RELEASE, artifacts=ARTIFACTS)
        out.append(encode(signer.desired(msg) if signer is not None else msg))
    return time.perf_counter() - t0, out


def device_side(payloads: list[bytes], guard: ControlGuard | None) -> float:
    topic = Topics().device("cam", "desired")
    t0 = time.perf_counter()
    for p in payloads:
        d = decode(topic, p, Desired)
        assert isinstance(d, Desired)
        if guard is not None:
            guard.check_desired(topic, p, d)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="300 messages, 3 paired runs (CI)")
    args = ap.parse_args()
    if args.quick or os.environ.get("SHADOWLINE_BENCH_QUICK"):
        args.messages, args.repeat = 300, 3
    with tempfile.TemporaryDirectory() as d:
        key, pub = ensure_control_key(Path(d))
        signer = ControlSigner(key, pub)
        guard = ControlGuard(AgentConfig(broker_url="mqtt://127.0.0.1:1", releases_dir=Path(d) / "rel",
                                         fleet_keys=[pub]), "cam")
        load = [os.getloadavg()]
        fleet_pairs, device_pairs = [], []
        for r in range(args.repeat):
            first = r % 2 == 0
            if first:
                ts, signed = fleet_side(args.messages, signer)
                tu, plain = fleet_side(args.messages, None)
                vs, vu = device_side(signed, guard), device_side(plain, None)
            else:
                tu, plain = fleet_side(args.messages, None)
                ts, signed = fleet_side(args.messages, signer)
                vu, vs = device_side(plain, None), device_side(signed, guard)
            fleet_pairs.append((ts, tu))
            device_pairs.append((vs, vu))
            load.append(os.getloadavg())
            print(f"run {r + 1}: fleet signed {args.messages / ts:,.0f}/s vs unsigned {args.messages / tu:,.0f}/s; "
                  f"device verified {args.messages / vs:,.0f}/s vs decoded only {args.messages / vu:,.0f}/s",
                  flush=True)
    n = args.messages
    result = {"messages": n, "repeat": args.repeat,
              "fleet_signed_per_s": n / statistics.median(s for s, _ in fleet_pairs),
              "fleet_unsigned_per_s": n / statistics.median(u for _, u in fleet_pairs),
              "fleet_ratio": statistics.median(s / u for s, u in fleet_pairs),
              "fleet_us_per_message_added": statistics.median((s - u) / n * 1e6 for s, u in fleet_pairs),
              "device_verified_per_s": n / statistics.median(s for s, _ in device_pairs),
              "device_decoded_per_s": n / statistics.median(u for _, u in device_pairs),
              "device_ratio": statistics.median(s / u for s, u in device_pairs),
              "device_us_per_message_added": statistics.median((s - u) / n * 1e6 for s, u in device_pairs),
              "load_average": [round(x, 2) for x in max(load)]}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "control_signing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"signed control messages: fleet {result['fleet_signed_per_s']:,.0f}/s vs {result['fleet_unsigned_per_s']:,.0f}"
          f"/s unsigned (time ratio {result['fleet_ratio']:.2f}, +{result['fleet_us_per_message_added']:.0f} us per "
          f"desired state); device {result['device_verified_per_s']:,.0f}/s verified vs "
          f"{result['device_decoded_per_s']:,.0f}/s decoded only (time ratio {result['device_ratio']:.2f}, "
          f"+{result['device_us_per_message_added']:.0f} us); median of {args.repeat} paired runs; load average "
          f"{os.getloadavg()[0]:.2f} (max during run {max(x[0] for x in load):.2f})")


if __name__ == "__main__":
    main()
