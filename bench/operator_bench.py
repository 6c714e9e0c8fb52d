"""Operator benchmarks on the local cluster (`make cluster-up` first).

The operator runs as a local process (admin kubeconfig, one watched
namespace) so that its resident memory can be read from /proc.

* apply: `kubectl apply` of a converge ReactiveLoop with N nodes → time until
  all N pods are Running, until the operator reports all N looping
  (status.looping == N, read from the nodes within one resync), and until
  Converged=True.
* patches: with the loops of `apply` in steady state, PATCH requests per
  second on pods, read from the API server's own
  `apiserver_request_total{verb="PATCH",resource="pods",subresource=""}`
  (two scrapes `--window` seconds apart). That counter is cluster-wide, so
  the bench also counts the bench pods whose resourceVersion moved in the
  window: any write to a pod (a node's state PATCH included) moves it.
* rss: the operator's VmRSS while it manages `--loops` small loops.
* cpu: where the CPU went between the apply and all N looping: the CPU
  seconds of each control-plane process (pid files of the local cluster),
  of the processes the kubelet ran and reaped (ip, iptables, mount), of the
  operator and of the N node processes, against what the machine's cores
  could give in that time.

    python bench/operator_bench.py --nodes 10 50 --loops 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"
KUBECONFIG = ROOT / ".local-cluster" / "kubeconfig"
PIDS = ROOT / ".local-cluster" / "pids"
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    tools = Path.home() / ".cache" / "reactive-loop" / "bin"
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "PATH": f"{tools}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout}s")


def loop_manifest(name: str, replicas: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "topology": "mesh",
                "target": {"bench": name},
                # Relaxed timings: on a 2-core machine, 50 Python node
                # processes plus the control plane overrun a 0.5 s timeout.
                "loop": {"interval": 2, "timeout": 1.5, "maxBackoff": 4},
            },
        }
    )


def status(ns: str, name: str) -> dict[str, Any]:
    obj = json.loads(kubectl("get", "rloop", name, "-n", ns, "-o", "json"))
    return dict(obj.get("status") or {})


def all_looping(ns: str, name: str, n: int) -> bool:
    return status(ns, name).get("looping") == n


def converged(ns: str, name: str) -> bool:
    conv = [c for c in status(ns, name).get("conditions") or [] if c["type"] == "Converged"]
    return bool(conv) and conv[0]["status"] == "True"


def pods_running(ns: str, name: str, n: int) -> bool:
    pods = json.loads(
        kubectl("get", "pods", "-n", ns, "-l", f"reactive-loop.dev/loop={name}", "-o", "json")
    )["items"]
    return sum(1 for p in pods if p.get("status", {}).get("phase") == "Running") == n


def patch_count() -> float:
    text = kubectl("get", "--raw", "/metrics")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        if 'verb="PATCH"' in line and 'resource="pods"' in line and 'subresource=""' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def pod_versions(ns: str) -> dict[str, str]:
    """resourceVersion of every pod in `ns`: any write to a pod changes it."""
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods}


def _cpu_of(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds of a process (or of its reaped children); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first = 13 if reaped_children else 11  # cutime+cstime, else utime+stime
    return (int(fields[first]) + int(fields[first + 1])) / TICKS


def _node_pids(ns: str, name: str) -> list[int]:
    """Node processes of loop `name`: their environment names the loop and namespace."""
    want = {f"RL_LOOP={name}".encode(), f"RL_NAMESPACE={ns}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            pids.append(int(entry.name))
    return pids


def cpu_snapshot(operator_pid: int) -> dict[str, float]:
    """CPU seconds so far of the control plane, the kubelet's reaped children and the operator."""
    out = {"operator": _cpu_of(operator_pid)}
    for pidfile in sorted(PIDS.glob("*.pid")):
        pid = int(json.loads(pidfile.read_text())["pid"])
        out[pidfile.stem] = _cpu_of(pid)
        if pidfile.stem == "kubelet":
            out["kubelet children (ip, iptables, ...)"] = _cpu_of(pid, reaped_children=True)
    return out


