"""Measure the figures in docs/testing.md on a running (or startable) cluster.

    PYTHONPATH=tests .venv/bin/python -m localcluster.measure [--up] [--pods N] [--json]

`--up` first times `down` + `up` (the warm start: binaries and PKI cached).
`--scratch` does all of it on a throw-away second instance (own state dir,
ports, bridge and subnet) so a shared cluster keeps running undisturbed.
Then it creates N pods one after another in a scratch namespace and reports,
per pod, the seconds from the create request to phase Running and to Ready
(a `python -m http.server` with an HTTP readiness probe).
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster import control
from localcluster.config import ClusterConfig


def call(cfg: ClusterConfig, method: str, path: str, body: Any = None) -> Any:
    ctx = ssl.create_default_context(cafile=str(cfg.pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(cfg.pki_dir / "admin.crt"), str(cfg.pki_dir / "admin.key"))
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        cfg.apiserver_url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return json.loads(resp.read())


def pod_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "local/bench",
                    "command": ["python", "-m", "http.server", "8000"],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000}},
                }
            ],
        },
    }


def time_pod(cfg: ClusterConfig, ns: str, name: str, deadline: float = 60) -> tuple[float, float]:
    t0 = time.monotonic()
    call(cfg, "POST", f"/api/v1/namespaces/{ns}/pods", pod_manifest(name))
    running = None
    while time.monotonic() - t0 < deadline:
        pod = call(cfg, "GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        status = pod.get("status", {})
        if running is None and status.get("phase") == "Running":
            running = time.monotonic() - t0
        conds = status.get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            return (running if running is not None else time.monotonic() - t0), (
                time.monotonic() - t0
            )
        time.sleep(0.02)
    raise TimeoutError(f"pod {ns}/{name} not Ready within {deadline}s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m localcluster.measure")
    parser.add_argument("--up", action="store_true", help="time a warm down + up first")
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--scratch", action="store_true", help="measure on a second instance")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = ClusterConfig.default()
    if args.scratch:
        cfg = ClusterConfig.scratch(Path(tempfile.mkdtemp(prefix="rl-measure-")), index=3)
    result: dict[str, Any] = {}
    try:
        if args.up or args.scratch:
            control.down(cfg, quiet=True)
            result["warm_up_seconds"] = round(control.up(cfg), 2)
            t0 = time.monotonic()
            control.up(cfg)
            result["reuse_up_seconds"] = round(time.monotonic() - t0, 2)
        elif not control.healthy(cfg):
            control.up(cfg)
        result.update(measure_pods(cfg, args.pods))
    finally:
        if args.scratch:
            control.down(cfg, quiet=True)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")


def measure_pods(cfg: ClusterConfig, n: int) -> dict[str, Any]:
    ns = f"measure-{int(time.time())}"
    call(cfg, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            call(cfg, "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
            break
        except OSError:
            time.sleep(0.1)
    runs = [time_pod(cfg, ns, f"p{i}") for i in range(n)]
    call(cfg, "DELETE", f"/api/v1/namespaces/{ns}")
    running = [r for r, _ in runs]
    ready = [r for _, r in runs]
    return {
        "pods": n,
        "pod_running_median_seconds": round(statistics.median(running), 3),
        "pod_running_max_seconds": round(max(running), 3),
        "pod_ready_median_seconds": round(statistics.median(ready), 3),
        "pod_ready_max_seconds": round(max(ready), 3),
    }


if __name__ == "__main__":
    main()
