"""Pure builders of every object the operator creates for a ReactiveLoop.

Each function takes the loop's identity and validated spec and returns one
manifest (a plain dict, as the API takes it) with the owner reference set, so
garbage collection removes everything when the ReactiveLoop goes. Nothing
here does I/O; the reconciler decides and `kube` applies.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from reactive_node.core import codec
from reactive_node.core import contract as c

from .config import Labels, NodeNetwork
from .spec import LoopSpec

Manifest = dict[str, Any]

NODE_PORT_NAME = "http"
NODE_COMMAND = ("reactive-loop", "node")
#: UID/GID of the node process (non-root, matches the node image's user).
NODE_UID = 10001
HMAC_SECRET_SUFFIX = "-hmac"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
HMAC_VOLUME = "hmac-keys"
#: The emptyDir the node keeps its decision file in; sidecars mount it by this name.
DECISION_VOLUME = "decision"
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
    webhook_allowed_hosts: tuple[str, ...] = ()
    """Hosts a token webhook may be on (`RLO_TOKEN_WEBHOOK_ALLOWED_HOSTS`); empty: any."""
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    """The cluster's DNS domain, in the peers' names (`RLO_CLUSTER_DOMAIN`)."""


def pod_name(loop: str, ordinal: int) -> str:
    return c.node_name(loop, ordinal)


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


def hmac_secret(owner: Owner, primary: bytes, accepted: bytes = b"") -> Manifest:
    """The per-loop Secret of HMAC keys: `primary` signs (the caller draws it at
    random), `accepted` lists more keys the nodes accept (for rotation)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(owner, hmac_secret_name(owner.name), common_labels(owner.name)),
        "data": {
            c.HMAC_SECRET_PRIMARY: base64.b64encode(primary).decode(),
            c.HMAC_SECRET_ACCEPTED: base64.b64encode(accepted).decode(),
        },
    }


class SecretProblem(Exception):
    """The loop's HMAC Secret cannot be used; `reason` is the Degraded reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


#: Status field that records the uid the operator's own create of `<loop>-hmac`
#: returned: the only sign that an existing Secret of that name is the loop's.
HMAC_SECRET_UID_FIELD = "hmacSecretUID"
#: Recorded instead of a uid for a Secret an operator before this one made (and
#: checked by reading it, which this one cannot): see `hmac_secret_ownership`.
HMAC_SECRET_ADOPTED = "adopted"
#: Ready reasons an older operator wrote only after it had read `<loop>-hmac`
#: and found it owned and usable (status.py; a refusal names its own reason).
_SECRET_CHECKED_REASONS = frozenset({"AllNodesReady", "NodesNotReady", "PodRejected"})


@dataclass(frozen=True)
class SecretOwnership:
    """Whether the loop's `<loop>-hmac` is its own, decided without reading it."""

    owned: bool
    record: str | None = None
    """What to write to `status.hmacSecretUID` now (None: nothing to write)."""
    problem: SecretProblem | None = None
    """Why it is not owned (`SecretNotOwned`): the loop is Degraded, no pod is made."""


def hmac_secret_ownership(
    owner: Owner,
    *,
    created_uid: str | None,
    recorded: str | None,
    status: Mapping[str, Any],
    generation: int,
) -> SecretOwnership:
    """Decide, without reading the Secret, whether `<loop>-hmac` is this loop's.

    `created_uid` is what this pass's create returned (None: the name existed);
    `recorded` the uid the loop's status holds (`status.hmacSecretUID`) or the
    operator remembers from an earlier pass whose status write failed. Owned:
    a Secret this pass created, or one whose creation is recorded. Otherwise
    only an upgrade from an operator that read Secrets is owned: that operator
    wrote a Ready reason other than a refusal for this very `generation` (whose
    spec has the key, since the generation is the spec's) only after it had
    checked the owner reference of this Secret; the caller records
    `HMAC_SECRET_ADOPTED` then. Anything else is `SecretNotOwned`: someone
    else made a Secret of that name, or an operator stopped between its create
    and the status write (deleting the Secret resolves both)."""
    if created_uid:
        return SecretOwnership(True, created_uid if created_uid != recorded else None)
    if recorded:
        return SecretOwnership(True)
    if _checked_by_an_older_operator(status, generation):
        return SecretOwnership(True, HMAC_SECRET_ADOPTED)
    name = hmac_secret_name(owner.name)
    return SecretOwnership(
        False,
        problem=SecretProblem(
            "SecretNotOwned",
            f"Secret {name} exists, but the operator did not create it for this ReactiveLoop"
            f" (status.{HMAC_SECRET_UID_FIELD} records none): it is not used, and no node pod"
            " is created; delete or rename it and the operator creates its own",
        ),
    )