def measure_apply(
    ns: str, name: str, n: int, operator_pid: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Apply a loop of `n` nodes; seconds until Running, all looping, Converged,
    and the CPU seconds spent by each part until all were looping."""
    out: dict[str, float] = {}
    before = cpu_snapshot(operator_pid)
    started = time.monotonic()
    kubectl("apply", "-n", ns, "-f", "-", stdin=loop_manifest(name, n))
    wait_for(lambda: pods_running(ns, name, n), 300, f"{n} pods Running", 0.1)
    out[f"apply_to_pods_running_s_n{n}"] = round(time.monotonic() - started, 2)
    wait_for(lambda: all_looping(ns, name, n), 300, f"{n} looping", 0.1)
    elapsed = time.monotonic() - started
    out[f"apply_to_all_looping_s_n{n}"] = round(elapsed, 2)
    after = cpu_snapshot(operator_pid)
    nodes = _node_pids(ns, name)
    cpu = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
    cpu[f"{len(nodes)} node processes"] = round(sum(_cpu_of(p) for p in nodes), 2)
    cpu["total"] = round(sum(cpu.values()), 2)
    cpu["available (cores x seconds)"] = round((os.cpu_count() or 1) * elapsed, 2)
    wait_for(lambda: converged(ns, name), 300, f"{n} converged", 0.1)
    out[f"apply_to_converged_s_n{n}"] = round(time.monotonic() - started, 2)
    return out, cpu


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match is not None
    return int(match.group(1)) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_operator(ns: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(KUBECONFIG),
        "RLO_NAMESPACES": ns,
        "RLO_PORT": str(port),
        "RLO_BIND": "127.0.0.1",
        "RLO_RESYNC_SECONDS": "2",
        "RLO_LEASE_NAMESPACE": ns,
        "RLO_LOG_LEVEL": "WARNING",
    }
    exe = str(Path(sys.executable).with_name("reactive-loop-operator"))
    proc = subprocess.Popen([exe], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return bool(json.loads(r.read()).get("phase") == "leading")
        except OSError:
            return False

    wait_for(ready, 60, "operator ready")
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--loops", type=int, default=20, help="loops for the RSS figure (0: skip)")
    parser.add_argument("--loop-replicas", type=int, default=2)
    parser.add_argument("--window", type=float, default=30.0, help="PATCH rate window, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/reactiveloops.reactive-loop.dev")
    ns = f"bench-{secrets.token_hex(3)}"
    kubectl("create", "namespace", ns)
    results: dict[str, Any] = {"namespace": ns}
    proc, _port = start_operator(ns)
    try:
        results["operator_rss_mb_idle"] = round(rss_mb(proc.pid), 1)
        results["cpus"] = os.cpu_count()
        for n in args.nodes:
            name = f"n{n}"
            times, cpu = measure_apply(ns, name, n, proc.pid)
            results.update(times)
            results[f"cpu_seconds_apply_to_all_looping_n{n}"] = cpu
            results[f"load_average_1m_after_n{n}"] = os.getloadavg()[0]

        time.sleep(5)  # let the last round of state writes settle
        versions = pod_versions(ns)
        first = patch_count()
        time.sleep(args.window)
        second = patch_count()
        changed = {k for k, v in pod_versions(ns).items() if versions.get(k) != v}
        # The counter is cluster-wide: other workloads on the cluster add to it.
        results["apiserver_pod_patches_per_s_cluster_wide"] = round(
            (second - first) / args.window, 3
        )
        results["steady_state_bench_pods_written"] = len(changed)
        results["steady_state_window_s"] = args.window
        results["steady_state_nodes"] = sum(args.nodes)

        for name in [f"n{n}" for n in args.nodes]:
            kubectl("delete", "rloop", name, "-n", ns, "--wait=true", "--timeout=120s", check=False)
        if args.loops:
            for i in range(args.loops):
                kubectl(
                    "apply", "-n", ns, "-f", "-", stdin=loop_manifest(f"l{i}", args.loop_replicas)
                )
            wait_for(
                lambda: all(
                    all_looping(ns, f"l{i}", args.loop_replicas) for i in range(args.loops)
                ),
                600,
                f"{args.loops} loops looping",
                1.0,
            )
            time.sleep(10)  # a few resync rounds with every loop polled
            results[f"operator_rss_mb_{args.loops}_loops"] = round(rss_mb(proc.pid), 1)
    finally:
        # The loops go while the operator still runs: kopf's finalizer on them
        # (its timer needs one) is removed by the operator.
        kubectl("delete", "rloop", "--all", "-n", ns, "--wait=true", "--timeout=120s", check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        kubectl("delete", "namespace", ns, "--wait=false", check=False)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:45} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
