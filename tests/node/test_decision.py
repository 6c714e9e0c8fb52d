"""The decision file (docs/node.md, "The decision file"): what a node decided,
kept for the applications beside it, replaced atomically, only on change."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node.nodesupport import MakeNode
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Behavior, load_behavior
from reactive_node.core import contract
from reactive_node.core.codec import encode, make_request
from reactive_node.core.decision import DECISION_VERSION, decision_of
from reactive_node.runtime import decision
from reactive_node.runtime.config import NodeConfig, load_config
from reactive_node.runtime.decision import DecisionFile
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore

FIELDS = {"version", "loop", "node", "behavior", "changedAt", "decision"}


def read(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    assert set(doc) == FIELDS
    assert doc["version"] == DECISION_VERSION
    return doc


def make_node(path: Path, behavior: Behavior, *, now: list[float] | None = None) -> Node:
    clock = (lambda: now[0]) if now is not None else None
    config = NodeConfig(
        loop="demo", node="demo-0", ordinal=0, peers=("127.0.0.1:1",) * 3, decision_file=path
    )
    file = DecisionFile(
        path,
        loop="demo",
        node="demo-0",
        behavior=behavior.name,
        clock=clock or (lambda: 1.0),
    )
    metrics = NodeMetrics(CollectorRegistry(), "demo", "demo-0", behavior.name, "ring")
    if clock is None:
        return Node(config, behavior, MemoryStore(), metrics, decision=file)
    return Node(config, behavior, MemoryStore(), metrics, decision=file, clock=clock)


def roundtrip(state: dict[str, Any], seq: int) -> bytes:
    return encode(make_request("demo", "demo-1", 1, seq, state))


async def test_a_converge_node_keeps_its_target_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "decision" / "state.json"
    now = [100.0]
    node = make_node(path, load_behavior("converge"), now=now)
    await node.start()
    doc = read(path)  # written at start
    assert doc["decision"] == {"generation": 0, "target": None}
    assert (doc["loop"], doc["node"], doc["behavior"]) == ("demo", "demo-0", "converge")
    assert node.decision is not None
    assert node.decision.writes == 1

    now[0] = 101.0
    target = {"version": "v2", "replicas": [1, 2]}
    reply = await node.serve_roundtrip(roundtrip({"generation": 2, "target": target}, 1), None)
    assert reply.status == 200
    doc = read(path)
    assert doc["decision"] == {"generation": 2, "target": target}
    assert doc["changedAt"] == 101.0
    assert node.decision.writes == 2

    # A round trip that decides nothing new writes nothing.
    stat = path.stat()
    now[0] = 102.0
    same = await node.serve_roundtrip(roundtrip({"generation": 1, "target": "old"}, 2), None)
    assert same.status == 200
    assert node.decision.writes == 2
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert read(path)["changedAt"] == 101.0


async def test_a_custom_node_keeps_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = tmp_path / "state.json"
    node = make_node(path, load_behavior("python:custom_behavior_example:MaxCounter"))
    await node.start()
    assert read(path)["decision"] == {
        "generation": 0,
        "target": None,
        "holding": None,
        "epoch": None,
    }
    await node.serve_roundtrip(roundtrip({"n": 7}, 1), None)
    assert read(path)["decision"]["generation"] == 7


def test_the_decision_of_each_behaviour() -> None:
    summary: Any = {"generation": 3, "target": {"x": 1}, "holding": True, "epoch": [4, 1]}
    assert decision_of("converge", summary, None) == {"generation": 3, "target": {"x": 1}}
    # A token node holds only while it acts (its lease is fresh): the acting epoch decides.
    assert decision_of("token", summary, None) == {"holding": False, "epoch": None}
    assert decision_of("token", summary, [4, 1]) == {"holding": True, "epoch": [4, 1]}
    assert decision_of("leaderboard", summary, None) == summary


async def test_a_token_node_writes_holding_only_while_it_acts(tmp_path: Path) -> None:
    # A loop of one: the node regenerates the token and acts on its own majority.
    path = tmp_path / "state.json"
    now = [1000.0]
    config = NodeConfig(
        loop="solo", node="solo-0", ordinal=0, peers=("127.0.0.1:1",), decision_file=path
    )
    file = DecisionFile(path, loop="solo", node="solo-0", behavior="token", clock=lambda: now[0])
    metrics = NodeMetrics(CollectorRegistry(), "solo", "solo-0", "token", "ring")
    node = Node(
        config,
        load_behavior("token"),
        MemoryStore(),
        metrics,
        decision=file,
        clock=lambda: now[0],
        monotonic=lambda: now[0],
    )
    await node.start()
    assert read(path)["decision"] == {"holding": False, "epoch": None}
    for _ in range(100):
        now[0] += 1.0
        async with node._lock:
            await node._update(lambda m: node.behavior.tick(m, node.context()))
        node.refresh_acting()
        if read(path)["decision"]["holding"]:
            break
    doc = read(path)["decision"]
    assert doc["holding"] is True
    assert node.lease.acting is not None
    assert doc["epoch"] == list(node.lease.acting)
    assert node.describe()["summary"]["holding"] is True


def test_a_failed_write_keeps_the_previous_file_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    file = DecisionFile(path, loop="l", node="l-0", behavior="converge", clock=lambda: 1.0)
    assert file.publish({"generation": 1, "target": "a"})

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    assert not file.publish({"generation": 2, "target": "b"})
    assert not file.publish({"generation": 3, "target": "c"})
    assert read(path)["decision"] == {"generation": 1, "target": "a"}  # never partial
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    assert file.error is not None
    assert "No space left" in file.error
    assert caplog.text.count("cannot write the decision file") == 1  # once until it works
    monkeypatch.undo()
    assert file.publish({"generation": 3, "target": "c"})
    assert read(path)["decision"] == {"generation": 3, "target": "c"}
    assert file.error is None


def test_the_file_is_readable_by_the_pods_other_containers(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    DecisionFile(path, loop="l", node="l-0", behavior="converge", clock=lambda: 1.0).publish(
        {"generation": 1, "target": None}
    )
    assert path.stat().st_mode & 0o777 == decision.FILE_MODE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=40,
)


@given(st.lists(json_values, min_size=1, max_size=25))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_reader_never_sees_a_partial_file(tmp_path: Path, targets: list[Any]) -> None:
    """A reader polling the file while the node replaces it sees only whole
    documents, each one that was published; a decision is written only when
    it differs from the one in the file."""
    path = tmp_path / f"state-{os.urandom(4).hex()}.json"
    file = DecisionFile(path, loop="l", node="l-0", behavior="converge", clock=lambda: 1.0)
    published: list[str] = []
    seen: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                text = path.read_text("utf-8")
            except FileNotFoundError:
                continue
            try:
                doc = json.loads(text)
            except ValueError:
                problems.append(text)
                continue
            seen.append(json.dumps(doc["decision"], sort_keys=True))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        writes = 0
        last: str | None = None
        for generation, target in enumerate(targets):
            for _ in range(2):  # the same decision twice: one write
                new = {"generation": generation // 2, "target": target}
                key = json.dumps(new, sort_keys=True)
                wrote = file.publish(new)
                assert wrote == (key != last)
                if wrote:
                    writes += 1
                    published.append(key)
                last = key
        assert file.writes == writes
    finally:
        done.set()
        thread.join()
    assert problems == []
    assert set(seen) <= set(published)
    assert json.dumps(read(path)["decision"], sort_keys=True) == published[-1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_where_the_file_is(tmp_path: Path) -> None:
    # Local mode: in the state dir, beside (not among) the state files.
    local = load_config(["--state-dir", str(tmp_path), "--node", "n-1"], {})
    assert local.decision_file == tmp_path / "decision" / "n-1.json"
    # Set explicitly (what the operator does in a pod).
    pod = load_config(
        [],
        {
            contract.ENV_DECISION_FILE: contract.DECISION_FILE,
            contract.ENV_STORE: "memory",
        },
    )
    assert pod.decision_file == Path("/var/run/reactive-loop/decision/state.json")
    assert load_config([], {}).decision_file is None  # memory store: none unless asked


async def test_the_app_writes_it_at_start(make_node: MakeNode, tmp_path: Path) -> None:
    path = tmp_path / "d" / "state.json"
    served = await make_node(decision_file=path)
    assert served.node.ready
    assert read(path)["decision"] == {"generation": 0, "target": None}
    assert read(path)["node"] == served.node.config.node