def _checked_by_an_older_operator(status: Mapping[str, Any], generation: int) -> bool:
    if status.get("observedGeneration") != generation:
        return False
    conditions = status.get("conditions")
    ready = next(
        (
            cond
            for cond in (conditions if isinstance(conditions, list) else [])
            if isinstance(cond, Mapping) and cond.get("type") == "Ready"
        ),
        None,
    )
    return ready is not None and ready.get("reason") in _SECRET_CHECKED_REASONS


def injection_text(generation: int, target: Any) -> str:
    """The operator-owned inject annotation's value: `{"generation", "target"}`
    as canonical JSON, what a node takes like a round trip's state."""
    return codec.encode_state({"generation": generation, "target": target})


def injection_pod(candidates: Sequence[str], attempt: int) -> str | None:
    """The node pod to write an injection to on retry number `attempt` (0 first)
    of one target generation: `candidates` in the caller's order of preference
    (Ready and looping first, then by ordinal), the next one on each retry, so a
    node that does not take it (stopped, or not watching) cannot hold it up."""
    return candidates[attempt % len(candidates)] if candidates else None


def owns(owner: Owner, obj: Mapping[str, Any]) -> bool:
    """Whether `obj` carries an owner reference to this very ReactiveLoop (its uid)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        isinstance(r, Mapping) and r.get("uid") == owner.uid and r.get("kind") == c.KIND
        for r in refs
    )


def _peer(namespace_labels: Labels, pod_labels: Labels) -> dict[str, Any] | None:
    """Pods with `pod_labels` in namespaces with `namespace_labels`; None when
    the namespace labels are empty (an empty namespaceSelector is "any
    namespace", which no rule of a node's policy may be)."""
    if not namespace_labels:
        return None
    return {
        "namespaceSelector": {"matchLabels": dict(namespace_labels)},
        "podSelector": {"matchLabels": dict(pod_labels)},
    }


def _blocks(cidrs: Iterable[str]) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]


def webhook_of(spec: LoopSpec) -> str:
    """The token webhook the nodes call ("" for none): as in `node_env`."""
    if (spec.is_token or not spec.is_converge) and spec.token.webhook:
        return spec.token.webhook
    return ""


