"""Child manifests: owner references, restricted pods, least-privilege RBAC."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_node.core import contract as c
from reactive_operator import builders, config
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.spec import SpecError, parse_spec

OWNER = Owner("demo", "ns1", "uid-123")
DEFAULTS = NodeDefaults("reactive-loop-node:test", "IfNotPresent")


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_every_child_is_owned_by_the_loop() -> None:
    spec = parse_spec({"auth": {"hmac": True}})
    children = [
        builders.service(OWNER),
        *builders.node_rbac(OWNER, 0),
        builders.pod(OWNER, spec, 0, DEFAULTS),
        builders.hmac_secret(OWNER, b"k" * 32),
        builders.network_policy(OWNER, spec, NET),
    ]
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-123"
        assert ref["kind"] == c.KIND
        assert ref["controller"] is True
        assert child["metadata"]["namespace"] == "ns1"


def test_service_is_headless_and_publishes_not_ready() -> None:
    svc = builders.service(OWNER)
    assert svc["metadata"]["name"] == "demo"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {c.LOOP_LABEL: "demo", c.COMPONENT_LABEL: c.NODE_COMPONENT}


def test_role_allows_only_own_pod() -> None:
    role = builders.role(OWNER, 4)
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["pods"],
        "resourceNames": ["demo-4"],
        "verbs": ["get", "patch", "watch"],
    }
    binding = builders.role_binding(OWNER, 4)
    assert binding["roleRef"]["name"] == "demo-4"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-4", "namespace": "ns1"}]


def test_pod_is_restricted_and_configured() -> None:
    spec = parse_spec({"replicas": 5, "topology": "mesh", "loop": {"interval": 2, "timeout": 1}})
    pod = builders.pod(OWNER, spec, 3, DEFAULTS)
    ps = pod["spec"]
    assert pod["metadata"]["name"] == ps["hostname"] == ps["serviceAccountName"] == "demo-3"
    assert ps["subdomain"] == "demo"
    assert ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (ctr,) = ps["containers"]
    sc = ctr["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert ctr["command"] == ["reactive-loop", "node"]
    assert ctr["readinessProbe"]["httpGet"]["path"] == c.READY_PATH
    assert ctr["livenessProbe"]["httpGet"]["path"] == c.HEALTH_PATH
    assert ctr["image"] == "reactive-loop-node:test"
    env = env_of(pod)
    assert env[c.ENV_NODE] == "demo-3"
    assert env[c.ENV_ORDINAL] == "3"
    assert env[c.ENV_REPLICAS] == "5"
    assert env[c.ENV_TOPOLOGY] == "mesh"
    assert env[c.ENV_INTERVAL] == "2"
    assert env[c.ENV_STORE] == "pod"
    assert env[c.ENV_PEER_TEMPLATE] == "demo-{ordinal}.demo.ns1.svc.cluster.local:8080"
    assert c.ENV_HMAC_KEY_FILE not in env
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp", "decision"]
    assert pod["metadata"]["annotations"][c.REPLICAS_ANNOTATION] == "5"
    assert pod["metadata"]["labels"][c.ORDINAL_LABEL] == "3"
    assert c.STATE_ANNOTATION not in pod["metadata"]["annotations"]


def test_node_pods_share_a_decision_volume_with_sidecars() -> None:
    # The node keeps its decision file on an emptyDir its sidecars can mount
    # (docs/node.md, "The decision file"); not under the HMAC keys' mount.
    spec = parse_spec(
        {
            "auth": {"hmac": True},
            "sidecars": [
                {
                    "name": "watcher",
                    "image": "busybox:1",
                    "volumeMounts": [
                        {"name": "decision", "mountPath": "/decision", "readOnly": True}
                    ],
                }
            ],
        }
    )
    pod = builders.pod(OWNER, spec, 0, DEFAULTS)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["decision"] == {
        "name": "decision",
        "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
    }
    node, sidecar = pod["spec"]["containers"]
    assert {"name": "decision", "mountPath": "/var/run/reactive-loop/decision"} in node[
        "volumeMounts"
    ]
    mounts = [m["mountPath"] for m in node["volumeMounts"]]
    assert c.DECISION_MOUNT_DIR not in c.HMAC_MOUNT_DIR
    assert len(set(mounts)) == len(mounts)
    assert env_of(pod)[c.ENV_DECISION_FILE] == "/var/run/reactive-loop/decision/state.json"
    assert c.DECISION_FILE.startswith(c.DECISION_MOUNT_DIR + "/")
    # Every volume a container mounts exists in the pod.
    for container in (node, sidecar):
        assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
    # A user's volume may not take the name.
    with pytest.raises(SpecError, match=r"spec\.volumes"):
        parse_spec({"volumes": [{"name": "decision", "emptyDir": {}}]})


def test_token_and_hmac_env() -> None:
    spec = parse_spec(
        {
            "behavior": "token",
            "token": {"holdSeconds": 1.5, "webhook": "http://10.0.0.1:9000/fence"},
            "auth": {"hmac": True},
        }
    )
    pod = builders.pod(OWNER, spec, 0, DEFAULTS)
    env = env_of(pod)
    assert env[c.ENV_TOKEN_HOLD] == "1.5"
    assert env[c.ENV_TOKEN_WEBHOOK] == "http://10.0.0.1:9000/fence"
    # The keys are files of the mounted Secret (updated by the kubelet), never env values.
    assert env[c.ENV_HMAC_KEY_FILE] == "/var/run/reactive-loop/hmac/primary"
    assert env[c.ENV_HMAC_ACCEPTED_FILE] == "/var/run/reactive-loop/hmac/accepted"
    assert not any("secretKeyRef" in str(v) for v in env.values())
    (volume,) = (v for v in pod["spec"]["volumes"] if "secret" in v)
    assert volume["secret"] == {"secretName": "demo-hmac", "defaultMode": 0o440, "optional": False}
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": volume["name"], "mountPath": c.HMAC_MOUNT_DIR, "readOnly": True} in mounts
    assert not any("subPath" in m for m in mounts)
    plain = parse_spec({"behavior": "token", "token": {"holdSeconds": 1.5}})
    assert builders.spec_hash(spec, DEFAULTS) != builders.spec_hash(plain, DEFAULTS)


@pytest.mark.parametrize(
    ("spec", "cluster_ca_only"),
    [
        ({}, True),
        ({"behavior": "token", "token": {"webhook": "http://fence.ns:9000/f"}}, True),
        ({"behavior": "token", "token": {"webhook": "HTTPS://fence.example/f"}}, False),
    ],
)
def test_nodes_trust_only_the_cluster_ca_unless_a_webhook_needs_more(
    spec: dict[str, Any], cluster_ca_only: bool
) -> None:
    env = env_of(builders.pod(OWNER, parse_spec(spec), 0, DEFAULTS))
    assert (env.get("SSL_CERT_FILE") == c.SERVICE_ACCOUNT_CA) is cluster_ca_only
    assert ("SSL_CERT_FILE" in env) is cluster_ca_only


def test_spec_hash_ignores_replicas_and_target_but_not_timings() -> None:
    base = parse_spec({"replicas": 3, "target": {"a": 1}})
    assert builders.spec_hash(base, DEFAULTS) == builders.spec_hash(
        parse_spec({"replicas": 7, "target": {"a": 2}}), DEFAULTS
    )
    assert builders.spec_hash(base, DEFAULTS) != builders.spec_hash(
        parse_spec({"loop": {"interval": 3}}), DEFAULTS
    )
    assert builders.spec_hash(base, DEFAULTS) != builders.spec_hash(
        parse_spec({"image": "other:1"}), DEFAULTS
    )


NET = config.OperatorConfig(lease_namespace="rl-system").node_network


def _peers(policy: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    key = "from" if direction == "ingress" else "to"
    return [p for rule in policy["spec"].get(direction, []) for p in rule[key]]


NODES = {
    "matchLabels": builders.selector_labels("demo"),
    "matchExpressions": [{"key": c.PARTITIONED_LABEL, "operator": "DoesNotExist"}],
}
"""The loop's node pods, less one that `kubectl rloop chaos` cut off."""


