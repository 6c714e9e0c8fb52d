"""`up`/`down`/`status` on a second, throw-away control plane.

It has its own state directory and ports, so it runs beside the shared one
without touching it: up is idempotent, up recovers from a crashed run, down
stops every process it started and removes etcd's data.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster import Cluster, control, procs
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


def test_up_is_idempotent_recovers_and_down_cleans(side: ClusterConfig) -> None:
    control.up(side)
    first = recorded(side)
    assert all(rec.alive() for rec in first.values())
    assert control.status(side)["apiserver_ready"] is True

    # A second `up` reuses the running control plane.
    t0 = time.monotonic()
    control.up(side)
    assert time.monotonic() - t0 < 5
    assert recorded(side) == first

    # Objects live in this instance only, and survive a component restart.
    c = Cluster(side)
    c.kubectl("create", "configmap", "kept", "-n", "default", "--from-literal=a=1")
    control.restart(side, "kube-apiserver")
    assert c.get("configmap", "kept", "default")["data"] == {"a": "1"}
    shared = Cluster(ClusterConfig.default())
    if control.healthy(shared.cfg):
        assert shared.get("configmap", "kept", "default") is None
    first = recorded(side)

    # Crash: the apiserver and the controller manager die without cleaning up.
    for name in ("kube-apiserver", "kube-controller-manager"):
        os.kill(first[name].pid, signal.SIGKILL)
    c.wait_for(lambda: not control.healthy(side), timeout=10, what="cluster seen unhealthy")

    control.up(side)
    second = recorded(side)
    assert all(rec.alive() for rec in second.values())
    assert not any(first[n].alive() for n in control.COMPONENTS)
    assert control.status(side)["apiserver_ready"] is True

    report = control.down(side, quiet=True)
    assert any("stopped kube-apiserver" in line for line in report)
    assert not any(rec.alive() for rec in second.values())
    assert not side.etcd_dir.exists()
    # down again: nothing left to do, no error
    assert control.down(side, quiet=True) == []
