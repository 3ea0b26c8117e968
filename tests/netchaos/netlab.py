"""A small network lab built from Linux network namespaces, for the hostile-network tests.

    root namespace (pytest) --veth-- hub namespace (Mosquitto + `shadowline fleet serve`) --veth-- device i

The hub answers on one address of its own (`hub_ip`, on its loopback) that every device and the test process
reach through their veth pair; nothing leaves the lab's namespaces. The addresses are private (10.B.x.y, with B
chosen so that no route of the root namespace overlaps). Conditions are applied on the device's side of its link:
random loss with iptables' `statistic` match, a slow link with a `tbf` qdisc on both ends (it also queues), and
a partition that DROPs everything but the device's own loopback. `close()` kills what was started inside and
deletes every namespace, which takes their veths, qdiscs and iptables rules with them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "slnc"  # namespace names: slnc-<pid>-hub, slnc-<pid>-d<i>


def run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    p = subprocess.run(full, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} -> exit {p.returncode}: {p.stderr.strip()}")
    return p


def unavailable() -> str | None:
    """Why this machine cannot build the lab (None when it can): not root, a tool missing, or the kernel refusing
    namespaces, veths, tbf or the iptables statistic match. Probed by doing each once in a throwaway namespace."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the suite as root to get the hostile-network tests"
    missing = [t for t in ("ip", "tc", "iptables") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}: install the Debian packages iproute2 and iptables (scripts/install.sh)"
    ns = f"{PREFIX}-{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", ns)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return f"cannot create a network namespace here: {err}"
    try:
        run("ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1", ns=ns)
        run("tc", "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "256kbit", "burst", "16kbit", "latency",
            "400ms", ns=ns)
        run("iptables", "-A", "OUTPUT", "-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP",
            ns=ns)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return f"network namespaces work but a needed feature does not: {err}"
    finally:
        run("ip", "netns", "del", ns, check=False)
    return None