def test_network_policy_admits_loop_operator_and_scraper_by_namespace_and_pod() -> None:
    net = config.load(
        {
            "RLO_LEASE_NAMESPACE": "rl-system",
            "RLO_SCRAPER_NAMESPACE_LABELS": "kubernetes.io/metadata.name=monitoring",
        }
    ).node_network
    np = builders.network_policy(OWNER, parse_spec({}), net)
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": c.DEFAULT_PORT}]
    own, operator, scraper = rule["from"]
    # The loop's own pods: a podSelector alone is the policy's own namespace.
    assert own == {"podSelector": NODES}
    assert np["spec"]["podSelector"] == NODES
    # The operator: its pods' labels, in the operator's namespace only (unset:
    # the namespace of its Lease, which the chart sets to the release's).
    assert operator == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rl-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "reactive-loop-operator"}},
    }
    assert scraper == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }


label_maps = st.lists(
    st.tuples(st.sampled_from(["a", "b", "team"]), st.sampled_from(["x", "y"])), max_size=2
).map(lambda pairs: tuple(dict(pairs).items()))


@given(
    operator_ns=label_maps,
    scraper_ns=label_maps,
    scraper_pods=label_maps,
    dns_ns=label_maps,
    egress=st.booleans(),
)
def test_no_peer_of_a_node_policy_is_any_namespace(
    operator_ns: tuple[tuple[str, str], ...],
    scraper_ns: tuple[tuple[str, str], ...],
    scraper_pods: tuple[tuple[str, str], ...],
    dns_ns: tuple[tuple[str, str], ...],
    egress: bool,
) -> None:
    net = config.NodeNetwork(
        operator_pod_labels=(("app", "op"),),
        operator_namespace_labels=operator_ns,
        scraper_pod_labels=scraper_pods,
        scraper_namespace_labels=scraper_ns,
        egress=egress,
        dns_namespace_labels=dns_ns,
        dns_pod_labels=(("k8s-app", "kube-dns"),),
        api_server_cidrs=("10.96.0.1/32",),
        api_server_ports=(443,),
    )
    np = builders.network_policy(OWNER, parse_spec({}), net)
    peers = _peers(np, "ingress") + _peers(np, "egress")
    for peer in peers:
        if "namespaceSelector" in peer:
            assert peer["namespaceSelector"]["matchLabels"], peer
        elif "podSelector" in peer:
            assert peer["podSelector"]["matchLabels"] == builders.selector_labels("demo")
        else:
            assert list(peer) == ["ipBlock"]
            assert peer["ipBlock"]["cidr"] == "10.96.0.1/32"
    # A rule whose namespace labels are empty is left out, never widened.
    ingress = _peers(np, "ingress")
    assert len(ingress) == 1 + bool(operator_ns) + bool(scraper_ns)
    assert ("Egress" in np["spec"]["policyTypes"]) is egress


