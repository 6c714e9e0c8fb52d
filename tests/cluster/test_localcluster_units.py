"""The test kubelet's pure parts, without a cluster: DNS, env, status, faults."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
from localcluster import pki
from localcluster.config import ClusterConfig
from localcluster.faults import cut_rules, split_ref
from localcluster.kubelet import specs
from localcluster.kubelet.runtime import IpPool, write_in_place


def mkpod(
    name: str, ns: str = "ns", ip: str | None = "10.77.0.5", ready: bool = True, **spec: Any
) -> dict[str, Any]:
    labels = spec.pop("labels", {"app": "x"})
    status: dict[str, Any] = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels},
        "spec": spec,
        "status": status,
    }


def svc(name: str, ns: str = "ns", publish: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": "x"}, "publishNotReadyAddresses": publish},
    }


def lines_for(hosts: str, name: str) -> list[str]:
    return sorted(line.split("\t")[0] for line in hosts.splitlines() if name in line.split())


def test_hosts_lists_ready_endpoints_and_headless_hostnames() -> None:
    a = mkpod("a", ip="10.77.0.2", hostname="a", subdomain="loop")
    b = mkpod("b", ip="10.77.0.3", hostname="b", subdomain="loop")
    unready = mkpod("c", ip="10.77.0.4", ready=False)
    other_ns = mkpod("d", ns="other", ip="10.77.0.9")
    hosts = specs.hosts_file(a, [a, b, unready, other_ns], [svc("loop")], "cluster.local")
    assert lines_for(hosts, "loop.ns.svc.cluster.local") == ["10.77.0.2", "10.77.0.3"]
    assert lines_for(hosts, "loop") == ["10.77.0.2", "10.77.0.3"]
    assert lines_for(hosts, "b.loop.ns.svc.cluster.local") == ["10.77.0.3"]
    assert lines_for(hosts, "a.loop.ns.svc.cluster.local") == ["10.77.0.2", "10.77.0.2"]


def test_hosts_publish_not_ready_and_terminating() -> None:
    unready = mkpod("u", ip="10.77.0.4", ready=False, hostname="u", subdomain="h")
    gone = mkpod("g", ip="10.77.0.6")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    me = mkpod("me", ns="elsewhere", ip="10.77.0.7")
    hosts = specs.hosts_file(me, [unready, gone], [svc("h", publish=True), svc("s")], "c.l")
    assert lines_for(hosts, "u.h.ns.svc.c.l") == ["10.77.0.4"]
    assert lines_for(hosts, "s.ns.svc.c.l") == []
    # short names only for the pod's own namespace
    assert lines_for(hosts, "h") == []


def test_container_env_resolves_refs_in_order() -> None:
    pod = mkpod("p", serviceAccountName="sa", nodeName="n1")
    cms = {"cm": {"data": {"A": "1", "B": "2"}}}
    secrets = {"s": {"data": {"k": base64.b64encode(b"v").decode()}}}
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "X", "value": "$(P_A)-$(NOPE)-$$"},
        ],
    }
    env = specs.container_env(pod, container, {"BASE": "b"}, cms, secrets)
    assert env == {
        "BASE": "b",
        "P_A": "1",
        "P_B": "2",
        "IP": "10.77.0.5",
        "SA": "sa",
        "S": "v",
        "X": "1-$(NOPE)-$",
    }


def test_container_env_missing_reference_is_a_config_error() -> None:
    container = {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(specs.ConfigError, match="secret 's' not found"):
        specs.container_env(mkpod("p"), container, {}, {}, {})
    optional = {
        "env": [
            {
                "name": "S",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
            }
        ]
    }
    assert specs.container_env(mkpod("p"), optional, {}, {}, {}) == {}


@pytest.mark.parametrize(
    ("states", "codes", "policy", "phase"),
    [
        (["running"], [None], "Always", "Running"),
        (["terminated"], [0], "Never", "Succeeded"),
        (["terminated"], [1], "Never", "Failed"),
        (["terminated"], [1], "OnFailure", "Pending"),
        (["terminated", "running"], [0, None], "Never", "Running"),
        (["waiting"], [None], "Always", "Pending"),
    ],
)
def test_pod_phase(states: list[str], codes: list[int | None], policy: str, phase: str) -> None:
    views = [
        specs.ContainerView(name=f"c{i}", image="i", state=s, exit_code=c)
        for i, (s, c) in enumerate(zip(states, codes, strict=True))
    ]
    assert specs.pod_phase(views, policy, sandbox_ready=True) == phase


def test_pod_status_keeps_transition_time_when_unchanged() -> None:
    pod = mkpod("p")
    view = specs.ContainerView(name="c", image="i", state="running", ready=True, started_at="t0")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    first = specs.pod_status(pod, [view], True, "10.77.0.5", "10.77.0.1", "t0", "t1", pod["status"])
    assert {"type": "PodScheduled", "status": "True"} in first["conditions"]
    again = specs.pod_status(pod, [view], True, "10.77.0.5", "10.77.0.1", "t0", "t2", first)
    assert first["conditions"] == again["conditions"]
    assert again["podIPs"] == [{"ip": "10.77.0.5"}]
    view.ready = False
    changed = specs.pod_status(pod, [view], True, "10.77.0.5", "10.77.0.1", "t0", "t3", first)
    ready = next(c for c in changed["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "t3")


def test_cut_rules_keep_the_gateway_unless_asked() -> None:
    default = cut_rules("10.77.0.1", None, include_host=False)
    assert all("10.77.0.1" in r and "!" in r for r in default)
    assert cut_rules("10.77.0.1", None, include_host=True) == [
        ["-i", "eth0", "-j", "DROP"],
        ["-o", "eth0", "-j", "DROP"],
    ]
    assert ["-i", "eth0", "-s", "10.77.0.9", "-j", "DROP"] in cut_rules("g", "10.77.0.9", False)
    assert split_ref("demo-0") == ("default", "demo-0")
    assert split_ref("ns1/demo-0") == ("ns1", "demo-0")


def test_ip_pool_skips_gateway_and_used(tmp_path: Path) -> None:
    cfg = ClusterConfig(
        root=tmp_path, bin_dir=tmp_path, bridge_cidr="10.1.0.0/29", gateway_ip="10.1.0.1"
    )
    pool = IpPool(cfg)
    got = [pool.allocate() for _ in range(5)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.allocate()
    pool.release("10.1.0.4")
    assert pool.allocate() == "10.1.0.4"


def test_write_in_place_keeps_inode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert write_in_place(path, "one\n")
    inode = path.stat().st_ino
    assert not write_in_place(path, "one\n")
    assert write_in_place(path, "two\n")
    assert (path.stat().st_ino, path.read_text()) == (inode, "two\n")


def test_port_redirects_for_selecting_services() -> None:
    pod = mkpod("p")
    pod["spec"]["containers"] = [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}]
    services = [svc("a"), svc("b"), svc("c", ns="other")]
    services[0]["spec"]["ports"] = [{"port": 80, "targetPort": "http"}, {"port": 8000}]
    services[1]["spec"]["ports"] = [{"port": 9090, "targetPort": 9091}]
    services[2]["spec"]["ports"] = [{"port": 1, "targetPort": 2}]
    assert specs.port_redirects(pod, services) == [(80, 8000), (9090, 9091)]


def test_pki_chain_and_names(tmp_path: Path) -> None:
    cfg = ClusterConfig(root=tmp_path, bin_dir=tmp_path)
    pki.ensure_pki(cfg)
    d = cfg.pki_dir
    for stem in ("apiserver", "kubelet-serving", "admin", "kubelet", "controller-manager"):
        proc = subprocess.run(
            ["openssl", "verify", "-CAfile", str(d / "ca.crt"), str(d / f"{stem}.crt")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(d / "apiserver.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "IP Address:127.0.0.1",
        f"IP Address:{cfg.gateway_ip}",
        "DNS:kubernetes.default.svc",
    ):
        assert name in text
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(d / "admin.crt"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "O = system:masters" in subject
    before = (d / "ca.crt").read_bytes()
    admin = (d / "admin.crt").read_bytes()
    (d / "kubelet-serving.crt").unlink()
    pki.ensure_pki(cfg)  # only the missing leaf is issued, by the same CA
    assert (d / "ca.crt").read_bytes() == before
    assert (d / "admin.crt").read_bytes() == admin
    assert (d / "kubelet-serving.crt").is_file()


def test_pod_status_while_initialising_and_after_init_failure() -> None:
    pod = mkpod("p")
    main = specs.ContainerView(name="c", image="i", reason="PodInitializing")
    init = specs.ContainerView(name="i", image="i", state="running", started_at="t0")
    status = specs.pod_status(
        pod, [main], True, "ip", "h", "t0", "t1", init_views=[init], initialized=False
    )
    assert status["phase"] == "Pending"
    assert status["initContainerStatuses"][0]["state"] == {"running": {"startedAt": "t0"}}
    cond = {c["type"]: c["status"] for c in status["conditions"]}
    assert (cond["Initialized"], cond["Ready"]) == ("False", "False")
    failed = specs.pod_status(
        pod,
        [main],
        True,
        "ip",
        "h",
        "t0",
        "t1",
        init_views=[init],
        initialized=False,
        init_failed=True,
    )
    assert failed["phase"] == "Failed"