def remove_stale() -> None:
    """Delete lab namespaces left by an earlier run of these tests whose pytest process is gone (killed before its
    finalizers ran), with the processes still running inside them."""
    p = run("ip", "netns", "list", check=False)
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                # the daemons, broker and fleet that run left inside (each by its pid), then the namespace
                for left in run("ip", "netns", "pids", name, check=False).stdout.split():
                    try:
                        os.kill(int(left), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                run("ip", "netns", "del", name, check=False)


def _free_octet() -> int:
    """B such that 10.B.0.0/16 overlaps no address or route of the root namespace (nor another live lab)."""
    used = run("ip", "-4", "route", "show", "table", "all").stdout + run("ip", "-4", "addr").stdout
    nets = []
    for tok in used.split():
        try:
            nets.append(ipaddress.ip_network(tok, strict=False))
        except ValueError:
            continue
    for b in range(231, 251):
        mine = ipaddress.ip_network(f"10.{b}.0.0/16")
        if not any(n.overlaps(mine) for n in nets if n.prefixlen > 0):
            return b
    raise RuntimeError("no free 10.B.0.0/16 between 10.231 and 10.250 for the test's namespaces")


@dataclass
class Device:
    name: str
    ns: str
    ip: str
    gateway: str
    hub_if: str
    conditions: list[str] = field(default_factory=list)
    partition_drops: dict[str, int] = field(default_factory=dict)


class NetLab:
    def __init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.b = _free_octet()
        self.hub = f"{self.tag}-hub"
        self.hub_ip = f"10.{self.b}.255.1"
        self.root_if = f"{PREFIX}{os.getpid() % 100000}"
        self.devices: dict[str, Device] = {}
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self._add_ns(self.hub)
        try:
            run("ip", "link", "set", "lo", "up", ns=self.hub)
            run("ip", "addr", "add", f"{self.hub_ip}/32", "dev", "lo", ns=self.hub)
            run("ip", "link", "add", self.root_if, "type", "veth", "peer", "name", "up0", "netns", self.hub)
            run("ip", "addr", "add", f"10.{self.b}.254.1/30", "dev", self.root_if)
            run("ip", "link", "set", self.root_if, "up")
            run("ip", "addr", "add", f"10.{self.b}.254.2/30", "dev", "up0", ns=self.hub)
            run("ip", "link", "set", "up0", "up", ns=self.hub)
            run("ip", "route", "add", f"{self.hub_ip}/32", "via", f"10.{self.b}.254.2")
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)

    def add_device(self, name: str) -> Device:
        i = len(self.devices) + 1
        ns = f"{self.tag}-d{i}"
        self._add_ns(ns)
        hub_if = f"dev{i}"
        gw, ip = f"10.{self.b}.{i}.1", f"10.{self.b}.{i}.2"
        run("ip", "link", "set", "lo", "up", ns=ns)
        run("ip", "link", "add", hub_if, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.hub)
        run("ip", "addr", "add", f"{gw}/30", "dev", hub_if, ns=self.hub)
        run("ip", "link", "set", hub_if, "up", ns=self.hub)
        run("ip", "addr", "add", f"{ip}/30", "dev", "eth0", ns=ns)
        run("ip", "link", "set", "eth0", "up", ns=ns)
        run("ip", "route", "add", f"{self.hub_ip}/32", "via", gw, ns=ns)
        # a rule without a target only counts: the bytes the device receives (see received_bytes)
        run("iptables", "-A", "INPUT", "-i", "eth0", "-m", "comment", "--comment", "received", ns=ns)
        dev = Device(name, ns, ip, gw, hub_if)
        self.devices[name] = dev
        return dev

    # -- processes -----------------------------------------------------------------------------------------------
    def popen(self, ns: str, cmd: Sequence[str], **kw) -> subprocess.Popen:
        """Start `cmd` inside namespace `ns` (ip netns exec replaces itself with the command: the pid is its)."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 20) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    # -- conditions ----------------------------------------------------------------------------------------------
    def loss(self, name: str, probability: float) -> None:
        """Drop each packet the device sends or receives with `probability` (iptables statistic match)."""
        d = self.devices[name]
        for chain in ("INPUT", "OUTPUT"):
            iface = "-i" if chain == "INPUT" else "-o"
            run("iptables", "-A", chain, iface, "eth0", "-m", "statistic", "--mode", "random", "--probability",
                f"{probability}", "-j", "DROP", ns=d.ns)
        d.conditions.append(f"loss {probability:.0%}")

    def slow(self, name: str, rate: str, burst: str = "16kbit", latency: str = "400ms") -> None:
        """A token bucket of `rate` on both ends of the device's link: uploads and downloads both queue."""
        d = self.devices[name]
        run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", burst, "latency", latency,
            ns=d.ns)
        run("tc", "qdisc", "add", "dev", d.hub_if, "root", "tbf", "rate", rate, "burst", burst, "latency", latency,
            ns=self.hub)
        d.conditions.append(f"tbf {rate}")

    def partition(self, name: str) -> float:
        """Silently drop everything to and from the device (its own loopback keeps working); returns the time."""
        d = self.devices[name]
        run("iptables", "-I", "INPUT", "1", "-i", "eth0", "-j", "DROP", "-m", "comment", "--comment", "partition",
            ns=d.ns)
        run("iptables", "-I", "OUTPUT", "1", "-o", "eth0", "-j", "DROP", "-m", "comment", "--comment", "partition",
            ns=d.ns)
        return time.time()

    def heal(self, name: str) -> float:
        """Lift the partition (the packets its rules dropped are kept in `partition_drops`); returns the time."""
        d = self.devices[name]
        d.partition_drops = {k: v for k, v in self.drops(name).items() if "partition" in k}
        for chain, iface in (("INPUT", "-i"), ("OUTPUT", "-o")):
            run("iptables", "-D", chain, iface, "eth0", "-j", "DROP", "-m", "comment", "--comment", "partition",
                ns=d.ns)
        return time.time()

    def drops(self, name: str) -> dict[str, int]:
        """Packets the device's DROP rules dropped so far, by chain and rule (loss / partition), including a lifted
        partition's."""
        out = run("iptables", "-L", "-v", "-n", "-x", ns=self.devices[name].ns).stdout
        counts: dict[str, int] = dict(self.devices[name].partition_drops)
        chain = ""
        for line in out.splitlines():
            parts = line.split()
            if line.startswith("Chain"):
                chain = parts[1]
            elif parts and parts[0].isdigit() and len(parts) > 2 and parts[2] == "DROP":
                key = f"{chain} {'partition' if 'partition' in line else 'loss'}"
                counts[key] = counts.get(key, 0) + int(parts[0])
        return counts

    def received_bytes(self, name: str) -> int:
        """Bytes (IP packets, headers included) the device has received on its link and not dropped before."""
        out = run("iptables", "-L", "INPUT", "-v", "-n", "-x", ns=self.devices[name].ns).stdout
        line = next(line for line in out.splitlines() if "/* received */" in line)
        return int(line.split()[1])

    # -- cleanup -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        # the root end of the hub's veth goes with the hub namespace; its route with it
        run("ip", "link", "del", self.root_if, check=False)

    def leftovers(self) -> list[str]:
        """Namespaces or links of this lab still present (empty after close())."""
        names = run("ip", "netns", "list", check=False).stdout
        left = [ns for ns in self.namespaces if ns in names.split()]
        if run("ip", "link", "show", self.root_if, check=False).returncode == 0:
            left.append(self.root_if)
        return left
