"""The local cluster runs real workloads: Deployments, Services, DNS, env, RBAC."""

from __future__ import annotations

import functools
import ipaddress
import json
import textwrap
from typing import Any

import pytest
from cluster import objects as o
from localcluster import Cluster

pytestmark = pytest.mark.cluster


def wait_pod_phase(cluster: Cluster, ns: str, name: str, phase: str, timeout: float = 60) -> Any:
    def check() -> Any:
        pod = cluster.get("pod", name, ns)
        return pod if pod and pod["status"].get("phase") == phase else None

    return cluster.wait_for(check, timeout=timeout, what=f"pod {ns}/{name} phase {phase}")


def test_deployment_ready_and_reached_by_service_dns(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        o.dump(o.deployment("web", 1, o.http_server()), o.service("web", 80, target="http")),
        namespace,
    )
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    pods = cluster.get("pods", namespace=namespace)["items"]
    assert len(pods) == 1
    status = pods[0]["status"]
    assert status["phase"] == "Running"
    assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(cluster.cfg.bridge_cidr)
    assert {"type": "Ready", "status": "True"}.items() <= next(
        c for c in status["conditions"] if c["type"] == "Ready"
    ).items()

    # Service port 80 -> targetPort "http" (8000): the pod's netns redirects it.
    url = f"http://web.{namespace}.svc.cluster.local/"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).status)"
    cluster.apply(o.dump(o.script_pod("client", script)), namespace)
    wait_pod_phase(cluster, namespace, "client", "Succeeded")
    assert cluster.logs(namespace, "client", "main").strip() == "200"
    # `kubectl logs` goes through the apiserver to the kubelet's log endpoint.
    assert cluster.kubectl("logs", "client", "-n", namespace).stdout.strip() == "200"


def test_headless_hostname_resolves_to_that_pod(cluster: Cluster, namespace: str) -> None:
    members = [
        o.pod(f"m-{i}", [o.http_server()], hostname=f"m-{i}", subdomain="m", labels={"app": "m"})
        for i in range(2)
    ]
    cluster.apply(o.dump(o.service("m", 8000, headless=True), *members), namespace)
    for name in ("m-0", "m-1"):
        cluster.wait_for(functools.partial(cluster.pod_ready, namespace, name), what=name)
    ips = [cluster.pod(namespace, f"m-{i}").ip for i in range(2)]
    fqdn = f"m-1.m.{namespace}.svc.cluster.local"
    lookup = [o.PY, "-c", f"import socket; print(socket.gethostbyname({fqdn!r}))"]

    def resolve() -> str:
        proc = cluster.exec_in_pod(namespace, "m-0", lookup)
        return proc.stdout if proc.returncode == 0 else ""

    resolved = cluster.wait_for(resolve, what=f"{fqdn} resolvable in m-0")
    assert resolved.strip() == ips[1]


def test_env_from_fieldrefs_configmap_and_secret(cluster: Cluster, namespace: str) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"COLOR": "blue", "SIZE": "3"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sec"},
        "stringData": {"password": "hunter2"},
    }
    fields = [
        "metadata.name",
        "metadata.namespace",
        "status.podIP",
        "spec.nodeName",
        "spec.serviceAccountName",
    ]
    env = [
        {"name": f"F_{i}", "valueFrom": {"fieldRef": {"fieldPath": f}}}
        for i, f in enumerate(fields)
    ]
    env += [
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
        {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "COLOR"}}},
    ]
    script = "import os, json; print(json.dumps(dict(os.environ)))"
    p = o.pod(
        "envpod",
        [
            o.container(
                "main",
                [o.PY, "-c", script],
                env=env,
                envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
            )
        ],
        restartPolicy="Never",
    )
    cluster.apply(o.dump(cm, secret, p), namespace)
    pod = wait_pod_phase(cluster, namespace, "envpod", "Succeeded")
    got = json.loads(cluster.logs(namespace, "envpod", "main"))
    assert [got[f"F_{i}"] for i in range(5)] == [
        "envpod",
        namespace,
        pod["status"]["podIP"],
        cluster.cfg.node_name,
        "default",
    ]
    assert (got["PW"], got["C"], got["CM_SIZE"]) == ("hunter2", "blue", "3")
    assert got["KUBERNETES_SERVICE_HOST"] == cluster.cfg.gateway_ip
    assert got["PATH"].split(":")[0] == str(cluster.cfg.venv_bin)


