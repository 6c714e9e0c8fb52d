"""Child manifests: owner references, restricted pods, least-privilege RBAC."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_node import contract as c
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.spec import parse_spec

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
        builders.network_policy(
            OWNER,
            operator_pod_labels={"a": "b"},
            scraper_pod_labels={},
            scraper_namespace_labels={},
        ),
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
    assert c.ENV_HMAC_KEY not in env
    assert pod["metadata"]["annotations"][c.REPLICAS_ANNOTATION] == "5"
    assert pod["metadata"]["labels"][c.ORDINAL_LABEL] == "3"
    assert c.STATE_ANNOTATION not in pod["metadata"]["annotations"]


def test_token_and_hmac_env() -> None:
    spec = parse_spec(
        {
            "behavior": "token",
            "token": {"holdSeconds": 1.5, "webhook": "http://10.0.0.1:9000/fence"},
            "auth": {"hmac": True},
        }
    )
    env = env_of(builders.pod(OWNER, spec, 0, DEFAULTS))
    assert env[c.ENV_TOKEN_HOLD] == "1.5"
    assert env[c.ENV_TOKEN_WEBHOOK] == "http://10.0.0.1:9000/fence"
    assert env[c.ENV_HMAC_KEY] == {"secretKeyRef": {"name": "demo-hmac", "key": c.HMAC_SECRET_KEY}}


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


def test_network_policy_admits_loop_operator_and_scraper() -> None:
    np = builders.network_policy(
        OWNER,
        operator_pod_labels={"app.kubernetes.io/name": "reactive-loop-operator"},
        scraper_pod_labels={"app.kubernetes.io/name": "prometheus"},
        scraper_namespace_labels={},
    )
    (rule,) = np["spec"]["ingress"]
    selectors = [s["podSelector"]["matchLabels"] for s in rule["from"]]
    assert builders.selector_labels("demo") in selectors
    assert {"app.kubernetes.io/name": "reactive-loop-operator"} in selectors
    assert {"app.kubernetes.io/name": "prometheus"} in selectors
    assert rule["ports"] == [{"protocol": "TCP", "port": c.DEFAULT_PORT}]
    assert np["spec"]["policyTypes"] == ["Ingress"]


@given(st.binary(min_size=1, max_size=64))
def test_secret_round_trips_the_key(key: bytes) -> None:
    import base64

    secret = builders.hmac_secret(OWNER, key)
    assert base64.b64decode(secret["data"][c.HMAC_SECRET_KEY]) == key


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
