"""Pod lifecycle on the local cluster: deletion, garbage collection, faults."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cluster import objects as o
from localcluster import Cluster
from localcluster.network import bridge_mac, netns_exists, run
from localcluster.procs import ProcRecord

pytestmark = pytest.mark.cluster


def running_handle(cluster: Cluster, ns: str, name: str) -> ProcRecord:
    cluster.wait_for(lambda: cluster.pod_ready(ns, name), timeout=60, what=f"{ns}/{name} Ready")
    pid = cluster.pod(ns, name).containers["main"]
    rec = ProcRecord.of(pid)
    assert rec is not None, f"container process {pid} of {ns}/{name} is not alive"
    return rec


def test_pod_delete_ends_process_and_removes_netns(cluster: Cluster, namespace: str) -> None:
    cluster.apply(o.dump(o.sleeper("victim")), namespace)
    rec = running_handle(cluster, namespace, "victim")
    netns = cluster.pod(namespace, "victim").netns
    assert netns_exists(netns)

    cluster.kubectl("delete", "pod", "victim", "-n", namespace, "--wait=true", "--timeout=30s")
    assert cluster.get("pod", "victim", namespace) is None
    cluster.wait_for(lambda: not rec.alive(), timeout=10, what="container process to end")
    cluster.wait_for(lambda: not netns_exists(netns), timeout=10, what=f"netns {netns} removed")
    # Ports coming and going never change the bridge's (the gateway's) MAC.
    link = run(["ip", "-br", "link", "show", cluster.cfg.bridge]).stdout.split()
    assert link[2] == bridge_mac(cluster.cfg)


def test_graceful_deletion_sends_sigterm_first(cluster: Cluster, namespace: str) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*a):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('started', flush=True)\n"
        "time.sleep(100000)\n"
    )
    cluster.apply(o.dump(o.pod("graceful", [o.container("main", [o.PY, "-c", script])])), namespace)
    running_handle(cluster, namespace, "graceful")
    cluster.wait_for(lambda: "started" in cluster.logs(namespace, "graceful", "main"))
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--timeout=30s")
    assert "got SIGTERM" in cluster.logs(namespace, "graceful", "main")


def test_deleting_owner_garbage_collects_children(cluster: Cluster, namespace: str) -> None:
    cluster.apply(o.dump(o.deployment("owned", 2, o.http_server())), namespace)
    cluster.kubectl("rollout", "status", "deployment/owned", "-n", namespace, "--timeout=60s")
    pods = cluster.get("pods", namespace=namespace)["items"]
    assert len(pods) == 2
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" for p in pods)
    assert len(cluster.get("replicasets", namespace=namespace)["items"]) == 1

    cluster.kubectl("delete", "deployment", "owned", "-n", namespace, "--cascade=background")
    cluster.wait_for(
        lambda: (
            not cluster.get("replicasets", namespace=namespace)["items"]
            and not cluster.get("pods", namespace=namespace)["items"]
        ),
        timeout=60,
        what="ReplicaSet and pods garbage-collected",
    )


def fetch(cluster: Cluster, ns: str, client: str, url: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=2).status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e); sys.exit(1)\n"
    )
    return cluster.exec_in_pod(ns, client, [o.PY, "-c", script])


def test_cut_times_out_and_restore_recovers(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        o.dump(o.pod("srv", [o.http_server("main")]), o.service("srv", 8000), o.sleeper("cli")),
        namespace,
    )
    running_handle(cluster, namespace, "srv")
    running_handle(cluster, namespace, "cli")
    url = f"http://srv.{namespace}.svc.cluster.local:8000/"
    cluster.wait_for(lambda: fetch(cluster, namespace, "cli", url).returncode == 0, what="reach")

    cluster.faults.cut(namespace, "srv")
    assert cluster.faults.is_cut(namespace, "srv")
    cut = fetch(cluster, namespace, "cli", url)
    assert cut.returncode == 1
    assert "timed out" in cut.stdout
    # The host side stays reachable, so the kubelet's probes keep the pod Ready.
    assert cluster.pod_ready(namespace, "srv")

    cluster.faults.restore(namespace, "srv")
    assert not cluster.faults.is_cut(namespace, "srv")
    ok = fetch(cluster, namespace, "cli", url)
    assert (ok.returncode, ok.stdout.strip()) == (0, "200")


def test_cut_only_from_one_peer(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        o.dump(o.pod("srv", [o.http_server("main")]), o.sleeper("a"), o.sleeper("b")), namespace
    )
    for name in ("srv", "a", "b"):
        running_handle(cluster, namespace, name)
    url = f"http://{cluster.pod(namespace, 'srv').ip}:8000/"
    cluster.faults.cut(namespace, "srv", peer="a")
    assert fetch(cluster, namespace, "a", url).returncode == 1
    assert fetch(cluster, namespace, "b", url).returncode == 0
    cluster.faults.restore(namespace, "srv")
    assert fetch(cluster, namespace, "a", url).returncode == 0


def test_kill_restarts_per_restart_policy(cluster: Cluster, namespace: str) -> None:
    cluster.apply(o.dump(o.sleeper("always")), namespace)
    first = running_handle(cluster, namespace, "always")
    killed = cluster.faults.kill(namespace, "always")
    assert killed == [first.pid]

    def restarted() -> bool:
        pod = cluster.get("pod", "always", namespace)
        st = pod["status"]["containerStatuses"][0]
        return bool(st["restartCount"] == 1 and "running" in st["state"])

    cluster.wait_for(restarted, timeout=30, what="container restarted once")
    st = cluster.get("pod", "always", namespace)["status"]["containerStatuses"][0]
    assert st["lastState"]["terminated"]["exitCode"] == 137
    assert not first.alive()
    new_pid = cluster.pod(namespace, "always").containers["main"]
    assert new_pid != first.pid
    assert os.path.exists(f"/proc/{new_pid}")


def localcluster_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "localcluster", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_fault_cli_cut_restore_kill(cluster: Cluster, namespace: str) -> None:
    cluster.apply(o.dump(o.sleeper("target")), namespace)
    first = running_handle(cluster, namespace, "target")
    ref = f"{namespace}/target"
    assert localcluster_cli("fault", "cut", ref).returncode == 0
    assert cluster.faults.is_cut(namespace, "target")
    assert localcluster_cli("fault", "restore", ref).returncode == 0
    assert not cluster.faults.is_cut(namespace, "target")
    killed = localcluster_cli("fault", "kill", ref)
    assert (killed.returncode, killed.stdout.split()) == (0, [str(first.pid)])
    cluster.wait_for(lambda: not first.alive(), timeout=10, what="killed process gone")
    missing = localcluster_cli("fault", "cut", f"{namespace}/nope")
    assert missing.returncode == 1
    assert "is not running" in missing.stderr
    status = localcluster_cli("status")
    assert status.returncode == 0
    assert "node Ready               True" in status.stdout


def test_failing_liveness_probe_restarts_container(cluster: Cluster, namespace: str) -> None:
    server = o.http_server("main")
    server["livenessProbe"] = {
        "httpGet": {"path": "/missing", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    p = o.pod("unhealthy", [server])
    p["spec"]["terminationGracePeriodSeconds"] = 1
    cluster.apply(o.dump(p), namespace)

    def restarted() -> dict[str, Any] | None:
        pod = cluster.get("pod", "unhealthy", namespace)
        sts = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return pod if sts[0].get("restartCount", 0) >= 1 else None

    pod = cluster.wait_for(restarted, timeout=40, what="a liveness restart")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["message"] == "liveness probe failed"
    assert last["exitCode"] != 0


def test_exec_and_tcp_readiness_probes(cluster: Cluster, namespace: str) -> None:
    check = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=1)"
    by_exec = o.http_server("main")
    by_exec["readinessProbe"] = {"exec": {"command": ["python", "-c", check]}, "periodSeconds": 1}
    by_tcp = o.http_server("main")
    by_tcp["readinessProbe"] = {"tcpSocket": {"port": 8000}, "periodSeconds": 1}
    cluster.apply(o.dump(o.pod("byexec", [by_exec]), o.pod("bytcp", [by_tcp])), namespace)
    for name in ("byexec", "bytcp"):
        ready = functools.partial(cluster.pod_ready, namespace, name)
        cluster.wait_for(ready, what=f"{name} Ready")
