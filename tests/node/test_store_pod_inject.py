"""Targets the operator injects through the pod annotation `reactive-loop.dev/inject`
(issue 11 §4; docs/node.md, "Injected targets").

The node takes the annotation from the watch on its own pod, checks it exactly
like a round trip's state, merges it like a received state (`respond`, or
`inject` for a behaviour that takes a target), persists it, and reports a bad
one as `stateError`. Here with the node alone (`Node.take_injection`), with the
whole app on kmock's Kubernetes emulator, and, against a real API server and
the chart's admission policy, in tests/chart/test_node_policies.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from kmock._internal.k8s import KubernetesObjectConflictError
from node.kubeemulator import PODS, ResourceVersionEmulator, pod
from node.nodesupport import eventually
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Behavior, Converge, load_behavior
from reactive_node.core import contract
from reactive_node.core.behaviors.base import canonical
from reactive_node.core.codec import encode_state
from reactive_node.runtime.app import NODE_KEY, create_app
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.kube import KubeClient
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.pod_store import PodStore, _snapshot
from reactive_node.runtime.store import MemoryStore, Snapshot, StoreError

NS = "loops"
POD = "demo-1"
MAX_INT = contract.MAX_STATE_INT
CONFIG = NodeConfig(
    loop="demo", ordinal=1, replicas=3, store="pod", namespace=NS, pod_name=POD, interval=0.2
)
LABELS = {"loop": "demo", "node": POD}
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "custom"


def leaderboard() -> Behavior:
    """The example behaviour that takes a target (examples/custom), loaded by name."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        return load_behavior("python:leaderboard:Leaderboard")
    finally:
        sys.path.remove(str(EXAMPLE_DIR))


def injection(generation: Any, target: Any) -> str:
    """The annotation's text as the operator writes it."""
    return canonical({"generation": generation, "target": target})


async def make_node(
    behavior: Behavior | None = None, store: MemoryStore | None = None
) -> tuple[Node, MemoryStore, CollectorRegistry]:
    store = store or MemoryStore(encode_state({"generation": 3, "target": "t3"}))
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, "demo", POD, "converge", "ring")
    node = Node(CONFIG, behavior or Converge(), store, metrics)
    await node.start()
    return node, store, registry


def invalid_count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(contract.M_STATE_INVALID, LABELS) or 0.0


# --- the node alone -----------------------------------------------------------------


async def test_an_injection_is_merged_persisted_and_recorded_as_no_round_trip() -> None:
    node, store, registry = await make_node()
    await node.take_injection(Snapshot(None, inject=injection(7, {"image": "v7"})))
    assert node.state == {"generation": 7, "target": {"image": "v7"}}
    stored = json.loads(store.raw or "")
    tail = stored.pop(contract.HISTORY_STATE_KEY)
    assert stored == {"generation": 7, "target": {"image": "v7"}}
    # An input, not a decision on a peer's answer: the adopt names no round trip.
    (adopt,) = [e for e in tail if e["kind"] == "adopt"]
    assert (adopt["generation"], adopt["rt"]) == (7, None)
    assert node.describe()["stateError"] is None
    # The same annotation again (every later watch event carries it): nothing to do.
    writes = store.writes
    await node.take_injection(Snapshot(None, inject=injection(7, {"image": "v7"})))
    assert store.writes == writes
    # An older one loses, as a peer's older state would.
    await node.take_injection(Snapshot(None, inject=injection(5, "old")))
    assert node.state == {"generation": 7, "target": {"image": "v7"}}
    assert store.writes == writes
    assert invalid_count(registry) == 0


DEEP: Any = 0
for _ in range(contract.MAX_STATE_DEPTH + 2):
    DEEP = [DEEP]

BAD_INJECTIONS = {
    "not JSON": "{generation: 9}",
    "NaN": '{"generation": 9, "target": NaN}',
    "an integer above 2^53-1": injection(9, 2**53),
    "a generation above 2^53-1": injection(2**53, "x"),
    "nested too deep": injection(9, DEEP),
    "over 64 KiB": injection(9, "x" * contract.MAX_BODY_BYTES),
    "not an object": "[9, 1]",
    "a string generation": injection("9", "x"),
    "an unknown field": canonical({"generation": 9, "target": "x", "holding": True}),
    "not UTF-8": '{"generation": 9, "target": "\udcff"}',
}


@pytest.mark.parametrize("case", sorted(BAD_INJECTIONS))
async def test_a_bad_injection_is_reported_and_changes_nothing(case: str) -> None:
    node, store, registry = await make_node()
    await node.take_injection(Snapshot(None, inject=BAD_INJECTIONS[case]))
    assert node.state == {"generation": 3, "target": "t3"}
    assert store.writes == 0
    assert node.injection_error is not None
    assert node.injection_error.startswith("invalid injected target: ")
    assert node.describe()["stateError"] == node.injection_error
    assert len(node.injection_error) <= 300
    assert invalid_count(registry) == 1
    # Reported once per annotation text, not per watch event.
    await node.take_injection(Snapshot(None, inject=BAD_INJECTIONS[case]))
    assert invalid_count(registry) == 1
    # A good one afterwards is taken and clears the report.
    await node.take_injection(Snapshot(None, inject=injection(10, "t10")))
    assert node.state == {"generation": 10, "target": "t10"}
    assert node.describe()["stateError"] is None


