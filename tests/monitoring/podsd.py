"""Pod discovery for a Prometheus built without Kubernetes service discovery.

Debian's `prometheus` package leaves out `kubernetes_sd_configs`. This serves
Prometheus' generic `http_sd_configs` instead: on every refresh it lists the
pods from the real API server and answers one target per container port,
with the same `__meta_kubernetes_*` labels that `kubernetes_sd_configs`
(role `pod`) gives. So the scrape job keeps the relabelling a PodMonitor
produces, and a pod that appears, goes or changes is seen as Kubernetes
discovery would see it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Pod = Mapping[str, Any]


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pods: Sequence[Pod]) -> list[dict[str, Any]]:
    """http_sd target groups for `pods`, labelled as kubernetes_sd role=pod does."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        common = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_ready": "true" if ready else "false",
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        }
        for key, value in (meta.get("labels") or {}).items():
            common[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
            common[f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"] = "true"
        for container in spec.get("containers", []):
            for port in container.get("ports", []):
                labels = dict(common)
                labels["__meta_kubernetes_pod_container_name"] = container["name"]
                labels["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
                labels["__meta_kubernetes_pod_container_port_number"] = str(port["containerPort"])
                labels["__meta_kubernetes_pod_container_port_protocol"] = port.get(
                    "protocol", "TCP"
                )
                groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return groups


class PodDiscovery:
    """An http_sd endpoint on 127.0.0.1 that lists pods on every request."""

    def __init__(self, list_pods: Callable[[], Sequence[Pod]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(pod_targets(outer.list_pods())).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.list_pods = list_pods
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/targets"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PodDiscovery:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
