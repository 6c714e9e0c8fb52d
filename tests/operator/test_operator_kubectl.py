"""What a newcomer reads with kubectl: the summary column, one event source,
kopf's bookkeeping kept small, the children's labels, and a `kubectl describe`
that stays short at 64 nodes."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from localcluster import Cluster
from reactive_node.core import contract as c
from reactive_operator import builders
from reactive_operator.builders import NodeDefaults, Owner
from reactive_operator.config import OperatorConfig
from reactive_operator.kube import Kube
from reactive_operator.main import EVENT_SOURCE, kopf_settings
from reactive_operator.plan import PodView
from reactive_operator.spec import parse_spec
from reactive_operator.status import NodeReport, aggregate, converge_summary, parse_report

OWNER = Owner("demo", "ns1", "uid-123")


def as_body(raw: dict[str, Any]) -> kopf.Body:
    """A kopf Body of a plain dict (what kopf gets from the API)."""
    return kopf.Body(raw)  # type: ignore[arg-type]


def pods(n: int) -> list[PodView]:
    return [
        PodView(f"d-{i}", i, "h", str(n), "Running", True, False, f"10.0.0.{i}") for i in range(n)
    ]


def report(name: str, generation: int) -> NodeReport:
    parsed = parse_report({"node": name, "phase": "looping", "summary": {"generation": generation}})
    assert parsed is not None
    return parsed


def summary(held: list[int], target_generation: int | None) -> str:
    ps = pods(len(held))
    status = aggregate(
        name="d",
        generation=9,
        spec=parse_spec({"replicas": len(held), "target": {"v": 1}}),
        spec_error=None,
        pods=ps,
        reports={p.name: report(p.name, g) for p, g in zip(ps, held, strict=True)},
        target_generation=target_generation,
        target_digest="x",
        injected_generation=None,
        previous_conditions=[],
        now="2026-01-01T00:00:00Z",
    )
    text = status["summary"]
    assert isinstance(text, str)
    return text


def test_the_converge_summary_says_which_target_and_how_many_nodes_hold_it() -> None:
    assert summary([3, 3, 3, 3, 3], 3) == "target 3: 5/5 nodes"
    assert summary([3, 1, 3], 3) == "target 3: 2/3 nodes"
    assert summary([0, 0], None) == "no target"


@given(target=st.integers(1, 2**53 - 1), wanted=st.integers(1, 200), data=st.data())
def test_the_summary_counts_nodes_never_generations(target: int, wanted: int, data: Any) -> None:
    held = data.draw(st.integers(0, wanted))
    text = converge_summary(target, held, wanted)
    assert text == f"target {target}: {held}/{wanted} nodes"
    assert "generation" not in text  # "generation 1/3" read as "1 of 3"


def test_events_come_from_one_source_name() -> None:
    settings = kopf_settings(OperatorConfig(identity="op-0"))
    assert settings.posting.reporting_component == EVENT_SOURCE == builders.MANAGED_BY
    assert settings.posting.reporting_instance == "op-0"


async def test_the_operators_own_events_use_the_same_source() -> None:
    posted: list[dict[str, Any]] = []

    class Core:
        async def create_namespaced_event(self, ns: str, body: dict[str, Any], **_: Any) -> Any:
            posted.append(body)
            return None

    kube = Kube.__new__(Kube)
    kube.core = Core()  # type: ignore[assignment]
    loop = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "d", "namespace": "n"}}
    with contextlib.suppress(Exception):  # the fake returns no HTTP response to read
        await kube.post_event(loop, kind="Normal", reason="R", message="m")
    assert posted, "no event body was built"
    assert posted[0]["source"] == {"component": EVENT_SOURCE}
    assert posted[0]["reportingComponent"] == EVENT_SOURCE


def bookkeeping(body: dict[str, Any]) -> dict[str, str]:
    storage = kopf_settings(OperatorConfig()).persistence.diffbase_storage
    patch = kopf.Patch()
    storage.store(body=as_body(body), patch=patch, essence=storage.build(body=as_body(body)))
    annotations = dict(patch)["metadata"]["annotations"]
    assert isinstance(annotations, dict)
    return annotations


def loop_body(spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "reactive-loop.dev/v1alpha1",
        "kind": "ReactiveLoop",
        "metadata": {"name": "d", "namespace": "n", "annotations": annotations},
        "spec": spec,
    }


@pytest.mark.parametrize("size", [10, 100_000, 1_000_000])
def test_kopfs_diff_base_is_a_digest_whatever_the_spec_size(size: int) -> None:
    big = loop_body({"target": {"k": "v" * size}}, note="n" * size)
    written = bookkeeping(big)
    assert list(written) == ["kopf.reactive-loop.dev/last-handled-configuration"]
    (value,) = written.values()
    assert len(value) < 200
    assert "v" * 10 not in value
    assert "n" * 10 not in value  # nor a copy of the user's annotations


def test_kopfs_diff_base_changes_with_the_spec_only() -> None:
    storage = kopf_settings(OperatorConfig()).persistence.diffbase_storage
    a = storage.build(body=as_body(loop_body({"replicas": 3})))
    assert a == storage.build(body=as_body(loop_body({"replicas": 3}, note="x")))
    assert a != storage.build(body=as_body(loop_body({"replicas": 4})))
    # What kopf stored reads back as what it builds for the same spec: no spurious update.
    body = loop_body({"replicas": 3})
    body["metadata"]["annotations"].update(bookkeeping(body))
    assert storage.fetch(body=as_body(body)) == a
    assert json.loads(next(iter(bookkeeping(body).values()))) == a


def test_children_do_not_reuse_helms_instance_label() -> None:
    spec = parse_spec({"replicas": 2, "target": {"v": 1}, "auth": {"hmac": True}})
    defaults = NodeDefaults("img:1", "IfNotPresent")
    children = [
        builders.service(OWNER),
        builders.pod(OWNER, spec, 0, defaults),
        *builders.node_rbac(OWNER, 0),
    ]
    for child in children:
        labels = child["metadata"]["labels"]
        assert "app.kubernetes.io/instance" not in labels, child["kind"]
        assert labels[c.LOOP_LABEL] == "demo", child["kind"]
    # The selectors were never the instance label: existing loops keep theirs.
    assert builders.selector_labels("demo") == {
        c.LOOP_LABEL: "demo",
        c.COMPONENT_LABEL: c.NODE_COMPONENT,
    }


# --- kubectl describe at 64 nodes ------------------------------------------------

NODES = 64
#: The status section of `kubectl describe rloop` of a 64-node loop, whatever
#: its nodes do (a steady loop: at most 40).
DESCRIBE_STATUS_LINES = 45


def _label(key: str) -> str:
    """kubectl's label for a field: `readyReplicas` → `Ready Replicas`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key[:1].upper() + key[1:])