def test_node_egress_is_its_loop_dns_the_api_server_and_nothing_else() -> None:
    np = builders.network_policy(OWNER, parse_spec({}), NET)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    loop, dns, api = np["spec"]["egress"]
    assert loop == {
        "to": [{"podSelector": NODES}],
        "ports": [{"protocol": "TCP", "port": c.DEFAULT_PORT}],
    }
    assert dns == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    # The API server is no pod: by address, on its ports only.
    assert api == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
    }


@pytest.mark.parametrize(
    ("webhook", "cidrs", "expected"),
    [
        ("http://10.1.2.3:9000/fence", (), ([{"ipBlock": {"cidr": "10.1.2.3/32"}}], 9000)),
        (
            "https://10.1.2.3/fence",
            ("192.0.2.0/24",),
            ([{"ipBlock": {"cidr": "10.1.2.3/32"}}], 443),
        ),
        ("http://[2001:db8::7]/f", (), ([{"ipBlock": {"cidr": "2001:db8::7/128"}}], 80)),
        ("https://hooks.example/f", (), None),  # a DNS name and no configured CIDRs
        (
            "https://hooks.example:8443/f",
            ("192.0.2.0/24", "198.51.100.7/32"),
            (
                [{"ipBlock": {"cidr": "192.0.2.0/24"}}, {"ipBlock": {"cidr": "198.51.100.7/32"}}],
                8443,
            ),
        ),
        ("", ("192.0.2.0/24",), None),
    ],
)
def test_the_token_webhook_is_allowed_where_it_can_be_named(
    webhook: str, cidrs: tuple[str, ...], expected: tuple[list[dict[str, Any]], int] | None
) -> None:
    assert builders.webhook_peer(webhook, cidrs) == expected
    net = config.NodeNetwork(
        operator_pod_labels=(("a", "b"),),
        operator_namespace_labels=(("n", "m"),),
        api_server_cidrs=("10.96.0.1/32",),
        api_server_ports=(443,),
        webhook_cidrs=cidrs,
    )
    spec = parse_spec({"behavior": "token", "token": {"webhook": webhook or None}})
    rules = builders.network_policy(OWNER, spec, net)["spec"]["egress"]
    webhook_rules = rules[2:]  # after the loop's pods and the API server (no DNS rule here)
    if expected is None:
        assert webhook_rules == []
    else:
        peers, port = expected
        assert webhook_rules == [{"to": peers, "ports": [{"protocol": "TCP", "port": port}]}]
    # A converge loop never calls its webhook: no rule for it.
    converge = parse_spec({"token": {"webhook": "http://10.1.2.3/f"}})
    assert len(builders.network_policy(OWNER, converge, net)["spec"]["egress"]) == 2


