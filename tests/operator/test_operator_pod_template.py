"""The node pod template fields of a ReactiveLoop (issue 12 §2): parsed with
messages that name the field, built into the pod without touching what the
operator owns, and rolled like `image`; the PodDisruptionBudget; the cluster domain."""

from __future__ import annotations

from typing import Any

import pytest
from reactive_node.core import contract as c
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.config import ConfigError, load
from reactive_operator.spec import SpecError, parse_spec

OWNER = Owner("demo", "ns1", "uid-123")
DEFAULTS = NodeDefaults("img:1", "IfNotPresent")
SELECTOR = {c.LOOP_LABEL: "demo", c.COMPONENT_LABEL: c.NODE_COMPONENT}

SIDECAR = {"name": "watcher", "image": "busybox:1.36", "args": ["sleep", "inf"]}
VOLUME = {"name": "shared", "emptyDir": {}}

#: Every template field, with a value that differs from its default.
FIELDS: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry"}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 2,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
    "affinity": {"nodeAffinity": {}},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    "priorityClassName": "loops-high",
    "nodeSelector": {"disk": "ssd"},
    "podLabels": {"team": "a"},
    "podAnnotations": {"example.com/owner": "team-a"},
    "volumes": [VOLUME],
    "sidecars": [SIDECAR],
}


def pod(spec: dict[str, Any], ordinal: int = 0) -> dict[str, Any]:
    return builders.pod(OWNER, parse_spec(spec), ordinal, DEFAULTS)


def test_every_template_field_reaches_the_pod() -> None:
    built = pod(FIELDS)
    ps = built["spec"]
    assert ps["imagePullSecrets"] == [{"name": "registry"}]
    (spread,) = ps["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"] == {"matchLabels": SELECTOR}  # filled in: the loop's pods
    assert ps["affinity"] == {"nodeAffinity": {}}
    assert ps["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert ps["priorityClassName"] == "loops-high"
    assert ps["nodeSelector"] == {"disk": "ssd"}
    assert [x["name"] for x in ps["containers"]] == ["node", "watcher"]
    assert ps["containers"][1] == SIDECAR
    assert [v["name"] for v in ps["volumes"]] == ["tmp", "decision", "shared"]
    assert built["metadata"]["labels"]["team"] == "a"
    assert built["metadata"]["annotations"]["example.com/owner"] == "team-a"


def test_the_operators_own_labels_and_annotations_stay() -> None:
    built = pod(FIELDS, ordinal=2)
    labels = built["metadata"]["labels"]
    assert {k: labels[k] for k in SELECTOR} == SELECTOR
    assert labels[c.ORDINAL_LABEL] == "2"
    annotations = built["metadata"]["annotations"]
    assert annotations[c.REPLICAS_ANNOTATION] == "3"
    assert annotations[c.SPEC_HASH_ANNOTATION] == builders.spec_hash(parse_spec(FIELDS), DEFAULTS)


def test_spread_defaults_to_hosts_and_can_be_turned_off() -> None:
    (default,) = pod({})["spec"]["topologySpreadConstraints"]
    assert default == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": SELECTOR},
    }
    assert "topologySpreadConstraints" not in pod({"topologySpreadConstraints": []})["spec"]
    own = {"matchLabels": {"team": "a"}}
    mine = [
        {
            "maxSkew": 1,
            "topologyKey": "k",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": own,
        }
    ]
    (kept,) = pod({"topologySpreadConstraints": mine})["spec"]["topologySpreadConstraints"]
    assert kept["labelSelector"] == own


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_changing_a_template_field_rolls_the_pods(field: str) -> None:
    before = builders.spec_hash(parse_spec({}), DEFAULTS)
    after = builders.spec_hash(parse_spec({field: FIELDS[field]}), DEFAULTS)
    assert before != after


def test_an_empty_spread_list_is_a_change_of_its_own() -> None:
    specs: list[dict[str, Any]] = [{}, {"topologySpreadConstraints": []}]
    hashes = {builders.spec_hash(parse_spec(spec), DEFAULTS) for spec in specs}
    assert len(hashes) == 2


def test_suspend_and_the_disruption_budget_roll_nothing() -> None:
    base = builders.spec_hash(parse_spec({}), DEFAULTS)
    for spec in ({"suspend": True}, {"disruptionBudget": {"enabled": False}}):
        assert builders.spec_hash(parse_spec(spec), DEFAULTS) == base


@pytest.mark.parametrize(
    ("spec", "digest"),
    [
        ({}, "c3548d50fe040337"),
        ({"behavior": "token"}, "6c367b2fb70a34e9"),
        (
            {
                "auth": {"hmac": True},
                "image": "x:1",
                "tolerations": [{"key": "a", "operator": "Exists"}],
            },
            "fafd2c84606199d8",
        ),
    ],
)
def test_a_loop_without_the_new_fields_keeps_its_hash(spec: dict[str, Any], digest: str) -> None:
    """Computed by the operator before the template fields existed: an upgrade rolls nothing."""
    assert builders.spec_hash(parse_spec(spec), DEFAULTS) == digest


