"""Small builders of the Kubernetes objects the cluster tests apply."""

from __future__ import annotations

import json
from typing import Any

Obj = dict[str, Any]
PY = "python"  # resolves to the checkout's .venv/bin/python inside a pod


def container(name: str, command: list[str], **extra: Any) -> Obj:
    return {"name": name, "image": "local/test:latest", "command": command, **extra}


def pod(name: str, containers: list[Obj], **spec: Any) -> Obj:
    labels = spec.pop("labels", {"app": name})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 5, **spec},
    }


def http_server(name: str = "web", port: int = 8000) -> Obj:
    return container(
        name,
        [PY, "-m", "http.server", str(port)],
        ports=[{"name": "http", "containerPort": port}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
    )


def deployment(name: str, replicas: int, c: Obj) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [c], "terminationGracePeriodSeconds": 5},
            },
        },
    }


def service(
    name: str,
    port: int,
    headless: bool = False,
    selector: Obj | None = None,
    target: int | str | None = None,
) -> Obj:
    spec: Obj = {
        "selector": selector or {"app": name},
        "ports": [{"name": "http", "port": port, "targetPort": target or port}],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def sleeper(name: str, **spec: Any) -> Obj:
    return pod(name, [container("main", [PY, "-c", "import time; time.sleep(100000)"])], **spec)


def script_pod(name: str, script: str, **spec: Any) -> Obj:
    """A pod that runs a Python script once (restartPolicy Never)."""
    return pod(name, [container("main", [PY, "-c", script])], restartPolicy="Never", **spec)


def dump(*objs: Obj) -> str:
    """A multi-document manifest for `kubectl apply -f -` (JSON is YAML)."""
    return "\n---\n".join(json.dumps(o) for o in objs)