async def test_a_refused_injection_stops_being_reported_once_the_loop_moved_past_it() -> None:
    node, _, _ = await make_node()
    refused = canonical({"generation": 9, "target": "t9", "extra": 1})  # JSON, not a state
    await node.take_injection(Snapshot(None, inject=refused))
    assert "unknown fields" in (node.describe()["stateError"] or "")
    # A peer brings generation 8: not yet past the refused 9.
    body = {"loop": "demo", "from": "demo-0", "boot": 1, "seq": 1}
    reply = await node.serve_roundtrip(
        json.dumps({**body, "state": {"generation": 8, "target": "t8"}}).encode(), None
    )
    assert reply.status == 200
    assert node.describe()["stateError"] is not None
    reply = await node.serve_roundtrip(
        json.dumps({**body, "seq": 2, "state": {"generation": 9, "target": "t9"}}).encode(), None
    )
    assert reply.status == 200
    assert node.describe()["stateError"] is None


async def test_a_store_that_fails_leaves_the_injection_to_be_taken_again() -> None:
    node, store, _ = await make_node()
    store.fail_saves = 1
    with pytest.raises(StoreError):
        await node.take_injection(Snapshot(None, inject=injection(4, "t4")))
    assert node.state == {"generation": 3, "target": "t3"}
    assert node.describe()["stateError"] is None  # not the injection's fault
    await node.take_injection(Snapshot(None, inject=injection(4, "t4")))
    assert node.state == {"generation": 4, "target": "t4"}


async def test_nothing_is_taken_before_the_state_is_loaded() -> None:
    store = MemoryStore()
    registry = CollectorRegistry()
    node = Node(CONFIG, Converge(), store, NodeMetrics(registry, "demo", POD, "converge", "ring"))
    await node.take_injection(Snapshot(None, inject=injection(4, "t4")))
    assert node.state is None
    assert store.writes == 0
    await node.start()
    await node.take_injection(Snapshot(None, inject=injection(4, "t4")))  # not marked as seen
    assert node.state == {"generation": 4, "target": "t4"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
states = st.one_of(
    json_values,
    st.fixed_dictionaries({"generation": st.integers(-3, 2**54), "target": json_values}),
    st.fixed_dictionaries(
        {"generation": st.integers(0, 20), "target": json_values},
        optional={"extra": json_values},
    ),
)


@given(value=states)
@settings(max_examples=150, deadline=None)
async def test_an_injection_is_accepted_exactly_when_a_round_trip_would_be(value: Any) -> None:
    """The same validation and bounds as a round trip's state, and the same merge."""
    by_rt, _, _ = await make_node()
    by_inject, _, _ = await make_node()
    body = {"loop": "demo", "from": "demo-0", "boot": 1, "seq": 1, "state": value}
    reply = await by_rt.serve_roundtrip(json.dumps(body).encode(), None)
    assert reply.status in (200, 400)
    await by_inject.take_injection(Snapshot(None, inject=json.dumps(value)))
    assert (reply.status == 200) == (by_inject.injection_error is None), (reply.body, value)
    assert by_inject.state == by_rt.state


# --- a behaviour that takes a target --------------------------------------------------


async def test_a_target_taker_gets_the_injection_through_inject() -> None:
    board = leaderboard()
    store = MemoryStore(encode_state({"generation": 2, "best": None}))
    node, store, _ = await make_node(board, store)
    await node.take_injection(Snapshot(None, inject=injection(5, {"player": "ada", "score": 3})))
    assert node.state == {"generation": 5, "best": {"player": "ada", "score": 3}}
    writes = store.writes
    # A stale annotation (a restart, a pod the operator wrote to earlier) is skipped.
    await node.take_injection(Snapshot(None, inject=injection(4, {"player": "bob", "score": 9})))
    assert node.state == {"generation": 5, "best": {"player": "ada", "score": 3}}
    assert store.writes == writes
    # A target `inject` refuses: reported, nothing written.
    await node.take_injection(Snapshot(None, inject=injection(6, {"player": "", "score": -1})))
    assert node.state == {"generation": 5, "best": {"player": "ada", "score": 3}}
    assert "invalid injected target" in (node.describe()["stateError"] or "")
    # Not an injection at all: refused before `inject` is called.
    await node.take_injection(Snapshot(None, inject=canonical({"generation": 7, "best": None})))
    assert "exactly {generation, target}" in (node.injection_error or "")
    await node.take_injection(Snapshot(None, inject=injection(7, {"player": "cy", "score": 4})))
    assert node.state == {"generation": 7, "best": {"player": "cy", "score": 4}}
    assert node.describe()["stateError"] is None


# --- the whole node on the emulated API server ------------------------------------------


@attrs.define(kw_only=True)
class ConflictingEmulator(ResourceVersionEmulator):
    """Answers the next `conflicts` writes that carry a resourceVersion (the
    node's: the operator's and kubectl's carry none) with 409 Conflict."""

    conflicts: int = 0

    async def _handle(self, request: Any) -> Any:
        data = request.data if isinstance(request.data, dict) else {}
        preconditioned = "resourceVersion" in (data.get("metadata") or {})
        if self.conflicts > 0 and request.action == kmock.action.UPDATE and preconditioned:
            self.conflicts -= 1
            raise KubernetesObjectConflictError()
        return await super()._handle(request)


Emulated = tuple[ConflictingEmulator, KubeClient]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulated]:
    async with ConflictingEmulator() as km, kmock.Server(km) as server:
        annotations = {
            contract.STATE_ANNOTATION: encode_state({"generation": 3, "target": "t3"}),
            contract.REPLICAS_ANNOTATION: "3",
        }
        km.objects[PODS, NS, POD] = pod(NS, POD, annotations)
        api = KubeClient(str(server.url), ssl_context=False)
        try:
            yield km, api
        finally:
            await api.close()