def test_network_policy_settings_are_read_and_checked() -> None:
    cfg = config.load(
        {
            "RLO_OPERATOR_NAMESPACE_LABELS": "kubernetes.io/metadata.name=ops",
            "RLO_NODE_EGRESS": "false",
            "RLO_DNS_CIDRS": "169.254.20.10",
            "RLO_DNS_PORT": "5353",
            "RLO_API_SERVER_CIDRS": "172.18.0.2/32, 10.96.0.1",
            "RLO_API_SERVER_PORTS": "6443",
            "RLO_WEBHOOK_CIDRS": "192.0.2.0/24",
        }
    )
    net = cfg.node_network
    assert net.operator_namespace_labels == (("kubernetes.io/metadata.name", "ops"),)
    assert net.egress is False
    assert net.dns_cidrs == ("169.254.20.10/32",)
    assert net.dns_port == 5353
    assert net.api_server_cidrs == ("172.18.0.2/32", "10.96.0.1/32")
    assert net.api_server_ports == (6443,)
    assert net.webhook_cidrs == ("192.0.2.0/24",)
    for env, message in (
        ({"RLO_OPERATOR_NAMESPACE_LABELS": ""}, "any namespace"),
        ({"RLO_API_SERVER_CIDRS": ""}, "API server"),
        ({"RLO_API_SERVER_CIDRS": "kubernetes.default"}, "not a CIDR"),
        ({"RLO_API_SERVER_PORTS": "0"}, "not a port"),
        ({"RLO_DNS_PORT": "53,54"}, "one port"),
        ({"RLO_WEBHOOK_CIDRS": "10.0.0.0/33"}, "not a CIDR"),
        ({"RLO_NODE_EGRESS": "maybe"}, "true or false"),
    ):
        with pytest.raises(config.ConfigError, match=message):
            config.load(env)


@given(st.binary(min_size=32, max_size=64).filter(lambda k: k.strip() == k))
def test_secret_round_trips_the_key(key: bytes) -> None:
    secret = builders.hmac_secret(OWNER, key)
    assert base64.b64decode(secret["data"][c.HMAC_SECRET_PRIMARY]) == key
    assert secret["data"][c.HMAC_SECRET_ACCEPTED] == ""
    assert builders.owns(OWNER, secret)


def test_selector_string_matches_labels() -> None:
    sel = builders.selector("demo")
    parsed = dict(part.split("=") for part in sel.split(","))
    assert parsed == builders.selector_labels("demo")


def test_pods_of_a_loop_spread_over_hosts_softly() -> None:
    spec = parse_spec({"replicas": 3, "target": {"a": 1}})
    pod = builders.pod(OWNER, spec, 1, DEFAULTS)
    [spread] = pod["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["maxSkew"] == 1
    # Soft: a one-node cluster still runs every node of the loop.
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    # It counts exactly this loop's node pods, those the Service selects.
    assert spread["labelSelector"]["matchLabels"] == builders.selector_labels(OWNER.name)
    assert builders.service(OWNER)["spec"]["selector"] == builders.selector_labels(OWNER.name)