def describe_lines(value: Mapping[str, Any], level: int = 0) -> list[str]:
    """A mapping as `kubectl describe` prints a custom resource: keys sorted,
    one line per scalar, nested mappings indented, each item of a list of
    mappings as its keys, each item of a list of scalars on a line."""
    out: list[str] = []
    pad = "  " * level
    for key in sorted(value):
        item = value[key]
        if isinstance(item, Mapping):
            out.append(f"{pad}{_label(key)}:")
            out.extend(describe_lines(item, level + 1))
        elif isinstance(item, list):
            out.append(f"{pad}{_label(key)}:")
            for child in item:
                if isinstance(child, Mapping):
                    out.extend(describe_lines(child, level + 1))
                else:
                    out.append(f"{pad}  {child}")
        else:
            out.append(f"{pad}{_label(key)}:  {item}")
    return out


@st.composite
def big_loop(draw: st.DrawFn) -> dict[str, Any]:
    """The status of a 64-node loop in any state its nodes can be in."""
    behavior = draw(st.sampled_from(["converge", "token"]))
    raw: dict[str, Any] = {"replicas": NODES, "behavior": behavior}
    if behavior == "token":
        raw["token"] = {"lossTimeoutSeconds": 120}
    if behavior == "converge":
        raw["target"] = {"v": 1}
    spec = parse_spec(raw)
    ps: list[PodView] = []
    reports: dict[str, NodeReport | None] = {}
    for i in range(NODES):
        name = f"demo-{i}"
        if draw(st.integers(0, 9)) == 0:
            continue  # no pod
        ps.append(
            PodView(name, i, "h", str(NODES), "Running", draw(st.booleans()), False, "10.0.0.1")
        )
        if draw(st.integers(0, 9)) == 0:
            reports[name] = None
            continue
        reports[name] = parse_report(
            {
                "node": name,
                "phase": draw(st.sampled_from(["looping", "waiting", "starting"])),
                "lastWaitReason": "timeout",
                "loops": draw(st.integers(0, 10**6)),
                "waits": draw(st.integers(0, 10**6)),
                "stateError": draw(st.sampled_from([None, "not JSON " * 40])),
                "summary": {
                    "generation": draw(st.integers(0, 3)),
                    "holding": draw(st.booleans()),
                    "epoch": [draw(st.integers(0, 9)), i],
                },
            }
        )
    return aggregate(
        name="demo",
        generation=3,
        spec=spec,
        spec_error=None,
        pods=ps,
        reports=reports,
        target_generation=3 if spec.is_converge else None,
        target_digest="d" * 64 if spec.is_converge else None,
        injected_generation=3 if spec.is_converge else None,
        previous_conditions=[],
        now="2026-01-01T00:00:00Z",
    )


