"""Pure builders of every object the operator creates for a ReactiveLoop.

Each function takes the loop's identity and validated spec and returns one
manifest (a plain dict, as the API takes it) with the owner reference set, so
garbage collection removes everything when the ReactiveLoop goes. Nothing
here does I/O; the reconciler decides and `kube` applies.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from reactive_node import contract as c

from .spec import LoopSpec

Manifest = dict[str, Any]

NODE_PORT_NAME = "http"
NODE_COMMAND = ("reactive-loop", "node")
#: UID/GID of the node process (non-root, matches the node image's user).
NODE_UID = 10001
HMAC_SECRET_SUFFIX = "-hmac"
NETWORK_POLICY_SUFFIX = "-nodes"
MANAGED_BY = "reactive-loop-operator"
DEFAULT_REQUESTS: dict[str, str | int] = {"cpu": "10m", "memory": "48Mi"}
DEFAULT_LIMITS: dict[str, str | int] = {"memory": "128Mi"}


@dataclass(frozen=True)
class Owner:
    """The ReactiveLoop that owns the children."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class NodeDefaults:
    """Operator-wide defaults that a spec may override."""

    image: str
    image_pull_policy: str = "IfNotPresent"


def pod_name(loop: str, ordinal: int) -> str:
    return f"{loop}-{ordinal}"


def hmac_secret_name(loop: str) -> str:
    return loop + HMAC_SECRET_SUFFIX


def selector_labels(loop: str) -> dict[str, str]:
    """The labels that select a loop's node pods (Service, NetworkPolicy, scale)."""
    return {c.LOOP_LABEL: loop, c.COMPONENT_LABEL: c.NODE_COMPONENT}


def selector(loop: str) -> str:
    """`selector_labels` as a label-selector string (status.selector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(loop).items()))


def common_labels(loop: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "reactive-loop",
        "app.kubernetes.io/instance": loop,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(loop),
    }


def node_labels(loop: str, ordinal: int) -> dict[str, str]:
    return {**common_labels(loop), c.ORDINAL_LABEL: str(ordinal)}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def service(owner: Owner) -> Manifest:
    """The loop's headless Service: gives every pod `<pod>.<loop>.<ns>.svc` DNS, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.name, common_labels(owner.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner.name),
            "ports": [
                {
                    "name": NODE_PORT_NAME,
                    "port": c.DEFAULT_PORT,
                    "targetPort": c.DEFAULT_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def service_account(owner: Owner, ordinal: int) -> Manifest:
    name = pod_name(owner.name, ordinal)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, name, node_labels(owner.name, ordinal)),
        "automountServiceAccountToken": True,
    }


def role(owner: Owner, ordinal: int) -> Manifest:
    """May get, patch and watch exactly one pod: the node's own (by resourceNames).

    A watch restricted by resourceNames must be requested with the field
    selector `metadata.name=<pod>`; the node does that.
    """
    name = pod_name(owner.name, ordinal)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, name, node_labels(owner.name, ordinal)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods"],
                "resourceNames": [name],
                "verbs": ["get", "patch", "watch"],
            }
        ],
    }


def role_binding(owner: Owner, ordinal: int) -> Manifest:
    name = pod_name(owner.name, ordinal)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name, node_labels(owner.name, ordinal)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def node_rbac(owner: Owner, ordinal: int) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding of one node, in creation order."""
    return [service_account(owner, ordinal), role(owner, ordinal), role_binding(owner, ordinal)]


def hmac_secret(owner: Owner, key: bytes) -> Manifest:
    """The per-loop Secret holding the HMAC key (the caller draws `key` at random)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(owner, hmac_secret_name(owner.name), common_labels(owner.name)),
        "data": {c.HMAC_SECRET_KEY: base64.b64encode(key).decode()},
    }


def network_policy(
    owner: Owner,
    *,
    operator_pod_labels: dict[str, str],
    scraper_pod_labels: dict[str, str],
    scraper_namespace_labels: dict[str, str],
) -> Manifest:
    """Only the loop's own pods, the operator and the metrics scraper may reach a node."""
    port = [{"protocol": "TCP", "port": c.DEFAULT_PORT}]
    sources: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": selector_labels(owner.name)}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": operator_pod_labels}},
    ]
    if scraper_pod_labels or scraper_namespace_labels:
        sources.append(
            {
                "namespaceSelector": {"matchLabels": scraper_namespace_labels},
                "podSelector": {"matchLabels": scraper_pod_labels},
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, owner.name + NETWORK_POLICY_SUFFIX, common_labels(owner.name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources, "ports": port}],
        },
    }


def _seconds(value: float) -> str:
    return format(value, "g")