#: (spec, the field the message names, words of the message).
BAD = [
    ({"podLabels": {c.LOOP_LABEL: "other"}}, "spec.podLabels", "operator's own"),
    ({"podLabels": {"app.kubernetes.io/name": "x"}}, "spec.podLabels", "operator's own"),
    ({"podLabels": {"team": "not ok!"}}, "spec.podLabels", "value of 'team'"),
    ({"podLabels": {"-x": "a"}}, "spec.podLabels", "key '-x'"),
    ({"podAnnotations": {c.REPLICAS_ANNOTATION: "9"}}, "spec.podAnnotations", "operator's own"),
    ({"podAnnotations": {c.SUSPENDED_ANNOTATION: "true"}}, "spec.podAnnotations", "reserved"),
    ({"podAnnotations": {"a": "x" * 5000}}, "spec.podAnnotations", "longer than"),
    ({"podAnnotations": {f"k{i}": "" for i in range(40)}}, "spec.podAnnotations", "at most 32"),
    ({"sidecars": [{"name": "node", "image": "x"}]}, "spec.sidecars", "node's own"),
    ({"sidecars": [{"name": "a"}]}, "spec.sidecars", "image"),
    ({"sidecars": [SIDECAR, SIDECAR]}, "spec.sidecars", "used twice"),
    ({"sidecars": [{"name": "Bad_Name", "image": "x"}]}, "spec.sidecars", "DNS-1123 label"),
    ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "spec.volumes", "node's own"),
    ({"volumes": [{"name": "hmac-keys", "emptyDir": {}}]}, "spec.volumes", "node's own"),
    ({"volumes": [{"name": "decision", "emptyDir": {}}]}, "spec.volumes", "node's own"),
    ({"volumes": [{"emptyDir": {}}]}, "spec.volumes", "name must be"),
    ({"imagePullSecrets": [{"nam": "x"}]}, "spec.imagePullSecrets", "{name: <Secret name>}"),
    ({"imagePullSecrets": [{"name": "UPPER"}]}, "spec.imagePullSecrets", "DNS subdomain"),
    ({"priorityClassName": "Not_A_Name"}, "spec.priorityClassName", "DNS subdomain"),
    (
        {"topologySpreadConstraints": [{"maxSkew": 1}]},
        "spec.topologySpreadConstraints",
        "topologyKey",
    ),
    ({"disruptionBudget": {"maxUnavailable": 0}}, "spec.disruptionBudget.maxUnavailable", "1..200"),
    (
        {"disruptionBudget": {"maxUnavailable": "0%"}},
        "spec.disruptionBudget.maxUnavailable",
        "1%..100%",
    ),
    (
        {"disruptionBudget": {"maxUnavailable": "half"}},
        "spec.disruptionBudget.maxUnavailable",
        "percentage",
    ),
    ({"suspend": "perhaps"}, "spec.suspend", "boolean"),
]


@pytest.mark.parametrize(("spec", "field", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_template_fields_are_invalid_specs_naming_the_field(
    spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert message.startswith(field + ":") or f"; {field}:" in message, message
    assert words in message, message


# --- PodDisruptionBudget --------------------------------------------------------


def test_the_disruption_budget_defaults_to_one_node_at_a_time() -> None:
    pdb = builders.pod_disruption_budget(OWNER, parse_spec({}))
    assert pdb is not None
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == "demo"
    (ref,) = pdb["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-123"
    assert ref["controller"] is True
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}


def test_the_disruption_budget_takes_a_percentage_and_can_be_turned_off() -> None:
    pdb = builders.pod_disruption_budget(
        OWNER, parse_spec({"disruptionBudget": {"maxUnavailable": "34%"}})
    )
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == "34%"
    off = parse_spec({"disruptionBudget": {"enabled": False}})
    assert builders.pod_disruption_budget(OWNER, off) is None


# --- cluster domain --------------------------------------------------------------


def peer_template(defaults: NodeDefaults) -> str:
    built = builders.pod(OWNER, parse_spec({}), 0, defaults)
    env = {e["name"]: e.get("value") for e in built["spec"]["containers"][0]["env"]}
    return str(env[c.ENV_PEER_TEMPLATE])


def test_the_cluster_domain_names_the_peers() -> None:
    assert peer_template(DEFAULTS) == "demo-{ordinal}.demo.ns1.svc.cluster.local:8080"
    corp = NodeDefaults("img:1", "IfNotPresent", cluster_domain="corp.example")
    assert peer_template(corp) == "demo-{ordinal}.demo.ns1.svc.corp.example:8080"
    # The peers' names are in the pod: a new domain rolls the pods.
    assert builders.spec_hash(parse_spec({}), corp) != builders.spec_hash(parse_spec({}), DEFAULTS)


def test_the_cluster_domain_is_read_and_checked() -> None:
    assert load({}).cluster_domain == "cluster.local"
    assert load({"RLO_CLUSTER_DOMAIN": "Corp.Example."}).cluster_domain == "corp.example"
    for bad in ("a..b", "-x.local", "under_score.local", "x" * 64 + ".local"):
        with pytest.raises(ConfigError, match="RLO_CLUSTER_DOMAIN"):
            load({"RLO_CLUSTER_DOMAIN": bad})
