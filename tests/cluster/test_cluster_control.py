"""`up`/`down`/`status` on a second, throw-away cluster instance.

It has its own state directory, ports, bridge, subnet and name prefix, so it
runs beside the shared cluster without touching it: up is idempotent, up
recovers from a crashed run, down removes every process, netns, veth,
bridge and iptables rule it made.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import objects as o
from localcluster import Cluster, control, network, procs
from localcluster.config import ClusterConfig

pytestmark = pytest.mark.cluster


@pytest.fixture
def side(tmp_path: Path) -> Iterator[ClusterConfig]:
    cfg = ClusterConfig.scratch(tmp_path / "lc", index=2)
    yield cfg
    control.down(cfg, quiet=True)


def recorded(cfg: ClusterConfig) -> dict[str, procs.ProcRecord]:
    out = {}
    for name in control.COMPONENTS:
        rec = procs.read_pidfile(control.pidfile(cfg, name))
        assert rec is not None, f"no pid file for {name}"
        out[name] = rec
    return out


def host_leftovers(cfg: ClusterConfig) -> list[str]:
    found = [f"netns {n}" for n in network.list_pod_netns(cfg.prefix)]
    links = network.run(["ip", "-o", "link", "show"]).stdout
    found += [f"link {cfg.bridge}"] if f": {cfg.bridge}:" in links else []
    found += [f"veth {cfg.prefix}h" for _ in range(links.count(f": {cfg.prefix}h"))]
    rules = network.run(["iptables", "-S"]).stdout
    found += [r for r in rules.splitlines() if network.rule_comment(cfg) + " " in r + " "]
    return found


def test_up_is_idempotent_recovers_and_down_cleans(side: ClusterConfig) -> None:
    took = control.up(side)
    assert took < 60
    first = recorded(side)
    assert all(rec.alive() for rec in first.values())
    assert control.status(side)["node_ready"] is True
    # the shared neighbour table is large enough for many meshed pods
    for key, want in network.NEIGH_LIMITS.items():
        assert int(Path(f"/proc/sys/net/ipv4/neigh/default/{key}").read_text()) >= want
    link = network.run(["ip", "-br", "link", "show", side.bridge]).stdout.split()
    assert link[2] == network.bridge_mac(side)

    # A second `up` reuses the running cluster.
    t0 = time.monotonic()
    control.up(side)
    assert time.monotonic() - t0 < 5
    assert recorded(side) == first

    # A pod runs in this instance, in a netns with this instance's prefix.
    c = Cluster(side)
    c.apply(o.dump(o.sleeper("s")), "default")
    c.wait_for(lambda: c.pod_ready("default", "s"), timeout=60, what="pod s Ready")
    netns = c.pod("default", "s").netns
    assert netns.startswith("rl2-")
    assert network.netns_exists(netns)

    # Restarting only the kubelet (new code) restarts the pod, objects stay.
    old_pid = c.pod("default", "s").containers["main"]
    control.restart(side, "kubelet")

    def rerun() -> bool:
        pid = c.pod("default", "s").containers.get("main")
        return bool(pid and pid != old_pid and c.pod_ready("default", "s"))

    c.wait_for(rerun, timeout=30, what="pod s running again under the new kubelet")
    assert len(c.get("pod", "s", "default")["status"]["podIPs"]) == 1
    first = recorded(side)

    # Crash: the kubelet and the apiserver die without cleaning up.
    for name in ("kubelet", "kube-apiserver"):
        os.kill(first[name].pid, signal.SIGKILL)
    c.wait_for(lambda: not control.healthy(side), timeout=10, what="cluster seen unhealthy")
    assert network.netns_exists(netns)  # the crash left the pod's netns behind

    control.up(side)
    second = recorded(side)
    assert all(rec.alive() for rec in second.values())
    assert not any(first[n].alive() for n in control.COMPONENTS)
    assert not network.netns_exists(netns)
    assert control.status(side)["node_ready"] is True

    report = control.down(side, quiet=True)
    assert any("stopped kube-apiserver" in line for line in report)
    assert not any(rec.alive() for rec in second.values())
    assert host_leftovers(side) == []
    # down again: nothing left to do, no error
    assert control.down(side, quiet=True) == []
    # the shared cluster's bridge is untouched by this instance's down
    assert side.bridge != ClusterConfig.default().bridge