def node_env(owner: Owner, spec: LoopSpec, ordinal: int) -> list[dict[str, Any]]:
    """The node's configuration (`reactive-loop node` reads RL_*)."""
    name = pod_name(owner.name, ordinal)
    peer = f"{owner.name}-{{ordinal}}.{owner.name}.{owner.namespace}.svc.cluster.local"
    env: list[dict[str, Any]] = [
        {"name": c.ENV_LOOP, "value": owner.name},
        {"name": c.ENV_NODE, "value": name},
        {"name": c.ENV_ORDINAL, "value": str(ordinal)},
        {"name": c.ENV_REPLICAS, "value": str(spec.replicas)},
        {"name": c.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": c.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": c.ENV_BEHAVIOR, "value": spec.behavior},
        {"name": c.ENV_TOPOLOGY, "value": spec.topology},
        {"name": c.ENV_PEER_TEMPLATE, "value": f"{peer}:{c.DEFAULT_PORT}"},
        {"name": c.ENV_PORT, "value": str(c.DEFAULT_PORT)},
        {"name": c.ENV_STORE, "value": "pod"},
        {"name": c.ENV_INTERVAL, "value": _seconds(spec.loop.interval)},
        {"name": c.ENV_TIMEOUT, "value": _seconds(spec.loop.timeout)},
        {"name": c.ENV_MAX_BACKOFF, "value": _seconds(spec.loop.max_backoff)},
        {"name": c.ENV_RING_SKIP, "value": str(spec.loop.ring_skip)},
    ]
    webhook = ""  # the one URL a node may call besides its peers and the API server
    if spec.is_token or not spec.is_converge:
        env += [
            {"name": c.ENV_TOKEN_HOLD, "value": _seconds(spec.token.hold_seconds)},
            {"name": c.ENV_TOKEN_LOSS_TIMEOUT, "value": _seconds(spec.token.loss_timeout_seconds)},
        ]
        if spec.token.webhook:
            env.append({"name": c.ENV_TOKEN_WEBHOOK, "value": spec.token.webhook})
            webhook = spec.token.webhook
    if not webhook.lower().startswith("https:"):
        # The node's only TLS peer is then the API server, so it trusts just the
        # cluster CA; this also spares every node process ~0.1 s of CPU at start
        # (aiohttp builds its default TLS contexts from the trust store on import).
        env.append({"name": "SSL_CERT_FILE", "value": c.SERVICE_ACCOUNT_CA})
    if spec.auth.hmac:
        env.append(
            {
                "name": c.ENV_HMAC_KEY,
                "valueFrom": {
                    "secretKeyRef": {"name": hmac_secret_name(owner.name), "key": c.HMAC_SECRET_KEY}
                },
            }
        )
    return env


def _container(owner: Owner, spec: LoopSpec, ordinal: int, defaults: NodeDefaults) -> Manifest:
    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": c.DEFAULT_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "name": "node",
        "image": spec.image or defaults.image,
        "imagePullPolicy": spec.image_pull_policy or defaults.image_pull_policy,
        "command": list(NODE_COMMAND),
        "env": node_env(owner, spec, ordinal),
        "ports": [{"name": NODE_PORT_NAME, "containerPort": c.DEFAULT_PORT, "protocol": "TCP"}],
        "readinessProbe": probe(c.READY_PATH, 2, 3),
        "livenessProbe": probe(c.HEALTH_PATH, 10, 3),
        "resources": {
            "requests": dict(spec.resources.requests or DEFAULT_REQUESTS),
            "limits": dict(spec.resources.limits or DEFAULT_LIMITS),
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def spec_hash(spec: LoopSpec, defaults: NodeDefaults) -> str:
    """Digest of every pod-template input except the replica count.

    Pods whose SPEC_HASH_ANNOTATION differs are rolled one at a time. Scaling
    changes only REPLICAS_ANNOTATION, so it never rolls a pod.
    """
    inputs = {
        "image": spec.image or defaults.image,
        "pull": spec.image_pull_policy or defaults.image_pull_policy,
        "behavior": spec.behavior,
        "topology": spec.topology,
        "loop": spec.loop.model_dump(),
        "token": spec.token.model_dump() if spec.behavior != "converge" else None,
        "resources": spec.resources.model_dump(),
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "affinity": spec.affinity,
        "hmac": spec.auth.hmac,
    }
    raw = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def pod(owner: Owner, spec: LoopSpec, ordinal: int, defaults: NodeDefaults) -> Manifest:
    """Node pod `<loop>-<ordinal>`: restricted security context, probes, RL_* env."""
    name = pod_name(owner.name, ordinal)
    pod_spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": owner.name,
        "serviceAccountName": name,
        "automountServiceAccountToken": True,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 5,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NODE_UID,
            "runAsGroup": NODE_UID,
            "fsGroup": NODE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(owner, spec, ordinal, defaults)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
        # A loop survives losing a machine only if its nodes are not all on
        # it: spread them over hosts, softly, so a one-node cluster still runs.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(owner.name)},
            }
        ],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    meta = _meta(owner, name, node_labels(owner.name, ordinal))
    meta["annotations"] = {
        c.REPLICAS_ANNOTATION: str(spec.replicas),
        c.SPEC_HASH_ANNOTATION: spec_hash(spec, defaults),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
