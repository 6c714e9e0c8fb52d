"""State stores: the file store's atomic writes, and the pod-annotation store
against kmock's Kubernetes emulator (resourceVersion, conflicts, the watch)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest
from aiohttp.test_utils import TestClient, TestServer
from node.kubeemulator import PODS, ResourceVersionEmulator, pod
from node.nodesupport import eventually
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Converge
from reactive_node.core import contract
from reactive_node.core.codec import encode_state
from reactive_node.runtime.app import NODE_KEY, create_app
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.kube import KubeClient
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.pod_store import PodStore
from reactive_node.runtime.store import FileStore, StoreConflict, StoreError

NS = "loops"
POD = "demo-1"


# --- file store ------------------------------------------------------------------
async def test_file_store_round_trip_and_hand_edits(tmp_path: pathlib.Path) -> None:
    store = FileStore(tmp_path / "sub" / "demo-0.json", poll_interval=0.02)
    assert (await store.load()).raw is None
    await store.save('{"generation":1,"target":null}')
    assert (tmp_path / "sub" / "demo-0.json").read_text() == '{"generation":1,"target":null}'
    assert (await store.load()).raw == '{"generation":1,"target":null}'
    seen: list[str | None] = []

    async def watch() -> None:
        async for snapshot in store.watch():
            seen.append(snapshot.raw)

    task = asyncio.create_task(watch())
    try:
        await store.save('{"generation":2,"target":null}')  # our own write: no event
        (tmp_path / "sub" / "demo-0.json").write_text('{"generation":9}')
        await eventually(lambda: seen == ['{"generation":9}'], within=5)
    finally:
        task.cancel()


async def test_file_store_failed_rename_keeps_the_old_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "demo-0.json"
    store = FileStore(path)
    await store.save("old")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError):
        await store.save("new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["demo-0.json"]  # no temp file left behind


async def test_file_store_fsyncs_before_the_rename(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await FileStore(tmp_path / "n.json").save("x")
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, directory


def test_file_store_readers_never_see_a_partial_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "n.json"
    store = FileStore(path)
    states = [json.dumps({"generation": i, "target": "x" * (i * 997 % 50000)}) for i in range(60)]
    asyncio.run(store.save(states[0]))
    stop = threading.Event()
    torn: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            if text not in states:
                torn.append(text[:40])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for text in states[1:]:
            asyncio.run(store.save(text))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert torn == []


# --- pod store ---------------------------------------------------------------------
Emulated = tuple[ResourceVersionEmulator, KubeClient]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulated]:
    async with ResourceVersionEmulator() as km, kmock.Server(km) as server:
        annotations = {
            contract.STATE_ANNOTATION: encode_state({"generation": 3, "target": "t3"}),
            contract.REPLICAS_ANNOTATION: "3",
        }
        km.objects[PODS, NS, POD] = pod(NS, POD, annotations)
        km.objects[PODS, NS, "demo-2"] = pod(NS, "demo-2", {})
        api = KubeClient(str(server.url), ssl_context=False)
        try:
            yield km, api
        finally:
            await api.close()


def pod_annotations(km: ResourceVersionEmulator) -> dict[str, str]:
    result: dict[str, str] = km.objects[PODS, NS, POD]["metadata"]["annotations"]
    return result


async def annotate(api: KubeClient, key: str, value: str, name: str = POD) -> None:
    """What `kubectl annotate --overwrite` does: a merge patch without a precondition
    (sent with a separate plain aiohttp session)."""
    async with aiohttp.ClientSession() as session:
        r = await session.patch(
            f"{api.server}/api/v1/namespaces/{NS}/pods/{name}",
            data=json.dumps({"metadata": {"annotations": {key: value}}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status == 200, await r.text()


async def test_pod_store_loads_and_patches_with_resource_version(
    emulator: Emulated,
) -> None:
    km, api = emulator
    store = PodStore(NS, POD, api=api)
    snapshot = await store.load()
    assert json.loads(snapshot.raw or "") == {"generation": 3, "target": "t3"}
    assert snapshot.replicas == 3
    await store.save('{"generation":4,"target":"t4"}')
    await store.save('{"generation":5,"target":"t5"}')  # the new resourceVersion was kept
    assert pod_annotations(km)[contract.STATE_ANNOTATION] == '{"generation":5,"target":"t5"}'
    assert pod_annotations(km)[contract.REPLICAS_ANNOTATION] == "3"  # other keys untouched
    assert km.writes == 2


async def test_pod_store_conflict_rereads(
    emulator: Emulated,
) -> None:
    km, api = emulator
    store = PodStore(NS, POD, api=api)
    await store.load()
    await annotate(api, contract.STATE_ANNOTATION, '{"generation":8,"target":"by hand"}')
    with pytest.raises(StoreConflict) as conflict:
        await store.save('{"generation":4,"target":"t4"}')
    assert conflict.value.current.raw == '{"generation":8,"target":"by hand"}'
    assert pod_annotations(km)[contract.STATE_ANNOTATION] == '{"generation":8,"target":"by hand"}'
    await store.save('{"generation":9,"target":"t9"}')  # re-read: now it goes through
    assert pod_annotations(km)[contract.STATE_ANNOTATION] == '{"generation":9,"target":"t9"}'


#: The node of these tests: demo-1 of three, on the pod store.
CONFIG = NodeConfig(loop="demo", ordinal=1, replicas=3, store="pod", namespace=NS, pod_name=POD)


def make_node(store: PodStore, registry: CollectorRegistry) -> Any:
    return create_app(CONFIG, store, registry, run_loop=False)


async def roundtrip(c: TestClient[Any, Any], seq: int, generation: int, target: str) -> Any:
    r = await c.post(
        contract.ROUNDTRIP_PATH,
        data=request(seq, generation, target),
        headers={"Content-Type": "application/json"},
    )
    return r.status, await r.json()


async def test_node_on_the_pod_store_redecides_after_a_conflict(
    emulator: Emulated,
) -> None:
    km, api = emulator
    registry = CollectorRegistry()
    config = CONFIG
    # No watch running here, so the node cannot have heard of the edit below.
    node = Node(config, Converge(), PodStore(NS, POD, api=api), metrics(config, registry))
    await node.start()
    # Someone annotates a newer state ...
    await annotate(api, contract.STATE_ANNOTATION, '{"generation":7,"target":"hand"}')
    # ... and a peer brings generation 4: the write conflicts, the node re-reads
    # the pod, adopts generation 7 and decides again: 7 wins, nothing to write.
    reply = await node.serve_roundtrip(request(1, 4, "t4"), None)
    assert reply.status == 200
    assert reply.body["state"] == {"generation": 7, "target": "hand"}
    assert node.state == {"generation": 7, "target": "hand"}
    assert pod_annotations(km)[contract.STATE_ANNOTATION] == '{"generation":7,"target":"hand"}'
    labels = {"loop": "demo", "node": "demo-1"}
    assert registry.get_sample_value(contract.M_STATE_WRITES, {**labels, "result": "conflict"}) == 1
    # A newer generation from a peer is written, with the fresh resourceVersion.
    reply = await node.serve_roundtrip(request(2, 8, "t8"), None)
    assert reply.status == 200
    # The state, with the decision history's tail beside it (docs/node.md).
    stored = json.loads(pod_annotations(km)[contract.STATE_ANNOTATION])
    tail = stored.pop(contract.HISTORY_STATE_KEY)
    assert stored == {"generation": 8, "target": "t8"}
    assert [(e["kind"], e.get("generation")) for e in tail] == [("edit", 7), ("adopt", 8)]
    # Steady state: the same answer again makes no API write.
    writes = km.writes
    for seq in range(3, 8):
        assert (await node.serve_roundtrip(request(seq, 8, "t8"), None)).status == 200
    assert km.writes == writes


def metrics(config: NodeConfig, registry: CollectorRegistry) -> NodeMetrics:
    return NodeMetrics(registry, config.loop, config.node, config.behavior, config.topology)


def request(seq: int, generation: int, target: str) -> bytes:
    body = {
        "loop": "demo",
        "from": "demo-0",
        "boot": 1,
        "seq": seq,
        "state": {"generation": generation, "target": target},
    }
    return json.dumps(body).encode()


async def test_node_watch_picks_up_annotations_and_survives_bad_ones(
    emulator: Emulated,
) -> None:
    _km, api = emulator
    registry = CollectorRegistry()
    app = make_node(PodStore(NS, POD, api=api), registry)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        node: Node = app[NODE_KEY]
        assert node.state == {"generation": 3, "target": "t3"}
        # The node's own write comes back through the watch and changes nothing.
        status, _ = await roundtrip(c, 1, 4, "t4")
        assert status == 200
        # The operator scales the loop: the node adopts the new size.
        await annotate(api, contract.REPLICAS_ANNOTATION, "5")
        await eventually(lambda: node.replicas == 5, what="replicas from the annotation")
        # An annotation on another pod is not ours.
        await annotate(api, contract.STATE_ANNOTATION, '{"generation":99,"target":"x"}', "demo-2")
        # A bad hand edit: reported, the last good state kept.
        await annotate(api, contract.STATE_ANNOTATION, '{"generation": "lots"}')
        await eventually(lambda: node.state_error is not None, what="stateError")
        doc = await (await c.get(contract.STATE_PATH)).json()
        assert doc["state"] == {"generation": 4, "target": "t4"}
        assert "invalid stored state" in doc["stateError"]
        labels = {"loop": "demo", "node": "demo-1"}
        assert registry.get_sample_value(contract.M_STATE_INVALID, labels) == 1
        # A good hand edit is adopted.
        await annotate(api, contract.STATE_ANNOTATION, '{"generation":6,"target":"kubectl"}')
        await eventually(lambda: node.state == {"generation": 6, "target": "kubectl"})
        assert node.state_error is None
