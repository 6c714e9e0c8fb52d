"""The operator and its node pods on the kind cluster of the quickstart
(`make kind-up deploy`): the quickstart's operator (the chart, the operator
image) manages every loop here.

For each N: a converge mesh loop of N nodes in a fresh namespace, then
* apply → all pods Ready, → all N looping (status.looping, as the operator
  reads it from the nodes), → Converged;
* per pod, create → Ready with real containers: a `kubectl get pods --watch`
  stream stamped on arrival (the API's own timestamps have 1 s resolution);
* node container memory once all loop: `ctr task metrics` inside the kind
  node for each node container (the cgroup's usage, with and without cache);
* steady state, with the loop still up: pod PATCH requests per second, read
  from the API server's own `apiserver_request_total{verb="PATCH",
  resource="pods",subresource=""}` two scrapes `--window` seconds apart. The
  counter is cluster-wide (the quickstart's loops count too), so the bench
  also counts the bench pods whose resourceVersion moved in the window: any
  write to a pod, a node's state PATCH included, moves it.
Then the operator's resident memory (its own `process_resident_memory_bytes`,
read through the API server's pod proxy) before, and while it manages
`--loops` more small loops.

    .venv/bin/python bench/kind_bench.py --nodes 10 50 --loops 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
TOOLS = Path(os.environ.get("RL_CACHE", Path.home() / ".cache" / "reactive-loop")) / "bin"
ENV = {**os.environ, "PATH": f"{TOOLS}:{os.environ['PATH']}"}


def kubectl(context: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--context", context, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout}s")


class PodWatch:
    """Arrival times of each pod's first sighting and first Ready=True."""

    def __init__(self, context: str, namespace: str) -> None:
        self.created: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [
                "kubectl",
                "--context",
                context,
                "-n",
                namespace,
                "get",
                "pods",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            now = time.monotonic()
            pod = event.get("object", {})
            name = pod.get("metadata", {}).get("name")
            if not name:
                continue
            self.created.setdefault(name, now)
            conds = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                self.ready.setdefault(name, now)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def container_memory(context: str, namespace: str, name: str) -> list[dict[str, float]]:
    pods = json.loads(
        kubectl(
            context,
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            f"reactive-loop.dev/loop={name}",
            "-o",
            "json",
        )
    )["items"]
    out = []
    for pod in pods:
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
        text = subprocess.run(
            [
                "docker",
                "exec",
                pod["spec"]["nodeName"],
                "ctr",
                "-n",
                "k8s.io",
                "task",
                "metrics",
                cid,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        metrics: dict[str, float] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                metrics[parts[0]] = float(parts[1])
        # cgroup v1 via ctr: usage_in_bytes includes the page cache, which
        # `memory.stat.cache` reports separately (a few KiB for a node).
        usage = metrics.get("memory.usage_in_bytes", 0.0)
        cache = metrics.get("memory.stat.cache", 0.0)
        out.append({"usage_mib": usage / 2**20, "without_cache_mib": (usage - cache) / 2**20})
    return out


def pod_patches(context: str) -> float:
    """The API server's count of pod PATCH requests so far (cluster-wide)."""
    total = 0.0
    for line in kubectl(context, "get", "--raw", "/metrics").splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'verb="PATCH"' in line
            and 'resource="pods"' in line
            and 'subresource=""' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pod_versions(context: str, namespace: str) -> dict[str, str]:
    """resourceVersion of every pod in `namespace`: any write to a pod changes it."""
    pods = json.loads(kubectl(context, "get", "pods", "-n", namespace, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in pods}


def steady_patches(context: str, namespace: str, window: float) -> dict[str, float]:
    versions = pod_versions(context, namespace)
    first = pod_patches(context)
    time.sleep(window)  # the measurement window itself, not a wait for a condition
    second = pod_patches(context)
    moved = [k for k, v in pod_versions(context, namespace).items() if versions.get(k) != v]
    return {
        "steady_pod_patches_per_s_cluster_wide": round((second - first) / window, 3),
        "steady_bench_pods_written": len(moved),
        "steady_window_s": window,
    }


def operator_rss_mib(context: str, namespace: str) -> float:
    """The quickstart operator's resident memory, from its own metrics."""
    pods = json.loads(
        kubectl(
            context,
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "json",
        )
    )["items"]
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
    if not running:
        raise RuntimeError(f"no running operator pod in {namespace}: run `make deploy`")
    name = running[0]["metadata"]["name"]
    text = kubectl(
        context, "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}:8080/proxy/metrics"
    )
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return round(float(line.split()[1]) / 2**20, 1)
    raise RuntimeError("the operator's metrics carry no process_resident_memory_bytes")


def loop_manifest(name: str, replicas: int, topology: str = "mesh") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "reactive-loop.dev/v1alpha1",
            "kind": "ReactiveLoop",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "topology": topology,
                "target": {"bench": name},
                "loop": {"interval": 2, "timeout": 1.5, "maxBackoff": 4},
            },
        }
    )


def looping(context: str, namespace: str, name: str, n: int) -> bool:
    obj = json.loads(kubectl(context, "get", "rloop", name, "-n", namespace, "-o", "json"))
    return bool((obj.get("status") or {}).get("looping") == n)


def operator_memory(context: str, operator_ns: str, loops: int, replicas: int) -> dict[str, Any]:
    """Operator RSS before and while it manages `loops` loops of `replicas` nodes."""
    ns = f"bench-rss-{secrets.token_hex(2)}"
    out: dict[str, Any] = {"operator_rss_mib_before": operator_rss_mib(context, operator_ns)}
    kubectl(context, "create", "namespace", ns)
    try:
        names = [f"l{i}" for i in range(loops)]
        for name in names:
            kubectl(context, "apply", "-n", ns, "-f", "-", stdin=loop_manifest(name, replicas))
        wait_for(
            lambda: all(looping(context, ns, name, replicas) for name in names),
            900,
            f"{loops} loops looping",
        )
        out[f"operator_rss_mib_with_{loops}_more_loops"] = operator_rss_mib(context, operator_ns)
        out["loops"] = loops
        out["replicas_per_loop"] = replicas
    finally:
        kubectl(context, "delete", "namespace", ns, "--wait=true", "--timeout=300s")
    return out


def run(context: str, n: int, window: float) -> dict[str, Any]:
    ns = f"bench-{n}-{secrets.token_hex(2)}"
    name = "bench"
    kubectl(context, "create", "namespace", ns)
    watch = PodWatch(context, ns)
    manifest = loop_manifest(name, n)
    try:
        t0 = time.monotonic()
        kubectl(context, "apply", "-n", ns, "-f", "-", stdin=manifest)

        def status() -> dict[str, Any]:
            obj = json.loads(kubectl(context, "get", "rloop", name, "-n", ns, "-o", "json"))
            return dict(obj.get("status") or {})

        wait_for(lambda: len(watch.ready) >= n, 600, "all pods Ready")
        t_ready = time.monotonic() - t0
        wait_for(lambda: status().get("looping") == n, 600, "all looping")
        t_looping = time.monotonic() - t0
        wait_for(
            lambda: any(
                c["type"] == "Converged" and c["status"] == "True"
                for c in status().get("conditions") or []
            ),
            600,
            "Converged",
        )
        t_converged = time.monotonic() - t0
        per_pod = [watch.ready[p] - watch.created[p] for p in watch.ready]
        memory = container_memory(context, ns, name)
        steady = steady_patches(context, ns, window) if window > 0 else {}
        return {
            **steady,
            "nodes": n,
            "apply_to_all_ready_s": round(t_ready, 2),
            "apply_to_all_looping_s": round(t_looping, 2),
            "apply_to_converged_s": round(t_converged, 2),
            "pod_create_to_ready_p50_s": round(statistics.median(per_pod), 2),
            "pod_create_to_ready_p99_s": round(percentile(per_pod, 0.99), 2),
            "node_container_memory_mib_median": round(
                statistics.median(m["usage_mib"] for m in memory), 1
            ),
            "node_container_memory_mib_max": round(max(m["usage_mib"] for m in memory), 1),
            "node_container_memory_without_cache_mib_median": round(
                statistics.median(m["without_cache_mib"] for m in memory), 1
            ),
        }
    finally:
        watch.stop()
        kubectl(context, "delete", "namespace", ns, "--wait=true", "--timeout=300s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", default="kind-reactive-loop")
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50])
    parser.add_argument(
        "--window", type=float, default=30.0, help="steady-state PATCH window, seconds (0: skip)"
    )
    parser.add_argument("--loops", type=int, default=20, help="loops for the RSS figure (0: skip)")
    parser.add_argument("--loop-replicas", type=int, default=2)
    parser.add_argument("--operator-namespace", default="reactive-loop-system")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [run(args.context, n, args.window) for n in args.nodes]
    memory = (
        operator_memory(args.context, args.operator_namespace, args.loops, args.loop_replicas)
        if args.loops
        else {}
    )
    load = os.getloadavg()[0]
    report = {"load_1m": round(load, 2), "runs": results, "operator": memory}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            print(r)
        print(memory)


if __name__ == "__main__":
    main()
