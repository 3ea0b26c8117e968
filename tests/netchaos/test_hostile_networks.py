"""Hostile networks (issue 13, item 7): three real device daemons, each in its own network namespace behind a veth
pair, stream predictions of real PCB images to a real fleet service and a real Mosquitto in a hub namespace, while

- `nc-lossy` loses 10% of its packets at random, both ways (iptables statistic match), all along, and gets a
  new release through it;
- `nc-slow` sits behind a 256 kbit/s token bucket (tc tbf, which queues) and is cut off for 60 s mid-stream;
- `nc-act` sits behind a 2 Mbit/s token bucket and is cut off for 60 s in the middle of downloading the release
  a rollout just sent it.

The two partitions overlap (they run at once, not one after the other), so the whole module takes about two
minutes. Afterwards every prediction each daemon made is in the fleet store exactly once (counted by record id
against the daemon's own store), the fleet showed each partitioned device offline during its partition and online
after it, and the interrupted activation ended cleanly: the rollout is no longer running, and the device runs what
the fleet last asked of it; the same release rolled out again after the heal activates. Each test prints its
figures (records sent/arrived/duplicated, offline seen at, back at) for the closing note: run with `-s` or `-rP`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.protocol import ACTIVATION_IN_PROGRESS
from tests.agent.conftest import PCB_IMAGES
from tests.conftest import until
from tests.netchaos.netlab import NetLab
from tests.netchaos.rig import Daemon, Feeder, Hub, StatusWatcher, WireCounter

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # namespaces, iptables and 60 s timings: nothing alongside

LOSSY, SLOW, ACT = "nc-lossy", "nc-slow", "nc-act"
PARTITION_S = 60.0
FRAME_EVERY_S = 0.5


def _rollout_done(hub: Hub, rid: str) -> dict[str, Any] | None:
    st = hub.call("GET", f"/api/rollouts/{rid}")
    return st if st["state"] != "running" else None


def _consistent(hub: Hub, device: str) -> dict[str, Any] | None:
    """The device's reported state agrees with the fleet's latest desired state for it, no activation running."""
    want = hub.desired(device)
    dev = hub.devices().get(device) or {}
    rep = dev.get("reported") or {}
    state = (dev.get("activation") or {}).get("state")
    if want and rep.get("active") == want["release"] and (rep.get("desired_revision") or 0) >= want["revision"] \
            and state not in ACTIVATION_IN_PROGRESS:
        return {"desired": want, "active": rep["active"], "desired_revision": rep.get("desired_revision"),
                "activation": state, "last_error": dev.get("last_error")}
    return None


@pytest.fixture(scope="module")
def scenario(netlab: NetLab, tars: dict[str, Path], keys: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the whole scene once (the partitions of the two devices concurrently) and returns what was seen."""
    work = tmp_path_factory.mktemp("netchaos")
    names = [LOSSY, SLOW, ACT]
    for n in names:
        netlab.add_device(n)
    hub = Hub(netlab, work / "hub", keys["trust"], names)
    wire = watcher = feeder = None
    try:
        r1, r2 = hub.release(tars["v1.0"]), hub.release(tars["v1.1"])
        for n in names:  # registered (and grouped) before they first connect
            hub.call("PUT", f"/api/devices/{n}", json={"groups": ["netchaos", f"netchaos-{n}"]})
        wire = WireCounter(netlab.hub_ip)
        watcher = StatusWatcher(hub)
        watcher.start()
        daemons = {n: Daemon(netlab, hub, n, work / n, keys["trust"]) for n in names}
        until(lambda: all(d.alive() and watcher.status(n) == "online" for n, d in daemons.items()), 90,
              "every daemon online at the fleet through its veth")

        # a clean first rollout: every device runs r1 before the network turns hostile
        first = hub.rollout(r1, "netchaos", wave_timeout_s=90)
        done = until(lambda: _rollout_done(hub, first), 120, "the first rollout to finish")
        assert done["state"] == "completed", done
        until(lambda: all(_consistent(hub, n) for n in names), 30, "every device reporting r1 active")

        netlab.loss(LOSSY, 0.10)
        netlab.slow(SLOW, "256kbit")
        netlab.slow(ACT, "2mbit")
        feeder = Feeder(list(daemons.values()), PCB_IMAGES, FRAME_EVERY_S)
        feeder.start()
        until(lambda: hub.store_ids(SLOW)[0] >= 10, 60, f"{SLOW}'s first predictions at the fleet")

        # mid-stream: nc-slow is cut off while it streams
        t: dict[str, dict[str, Any]] = {SLOW: {"cut": netlab.partition(SLOW)}, ACT: {}}
        # mid-activation: nc-act is cut off once its download of r2 is under way (its .part file is growing)
        second = hub.rollout(r2, f"netchaos-{ACT}", wave_timeout_s=40)
        size = tars["v1.1"].stat().st_size
        until(lambda: daemons[ACT].part_bytes() >= size * 4 // 10, 60, f"{ACT} downloading r2")
        t[ACT]["cut"] = netlab.partition(ACT)
        t[ACT]["part_at_cut"] = daemons[ACT].part_bytes()
        t[ACT]["size"] = size
        t[ACT]["activation_at_cut"] = (hub.devices()[ACT].get("activation") or {}).get("state")
        # meanwhile the lossy device gets the same release through its 10% loss
        lossy_rollout = hub.rollout(r2, f"netchaos-{LOSSY}", wave_timeout_s=90)

        # both partitions last PARTITION_S; the fleet must show each device offline meanwhile
        for n in (SLOW, ACT):
            cut = t[n]["cut"]
            until(lambda n=n, cut=cut: watcher.first(n, "offline", cut), PARTITION_S - 5,  # type: ignore[misc]
                  f"the fleet to show {n} offline during its partition")
        for n in sorted((SLOW, ACT), key=lambda n: t[n]["cut"]):
            time.sleep(max(0.0, t[n]["cut"] + PARTITION_S - time.time()))  # the partition's length, by design
            assert watcher.first(n, "online", t[n]["cut"]) is None, f"{n} seen online while cut off"
            t[n]["outbox_at_heal"] = daemons[n].outbox()[0]  # what the daemon kept while cut off
            if n == ACT:  # did the fleet give up on the wave while the device could not answer?
                t[n]["rollout_at_heal"] = hub.call("GET", f"/api/rollouts/{second}")["state"]
            t[n]["healed"] = netlab.heal(n)
        for n in (SLOW, ACT):
            until(lambda n=n: watcher.first(n, "online", t[n]["healed"]), 45,  # type: ignore[misc]
                  f"the fleet to show {n} online after the partition")

        second_done = until(lambda: _rollout_done(hub, second), 60, "the interrupted rollout to end")
        lossy_done = until(lambda: _rollout_done(hub, lossy_rollout), 60, "the rollout over the lossy link to end")
        lossy_state = until(lambda: _consistent(hub, LOSSY), 30, f"{LOSSY} to report its rollout")
        act_state = until(lambda: _consistent(hub, ACT), 60, f"{ACT} to settle on the fleet's desired state")
        # the same release again, over the healed (still 2 Mbit/s) link: this time it activates
        t[ACT]["part_before_repeat"], received = daemons[ACT].part_bytes(), netlab.received_bytes(ACT)
        third = hub.rollout(r2, f"netchaos-{ACT}", wave_timeout_s=60)
        third_done = until(lambda: _rollout_done(hub, third), 75, "the repeated rollout to end")
        t[ACT]["received_in_repeat"] = netlab.received_bytes(ACT) - received
        act_final = until(lambda: _consistent(hub, ACT), 30, f"{ACT} to report the repeated rollout")
        # frames keep coming: the two devices on r2 make their next predictions with it
        def on_r2(n: str) -> bool:
            latest = daemons[n].latest_prediction()
            return latest is not None and f"{latest[0]}@{latest[1]}" == r2
        until(lambda: on_r2(LOSSY) and on_r2(ACT), 30, "predictions from the new release where it was activated")
        feeder.stop()

        def drained() -> bool:
            return all(d.alive() and d.pending_frames() == 0 and d.outbox()[0] == 0
                       and d.local_ids() <= hub.store_ids(n)[1] for n, d in daemons.items())
        until(drained, 90, "every frame processed and every prediction at the fleet")

        out: dict[str, Any] = {"rollouts": {"first": done, "second": second_done, "third": third_done,
                                            "lossy": lossy_done},
                               "act_state": act_state, "act_final": act_final, "lossy_state": lossy_state,
                               "r1": r1, "r2": r2, "times": t, "devices": {}}
        for n, d in daemons.items():
            local = d.local_ids()
            rows, stored = hub.store_ids(n)
            copies, redelivered = wire.copies(n)
            waiting, dropped = d.outbox()
            out["devices"][n] = {
                "conditions": netlab.devices[n].conditions, "fed": feeder.sent[n], "made": len(local),
                "arrived": len(stored), "rows": rows, "lost": sorted(local - stored)[:5],
                "n_lost": len(local - stored), "unknown": len(stored - local), "dup_in_store": rows - len(stored),
                "wire_copies": copies, "wire_redeliveries": redelivered, "outbox_waiting": waiting,
                "outbox_dropped": dropped, "drops": netlab.drops(n), "history": watcher.history.get(n, []),
                "latest_prediction": d.latest_prediction()}
        return out
    finally:
        for obj in (feeder, watcher):
            if obj is not None:
                obj.stop()
        if wire is not None:
            wire.close()
        hub.close()


def _summary(name: str, res: dict[str, Any], times: dict[str, float] | None = None) -> str:
    d = res["devices"][name]
    line = (f"[netchaos] {name} ({', '.join(d['conditions'])}): frames fed {d['fed']}, predictions made {d['made']}, "
            f"arrived {d['arrived']}, lost {d['n_lost']}, duplicated in store {d['dup_in_store']}, "
            f"copies on the wire {d['wire_copies']} ({d['wire_redeliveries']} redelivered), "
            f"packets dropped {d['drops']}")
    if times:
        cut, healed = times["cut"], times["healed"]
        off = next((at for at, s in d["history"] if s == "offline" and cut <= at <= healed), None)
        on = next((at for at, s in d["history"] if s == "online" and at >= healed), None)
        line += (f"; partition {healed - cut:.1f}s, {times['outbox_at_heal']} predictions waiting in the outbox "
                 f"at the heal, fleet showed offline {off - cut:.1f}s after the cut, online {on - healed:.1f}s after "
                 "the heal") if off and on else "; offline/online not seen"
    return line


def _exactly_once(res: dict[str, Any], name: str) -> None:
    d = res["devices"][name]
    assert d["made"] == d["fed"], f"{name}: {d['fed']} frames fed but {d['made']} predictions made"
    assert d["made"] > 0
    assert d["n_lost"] == 0, f"{name}: {d['n_lost']} predictions never reached the fleet, e.g. {d['lost']}"
    assert d["unknown"] == 0, f"{name}: the fleet holds {d['unknown']} predictions the device never made"
    assert d["dup_in_store"] == 0
    assert d["outbox_waiting"] == 0 and d["outbox_dropped"] == 0, d


def _offline_then_online(res: dict[str, Any], name: str) -> None:
    d, t = res["devices"][name], res["times"][name]
    statuses = [(at, s) for at, s in d["history"]]
    off = [at for at, s in statuses if s == "offline" and t["cut"] <= at <= t["healed"]]
    on_during = [at for at, s in statuses if s == "online" and t["cut"] < at < t["healed"]]
    on_after = [at for at, s in statuses if s == "online" and at >= t["healed"]]
    assert off, f"{name}: the fleet never showed it offline during the partition: {statuses}"
    assert not on_during, f"{name}: shown online while cut off: {statuses}"
    assert on_after, f"{name}: not back online after the partition: {statuses}"
    assert statuses[-1][1] == "online"


def test_lossy_link_every_prediction_exactly_once(scenario: dict[str, Any]) -> None:
    d, ro, rep = scenario["devices"][LOSSY], scenario["rollouts"]["lossy"], scenario["lossy_state"]
    offline = sum(1 for _, s in d["history"] if s == "offline")
    print(_summary(LOSSY, scenario) + f"; the fleet saw it offline {offline} time(s)")
    print(f"[netchaos] {LOSSY}: rollout of the new release through the loss {ro['state']}, targets {ro['counts']}; "
          f"device runs {rep['active']} (activation {rep['activation']})")
    assert d["drops"].get("INPUT loss", 0) + d["drops"].get("OUTPUT loss", 0) > 0, "the loss rule dropped nothing"
    # a 3 MB download and activation through 10% loss: TCP carries it, the rollout completes
    assert ro["state"] == "completed" and ro["counts"] == {"active": 1}, ro
    assert rep["active"] == scenario["r2"] and rep["activation"] not in ACTIVATION_IN_PROGRESS
    name, rev = d["latest_prediction"]
    assert f"{name}@{rev}" == scenario["r2"]
    _exactly_once(scenario, LOSSY)


def test_slow_link_partition_mid_stream(scenario: dict[str, Any]) -> None:
    print(_summary(SLOW, scenario, scenario["times"][SLOW]))
    d = scenario["devices"][SLOW]
    assert d["drops"].get("OUTPUT partition", 0) > 0, "the partition dropped nothing: the device was not streaming"
    # it went on making predictions while cut off: they waited in its outbox (about 2 a second for 60 s)
    assert scenario["times"][SLOW]["outbox_at_heal"] >= PARTITION_S / FRAME_EVERY_S / 2
    _offline_then_online(scenario, SLOW)
    _exactly_once(scenario, SLOW)


def test_partition_mid_activation_ends_cleanly(scenario: dict[str, Any]) -> None:
    t = scenario["times"][ACT]
    second, act = scenario["rollouts"]["second"], scenario["act_state"]
    print(_summary(ACT, scenario, t))
    print(f"[netchaos] {ACT}: cut at {t['part_at_cut']} of {t['size']} bytes of r2 "
          f"(fleet saw activation {t['activation_at_cut']!r}); rollout {t['rollout_at_heal']} when the partition "
          f"ended, then {second['state']} "
          f"({second.get('reason')}), targets {second['counts']}; device then ran {act['active']} "
          f"(desired revision {act['desired_revision']}, activation {act['activation']}, "
          f"last error {act['last_error']!r})")
    assert 0 < t["part_at_cut"] < t["size"], "the partition did not come in the middle of the download"
    # the rollout ended one way or the other, never stuck: completed, or halted with its devices rolled back
    assert second["state"] in ("completed", "halted", "rolled_back"), second
    counts = second["counts"]
    assert set(counts) <= {"active", "rolled_back"}, f"a target left mid-way: {counts}"
    want = scenario["r2"] if second["state"] == "completed" else scenario["r1"]
    assert act["active"] == want == act["desired"]["release"], (act, second)
    assert act["activation"] not in ACTIVATION_IN_PROGRESS
    # after the heal the same release is rolled out again over the still slow link: it activates, and the
    # device's latest predictions come from it
    third, final = scenario["rollouts"]["third"], scenario["act_final"]
    print(f"[netchaos] {ACT}: the same release again after the heal: rollout {third['state']}, targets "
          f"{third['counts']}; device runs {final['active']} (activation {final['activation']})")
    assert third["state"] == "completed" and third["counts"] == {"active": 1}, third
    # it resumed the partial download (Range) rather than starting over: it received the rest, not the whole
    rest, got, kept = t["size"] - t["part_before_repeat"], t["received_in_repeat"], t["part_before_repeat"]
    print(f"[netchaos] {ACT}: {kept} bytes kept from the cut download; the repeat received {got} bytes on its "
          f"link for the remaining {rest}")
    assert kept >= t["part_at_cut"] > 0
    assert rest <= got < rest + kept // 2, "the repeat downloaded the whole release again"
    assert final["active"] == scenario["r2"] and final["activation"] not in ACTIVATION_IN_PROGRESS
    name, rev = scenario["devices"][ACT]["latest_prediction"]
    assert f"{name}@{rev}" == scenario["r2"]
    _offline_then_online(scenario, ACT)
    _exactly_once(scenario, ACT)


def test_fleet_store_matches_devices_overall(scenario: dict[str, Any]) -> None:
    """The three devices together: every prediction made arrived once; the first, clean rollout completed."""
    devs = scenario["devices"].values()
    total = {k: sum(d[k] for d in devs) for k in ("fed", "made", "arrived", "n_lost", "dup_in_store",
                                                   "wire_copies", "wire_redeliveries")}
    print(f"[netchaos] all devices: {json.dumps(total)}")
    assert scenario["rollouts"]["first"]["state"] == "completed"
    assert total["made"] == total["arrived"] == total["fed"] and total["n_lost"] == total["dup_in_store"] == 0
