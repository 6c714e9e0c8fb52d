"""The test kubelet's NetworkPolicy logic (`localcluster.kubelet.netpol`), without a cluster."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from localcluster.kubelet import netpol
from localcluster.kubelet.netpol import Rule

Obj = dict[str, Any]
NS = {"a": {"team": "a"}, "b": {"team": "b", "kubernetes.io/metadata.name": "b"}}


def mkpod(name: str, ip: str, ns: str = "a", **labels: str) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip},
    }


def policy(spec: Obj, ns: str = "a", name: str = "p") -> Obj:
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


SERVER = mkpod("server", "10.77.0.2", app="server")
CLIENT = mkpod("client", "10.77.0.3", role="client")
OTHER = mkpod("other", "10.77.0.4", role="other")
REMOTE = mkpod("remote", "10.77.0.5", ns="b", role="client")
PODS = [SERVER, CLIENT, OTHER, REMOTE]


def rules(*policies: Obj, pod: Obj = SERVER) -> list[Rule] | None:
    return netpol.ingress_rules(pod, policies, PODS, NS)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
    ],
)
def test_selector_matches(selector: Obj, labels: dict[str, str], matches: bool) -> None:
    assert netpol.selector_matches(selector, labels) is matches


def test_unselected_pod_is_not_isolated() -> None:
    other_app = policy({"podSelector": {"matchLabels": {"app": "nope"}}, "ingress": [{}]})
    egress_only = policy({"podSelector": {}, "policyTypes": ["Egress"]})
    other_ns = policy({"podSelector": {}}, ns="b")
    assert rules() is None
    assert rules(other_app, egress_only, other_ns) is None


def test_selected_without_rules_admits_nothing() -> None:
    assert rules(policy({"podSelector": {}, "policyTypes": ["Ingress"]})) == []
    assert rules(policy({"podSelector": {}})) == []  # policyTypes default to Ingress


def test_pod_selector_is_within_the_policy_namespace() -> None:
    p = policy(
        {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        }
    )
    assert rules(p) == [Rule(("10.77.0.3/32",), None)]


def test_namespace_selector_alone_and_combined() -> None:
    only_ns = policy({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert rules(only_ns) == [Rule(tuple(f"10.77.0.{i}/32" for i in (2, 3, 4, 5)), None)]
    combined = policy(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "b"}},
                            "podSelector": {"matchLabels": {"role": "client"}},
                        }
                    ]
                }
            ],
        }
    )
    assert rules(combined) == [Rule(("10.77.0.5/32",), None)]


def test_ip_block_except_and_ports() -> None:
    p = policy(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.128.0.0/9"]}}],
                    "ports": [
                        {"port": 8080},
                        {"protocol": "UDP", "port": 53},
                        {"port": "http"},
                        {"port": "missing"},
                        {"port": 9000, "endPort": 9010},
                        {"protocol": "TCP"},
                    ],
                }
            ],
        }
    )
    assert rules(p) == [
        Rule(
            ("10.0.0.0/9",),
            (("TCP", "8080"), ("UDP", "53"), ("TCP", "8080"), ("TCP", "9000:9010"), ("TCP", None)),
        )
    ]


def test_rules_of_every_selecting_policy_add_up_and_empty_from_is_anyone() -> None:
    a = policy({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}, name="a")
    b = policy(
        {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "y"}}}]}]},
        name="b",
    )
    assert rules(a, b) == [Rule(None, (("TCP", "80"),))]  # b selects no pod: adds nothing


def test_pods_without_ip_are_skipped() -> None:
    pending = mkpod("pending", "", role="client")
    p = policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    got = netpol.ingress_rules(SERVER, [p], [SERVER, pending], NS)
    assert got == [Rule(("10.77.0.2/32",), None)]


def test_restore_text() -> None:
    assert netpol.restore_text(None, "10.77.0.1") == "*filter\n:RL-NETPOL - [0:0]\nCOMMIT\n"
    text = netpol.restore_text(
        [Rule(("10.77.0.3/32",), (("TCP", "8080"),)), Rule(None, None)], "10.77.0.1"
    )
    assert text.splitlines() == [
        "*filter",
        ":RL-NETPOL - [0:0]",
        "-A RL-NETPOL -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A RL-NETPOL -i lo -j RETURN",
        "-A RL-NETPOL -s 10.77.0.1/32 -j RETURN",
        "-A RL-NETPOL -s 10.77.0.3/32 -p tcp --dport 8080 -j RETURN",
        "-A RL-NETPOL -j RETURN",
        "-A RL-NETPOL -j DROP",
        "COMMIT",
    ]


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="no iptables-restore")
def test_restore_text_parses() -> None:
    text = netpol.restore_text(
        [Rule(("10.0.0.0/9",), (("UDP", "53"), ("TCP", "9000:9010"), ("TCP", None)))],
        "10.77.0.1",
    )
    proc = subprocess.run(
        ["iptables-restore", "--test", "--noflush"], input=text, capture_output=True, text=True
    )
    assert proc.returncode == 0 or "Permission denied" in proc.stderr, proc.stderr