def webhook_peer(url: str, cidrs: Iterable[str]) -> tuple[list[dict[str, Any]], int] | None:
    """(peers, TCP port) a node may reach its token webhook at, or None.

    A host that is an IP address is allowed at that address alone (/32, /128).
    A DNS name cannot be named in a NetworkPolicy: it is allowed at the
    operator's configured `cidrs` (`RLO_WEBHOOK_CIDRS`), and not at all when
    there are none."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        peers = _blocks(cidrs)
    else:
        peers = _blocks([str(ipaddress.ip_network(address))])
    return (peers, port) if peers else None


def network_policy_name(loop: str) -> str:
    return loop + NETWORK_POLICY_SUFFIX


def network_policy(owner: Owner, spec: LoopSpec, net: NodeNetwork) -> Manifest:
    """Who may reach a loop's nodes, and where they may connect.

    Ingress on the node port: the loop's own pods, the operator's pods in the
    operator's namespace, the scraper's pods in the scraper's namespaces; no
    peer is "any namespace". Egress (unless `net.egress` is off): the loop's
    own pods on the node port, DNS, the API server by address, and the token
    webhook (`webhook_peer`). Nothing else. A pod labelled
    `c.PARTITIONED_LABEL` (cut off by a chaos run) is left out of both.
    """
    # A pod that `kubectl rloop chaos` cuts off (it carries PARTITIONED_LABEL)
    # is neither selected nor a peer: NetworkPolicies only add what they allow,
    # so the chaos run's deny-all can cut a pod only if this one lets it go.
    nodes = {
        "matchLabels": selector_labels(owner.name),
        "matchExpressions": [{"key": c.PARTITIONED_LABEL, "operator": "DoesNotExist"}],
    }
    own = {"podSelector": nodes}
    node_port = [{"protocol": "TCP", "port": c.DEFAULT_PORT}]
    sources: list[dict[str, Any]] = [own]
    for peer in (
        _peer(net.operator_namespace_labels, net.operator_pod_labels),
        _peer(net.scraper_namespace_labels, net.scraper_pod_labels),
    ):
        if peer is not None:
            sources.append(peer)
    policy: dict[str, Any] = {
        "podSelector": nodes,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": sources, "ports": node_port}],
    }
    if net.egress:
        dns = _peer(net.dns_namespace_labels, net.dns_pod_labels)
        dns_peers = ([dns] if dns is not None else []) + _blocks(net.dns_cidrs)
        egress: list[dict[str, Any]] = [{"to": [own], "ports": node_port}]
        if dns_peers:
            egress.append(
                {
                    "to": dns_peers,
                    "ports": [
                        {"protocol": "UDP", "port": net.dns_port},
                        {"protocol": "TCP", "port": net.dns_port},
                    ],
                }
            )
        egress.append(
            {
                "to": _blocks(net.api_server_cidrs),
                "ports": [{"protocol": "TCP", "port": p} for p in net.api_server_ports],
            }
        )
        webhook = webhook_peer(webhook_of(spec), net.webhook_cidrs)
        if webhook is not None:
            peers, port = webhook
            egress.append({"to": peers, "ports": [{"protocol": "TCP", "port": port}]})
        policy["policyTypes"] = ["Ingress", "Egress"]
        policy["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, network_policy_name(owner.name), common_labels(owner.name)),
        "spec": policy,
    }


def _seconds(value: float) -> str:
    return format(value, "g")


def node_env(
    owner: Owner,
    spec: LoopSpec,
    ordinal: int,
    webhook_allowed_hosts: tuple[str, ...] = (),
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> list[dict[str, Any]]:
    """The node's configuration (`reactive-loop node` reads RL_*)."""
    name = pod_name(owner.name, ordinal)
    peer = f"{owner.name}-{{ordinal}}.{owner.name}.{owner.namespace}.svc.{cluster_domain}"
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
        {"name": c.ENV_DECISION_FILE, "value": c.DECISION_FILE},
    ]
    webhook = ""  # the one URL a node may call besides its peers and the API server
    if spec.is_token or not spec.is_converge:
        env += [
            {"name": c.ENV_TOKEN_HOLD, "value": _seconds(spec.token.hold_seconds)},
            {"name": c.ENV_TOKEN_LOSS_TIMEOUT, "value": _seconds(spec.token.loss_timeout_seconds)},
        ]
        if spec.token.lease_seconds is not None:
            # Else each node takes the default for its loop size (docs/node.md).
            env.append({"name": c.ENV_TOKEN_LEASE, "value": _seconds(spec.token.lease_seconds)})
        if spec.token.webhook:
            env.append({"name": c.ENV_TOKEN_WEBHOOK, "value": spec.token.webhook})
            if webhook_allowed_hosts:
                env.append(
                    {
                        "name": c.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS,
                        "value": ",".join(webhook_allowed_hosts),
                    }
                )
            webhook = spec.token.webhook
    if not webhook.lower().startswith("https:"):
        # The node's only TLS peer is then the API server, so it trusts just the
        # cluster CA; this also spares every node process ~0.1 s of CPU at start
        # (aiohttp builds its default TLS contexts from the trust store on import).
        env.append({"name": "SSL_CERT_FILE", "value": c.SERVICE_ACCOUNT_CA})
    if spec.auth.hmac:
        # Files of the mounted Secret, never its values in the environment.
        env += [
            {"name": c.ENV_HMAC_KEY_FILE, "value": f"{c.HMAC_MOUNT_DIR}/{c.HMAC_SECRET_PRIMARY}"},
            {
                "name": c.ENV_HMAC_ACCEPTED_FILE,
                "value": f"{c.HMAC_MOUNT_DIR}/{c.HMAC_SECRET_ACCEPTED}",
            },
        ]
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
        "env": node_env(
            owner, spec, ordinal, defaults.webhook_allowed_hosts, defaults.cluster_domain
        ),
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
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": DECISION_VOLUME, "mountPath": c.DECISION_MOUNT_DIR},
        ]
        + (
            [{"name": HMAC_VOLUME, "mountPath": c.HMAC_MOUNT_DIR, "readOnly": True}]
            if spec.auth.hmac
            else []
        ),
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
    if defaults.webhook_allowed_hosts and webhook_of(spec):  # only then: others keep their hash
        inputs["webhookHosts"] = ",".join(defaults.webhook_allowed_hosts)
    if spec.auth.hmac:
        inputs["hmacFrom"] = "files"  # keys from the mounted Secret (rolls older pods)
    if defaults.cluster_domain != DEFAULT_CLUSTER_DOMAIN:
        inputs["clusterDomain"] = defaults.cluster_domain
    # The pod template fields, each only when set: a loop that sets none keeps
    # the hash it had before they existed (an upgrade of the operator rolls nothing).
    template: dict[str, Any] = {
        "imagePullSecrets": spec.image_pull_secrets,
        "topologySpreadConstraints": spec.topology_spread_constraints,
        "priorityClassName": spec.priority_class_name,
        "podLabels": spec.pod_labels,
        "podAnnotations": spec.pod_annotations,
        "volumes": spec.volumes,
        "sidecars": spec.sidecars,
    }
    for key, value in template.items():
        if value is not None and value != [] and value != {}:
            inputs[key] = value
    if spec.topology_spread_constraints == []:
        inputs["topologySpreadConstraints"] = []  # "none", unlike unset (the default)
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
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
            # The decision file (docs/node.md): memory-backed, a few KiB at most.
            {"name": DECISION_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ],
    }
    spread = topology_spread(owner, spec)
    if spread:
        pod_spec["topologySpreadConstraints"] = spread
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [dict(ref) for ref in spec.image_pull_secrets]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.sidecars:
        pod_spec["containers"] += [dict(item) for item in spec.sidecars]
    if spec.volumes:
        pod_spec["volumes"] += [dict(item) for item in spec.volumes]
    if spec.auth.hmac:
        # No subPath: the kubelet then updates the files when the Secret changes.
        pod_spec["volumes"].append(
            {
                "name": HMAC_VOLUME,
                "secret": {
                    "secretName": hmac_secret_name(owner.name),
                    "defaultMode": 0o440,  # root:fsGroup, read by the node's group only
                    "optional": False,
                },
            }
        )
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    # The user's labels and annotations first: the operator's own win (spec
    # parsing refuses reserved keys, so nothing is ever silently dropped).
    meta = _meta(owner, name, {**spec.pod_labels, **node_labels(owner.name, ordinal)})
    meta["annotations"] = {
        **spec.pod_annotations,
        c.REPLICAS_ANNOTATION: str(spec.replicas),
        c.SPEC_HASH_ANNOTATION: spec_hash(spec, defaults),
    }
    if spec.suspend:
        meta["annotations"][c.SUSPENDED_ANNOTATION] = "true"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def default_spread(owner: Owner) -> dict[str, Any]:
    """A loop survives losing a machine only if its nodes are not all on it:
    spread them over hosts, softly, so that a one-node cluster still runs."""
    return {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector_labels(owner.name)},
    }


def topology_spread(owner: Owner, spec: LoopSpec) -> list[dict[str, Any]]:
    """The pods' topologySpreadConstraints: the user's (a constraint without a
    labelSelector gets the loop's), the default when unset, none for []."""
    if spec.topology_spread_constraints is None:
        return [default_spread(owner)]
    selector_of = {"matchLabels": selector_labels(owner.name)}
    return [
        {"labelSelector": selector_of, **item} if "labelSelector" not in item else dict(item)
        for item in spec.topology_spread_constraints
    ]


def disruption_budget_name(loop: str) -> str:
    return loop


def pod_disruption_budget(owner: Owner, spec: LoopSpec) -> Manifest | None:
    """The loop's PodDisruptionBudget (a drain evicts at most `maxUnavailable`
    nodes at once), or None when `spec.disruptionBudget.enabled` is false."""
    if not spec.disruption_budget.enabled:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, disruption_budget_name(owner.name), common_labels(owner.name)),
        "spec": {
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector_labels(owner.name)},
        },
    }
