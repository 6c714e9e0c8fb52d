"""A suspended node (the operator's `reactive-loop.dev/suspended` annotation):
it starts no round trip and counts no wait, still answers, and resumes from
the state it holds. Only the pod store reads the annotation (local mode has none)."""

from __future__ import annotations

import asyncio
import contextlib

from node.nodesupport import eventually
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import load_behavior
from reactive_node.core import contract
from reactive_node.core.codec import encode, make_request
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node, Outcome
from reactive_node.runtime.pod_store import _snapshot
from reactive_node.runtime.store import MemoryStore

STATE = '{"generation":4,"target":"kept"}'


def make_node(store: MemoryStore) -> Node:
    config = NodeConfig(
        loop="demo",
        node="demo-0",
        ordinal=0,
        peers=("127.0.0.1:1", "127.0.0.1:2"),
        interval=0.01,
        timeout=0.005,
        max_backoff=0.02,
    )
    metrics = NodeMetrics(CollectorRegistry(), "demo", config.node, "converge", "ring")
    return Node(config, load_behavior("converge"), store, metrics)


class Peer:
    """A transport that answers every round trip with the sender's own state."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        self.calls += 1
        return Outcome(
            status=200, body=encode({"from": "demo-1", "state": {"generation": 0, "target": None}})
        )


async def test_a_suspended_node_starts_no_round_trip_and_resumes_where_it_stopped() -> None:
    store = MemoryStore(STATE)
    store.suspended = True
    node = make_node(store)
    await node.start()
    assert node.suspended
    peer = Peer()
    task = asyncio.create_task(node.run(peer))
    try:
        await eventually(lambda: node.phase == "suspended", what="phase suspended")
        turns = 0
        while turns < 5:  # several intervals pass while suspended
            await asyncio.sleep(node.config.interval)
            turns += 1
        assert peer.calls == 0
        assert node.waits == 0  # being suspended is no wait
        assert node.describe()["suspended"] is True
        # Still answers a peer (or the operator) while suspended.
        request = make_request("demo", "demo-1", 1, 1, {"generation": 2, "target": "old"})
        reply = await node.serve_roundtrip(encode(request), None, "10.0.0.9")
        assert reply.status == 200
        assert node.state == {"generation": 4, "target": "kept"}
        # The operator clears the annotation: the node goes on from its state.
        store.edit(suspended=False)
        node.adopt(await store.load())
        await eventually(
            lambda: node.loops > 0,
            what=f"a round trip after resuming ({node.waits} waits, {node.last_wait_reason})",
        )
        assert node.phase == "looping"
        assert node.state == {"generation": 4, "target": "kept"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_only_true_suspends_a_pod_stores_node() -> None:
    def pod(annotations: dict[str, str]) -> dict[str, object]:
        return {"metadata": {"annotations": annotations}}

    assert _snapshot(pod({contract.SUSPENDED_ANNOTATION: "true"})).suspended is True
    for value in ("false", "", "True", "yes"):
        assert _snapshot(pod({contract.SUSPENDED_ANNOTATION: value})).suspended is False
    assert _snapshot(pod({})).suspended is False


async def test_a_memory_store_node_is_never_suspended_unless_told() -> None:
    node = make_node(MemoryStore(STATE))
    await node.start()
    assert node.suspended is False