def annotations_of(km: ResourceVersionEmulator) -> dict[str, str]:
    result: dict[str, str] = km.objects[PODS, NS, POD]["metadata"]["annotations"]
    return result


async def annotate(api: KubeClient, values: dict[str, str | None]) -> None:
    """What the operator's `Kube.write_injection` (or `kubectl annotate`) sends:
    a merge patch without a precondition."""
    async with aiohttp.ClientSession() as session:
        r = await session.patch(
            f"{api.server}/api/v1/namespaces/{NS}/pods/{POD}",
            data=json.dumps({"metadata": {"annotations": values}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status == 200, await r.text()


def test_the_pod_store_hands_on_the_annotation_as_text() -> None:
    def snap(annotations: dict[str, Any]) -> Snapshot:
        return _snapshot({"metadata": {"annotations": annotations}})

    assert snap({}).inject is None
    text = injection(4, {"a": 1})
    assert snap({contract.INJECT_ANNOTATION: text}).inject == text
    assert snap({contract.INJECT_ANNOTATION: {"generation": 4}}).inject is None  # not a string


async def test_the_node_takes_an_injection_from_its_pod_watch(emulator: Emulated) -> None:
    km, api = emulator
    app = create_app(CONFIG, PodStore(NS, POD, api=api), CollectorRegistry(), run_loop=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        node: Node = app[NODE_KEY]
        await annotate(api, {contract.INJECT_ANNOTATION: injection(9, {"image": "v9"})})
        await eventually(lambda: node.state == {"generation": 9, "target": {"image": "v9"}})
        # Persisted in the node's own annotation; the inject annotation is left as it is.
        stored = json.loads(annotations_of(km)[contract.STATE_ANNOTATION])
        assert {k: stored[k] for k in ("generation", "target")} == node.state
        assert annotations_of(km)[contract.INJECT_ANNOTATION] == injection(9, {"image": "v9"})
        # A bad one: reported through /v1/state (the operator raises the condition).
        await annotate(api, {contract.INJECT_ANNOTATION: '{"generation": 10'})
        await eventually(lambda: node.injection_error is not None, what="the report")
        doc = await (await c.get(contract.STATE_PATH)).json()
        assert doc["state"] == {"generation": 9, "target": {"image": "v9"}}
        assert doc["stateError"].startswith("invalid injected target")
        # An older one, then a replica count as a barrier (the watch keeps order):
        # once the count is adopted the older injection was seen, and lost.
        writes = km.writes
        await annotate(api, {contract.INJECT_ANNOTATION: injection(2, "old")})
        await annotate(api, {contract.REPLICAS_ANNOTATION: "4"})
        await eventually(lambda: node.replicas == 4, what="the barrier")
        assert node.state == {"generation": 9, "target": {"image": "v9"}}
        assert km.writes == writes + 2  # the two annotations above, nothing by the node


async def test_an_injection_the_node_cannot_persist_is_taken_when_it_can(
    emulator: Emulated,
) -> None:
    km, api = emulator
    app = create_app(CONFIG, PodStore(NS, POD, api=api), CollectorRegistry(), run_loop=False)
    async with TestClient(TestServer(app, host="127.0.0.1")):
        node: Node = app[NODE_KEY]
        # Every write conflicts until the node gives up (StoreError): the watch
        # starts again, reads the pod afresh and the injection is taken then.
        km.conflicts = 5
        await annotate(api, {contract.INJECT_ANNOTATION: injection(11, "t11")})
        await eventually(lambda: km.conflicts == 0, what="the conflicts")
        await eventually(lambda: node.state == {"generation": 11, "target": "t11"})
        stored = json.loads(annotations_of(km)[contract.STATE_ANNOTATION])
        assert stored["generation"] == 11