def test_in_cluster_config_rbac_allows_and_forbids(cluster: Cluster, namespace: str) -> None:
    rbac: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "cm-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    script = textwrap.dedent(
        """
        import asyncio, json
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.client.rest import ApiException

        async def main():
            config.load_incluster_config()
            ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
            out = {}
            async with client.ApiClient() as api:
                v1 = client.CoreV1Api(api)
                for name, call in [("configmaps", v1.list_namespaced_config_map(ns)),
                                   ("secrets", v1.list_namespaced_secret(ns)),
                                   ("pods", v1.list_namespaced_pod(ns))]:
                    try:
                        await call
                        out[name] = 200
                    except ApiException as e:
                        out[name] = e.status
            print(json.dumps(out))

        asyncio.run(main())
        """
    )
    cluster.apply(
        o.dump(*rbac, o.script_pod("incluster", script, serviceAccountName="reader")), namespace
    )
    wait_pod_phase(cluster, namespace, "incluster", "Succeeded")
    result = json.loads(cluster.logs(namespace, "incluster", "main").strip().splitlines()[-1])
    assert result == {"configmaps": 200, "secrets": 403, "pods": 403}


def test_restricted_namespace_rejects_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    privileged = o.sleeper("priv")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=o.dump(privileged), check=False
    )
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr
    assert "restricted" in proc.stderr
    assert cluster.get("pod", "priv", namespace) is None

    # A pod meeting `restricted` is admitted and really runs as its non-root user.
    script = "import getpass, os; print(os.getuid(), getpass.getuser())"
    ok = o.script_pod("compliant", script)
    ok["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 4321,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    ok["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    cluster.apply(o.dump(ok), namespace)
    wait_pod_phase(cluster, namespace, "compliant", "Succeeded")
    # ... with a passwd entry, as the user of an image would have
    assert cluster.logs(namespace, "compliant", "main").strip() == "4321 user4321"


def test_container_without_command_reports_reason(cluster: Cluster, namespace: str) -> None:
    p = o.pod("nocmd", [{"name": "main", "image": "nginx:1.27"}])
    cluster.apply(o.dump(p), namespace)

    def waiting() -> Any:
        pod = cluster.get("pod", "nocmd", namespace)
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        return statuses and statuses[0]["state"].get("waiting", {}).get("reason") == "NoCommand"

    cluster.wait_for(waiting, what="NoCommand reason")
    status = cluster.get("pod", "nocmd", namespace)["status"]["containerStatuses"][0]
    assert status["image"] == "nginx:1.27"
    assert "has none" in status["state"]["waiting"]["message"]
    assert "never pulled" in status["state"]["waiting"]["message"]


def test_init_container_runs_first_and_shares_empty_dir(cluster: Cluster, namespace: str) -> None:
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    init = o.container(
        "prepare",
        [o.PY, "-c", "open('/scratch/msg', 'w').write('prepared')"],
        volumeMounts=mount,
    )
    main = o.container(
        "main", [o.PY, "-c", "print(open('/scratch/msg').read())"], volumeMounts=mount
    )
    p = o.pod(
        "withinit",
        [main],
        restartPolicy="Never",
        initContainers=[init],
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    cluster.apply(o.dump(p), namespace)
    pod = wait_pod_phase(cluster, namespace, "withinit", "Succeeded")
    assert cluster.logs(namespace, "withinit", "main").strip() == "prepared"
    init_status = pod["status"]["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0
    initialized = next(c for c in pod["status"]["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "True"


def test_empty_dir_over_the_checkout_parent_keeps_venv_and_pod_files(
    cluster: Cluster, namespace: str
) -> None:
    """An emptyDir on a directory above the checkout (say /tmp, when the
    clone lives in /tmp) must not hide the venv, the pod's files or the
    ServiceAccount mount from the container."""
    over = str(cluster.cfg.root.parent)
    script = (
        "import pathlib, reactive_node;"
        f"pathlib.Path({over!r}, 'scratch').write_text('ok');"
        "ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read();"
        f"print(ns, pathlib.Path({over!r}, 'scratch').read_text())"
    )
    main = o.container(
        "main", [o.PY, "-c", script], volumeMounts=[{"name": "scratch", "mountPath": over}]
    )
    p = o.pod(
        "covered", [main], restartPolicy="Never", volumes=[{"name": "scratch", "emptyDir": {}}]
    )
    cluster.apply(o.dump(p), namespace)
    wait_pod_phase(cluster, namespace, "covered", "Succeeded")
    assert cluster.logs(namespace, "covered", "main").split() == [namespace, "ok"]
    # The write went to the emptyDir, not to the host directory it covers.
    assert not (cluster.cfg.root.parent / "scratch").exists()