def steady_loop() -> dict[str, Any]:
    ps = pods(NODES)
    return aggregate(
        name="d",
        generation=3,
        spec=parse_spec({"replicas": NODES, "target": {"v": 1}}),
        spec_error=None,
        pods=ps,
        reports={p.name: report(p.name, 3) for p in ps},
        target_generation=3,
        target_digest="d" * 64,
        injected_generation=3,
        previous_conditions=[],
        now="2026-01-01T00:00:00Z",
    )


def every_node_failing() -> dict[str, Any]:
    ps = [replace(p, ready=False) for p in pods(NODES)]
    reports = {
        p.name: parse_report(
            {
                "node": p.name,
                "phase": "waiting",
                "lastWaitReason": "timeout",
                "summary": {"generation": 2},
            }
        )
        for p in ps
    }
    return aggregate(
        name="d",
        generation=3,
        spec=parse_spec({"replicas": NODES, "target": {"v": 1}}),
        spec_error=None,
        pods=ps,
        reports=reports,
        target_generation=3,
        target_digest="d" * 64,
        injected_generation=3,
        previous_conditions=[],
        now="2026-01-01T00:00:00Z",
    )


def test_a_steady_64_node_loop_describes_in_40_lines() -> None:
    lines = describe_lines({"status": steady_loop()})
    assert len(lines) <= 40, "\n".join(lines)
    assert not any(line.strip().startswith("Nodes") for line in lines)  # nothing to list


@settings(max_examples=50, deadline=None)
@given(big_loop())
def test_a_64_node_loop_describes_in_a_screen_whatever_its_nodes_do(status: dict[str, Any]) -> None:
    lines = describe_lines({"status": status})
    assert len(lines) <= DESCRIBE_STATUS_LINES, "\n".join(lines)
    listed = status.get("nodes", [])
    assert len(listed) <= 5
    assert all(len(line) <= 200 for line in listed)


def test_kubectl_describe_of_a_64_node_loop_is_short(
    cluster: Cluster, crd: str, namespace: str
) -> None:
    """The real `kubectl describe` of a loop whose 64 nodes all need attention:
    its status is valid for the CRD (nothing pruned) and prints in about 40 lines."""
    loop = {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": "d"},
        "spec": {"replicas": NODES, "target": {"v": 1}},
    }
    cluster.apply(yaml.safe_dump(loop), namespace)
    status = every_node_failing()
    assert len(status["nodes"]) == 5
    assert status["nodesNotListed"] == NODES - 5
    cluster.kubectl(
        "patch", "rloop", "d", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    stored = cluster.get("rloop", "d", namespace)["status"]
    assert stored == status  # the schema keeps every field
    text = cluster.kubectl("describe", "rloop", "d", "-n", namespace).stdout
    lines = text.splitlines()
    section = lines[
        lines.index("Status:") + 1 : next(
            i for i, line in enumerate(lines) if line.startswith("Events:")
        )
    ]
    assert len(section) <= DESCRIBE_STATUS_LINES, text
    assert "    d-0: pod Running, not ready; waiting (timeout); behind target 3 (holds 2)" in lines
    assert any(re.fullmatch(r"  Nodes Not Listed:\s+59", line) for line in lines), text
    # The pure rendering the other tests count is what kubectl prints.
    assert len(describe_lines(status)) == len(section), text
