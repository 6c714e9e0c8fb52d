"""The decision history (issue 10 §4): bounded, ordered, `since` semantics, every
decision names a successful round trip, a short tail persisted only with a state
write, and `GET /v1/history`."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from node.nodesupport import LOOP, MakeNode
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import load_behavior
from reactive_node.core import contract, history
from reactive_node.core.behaviors.base import canonical
from reactive_node.core.codec import encode, make_request
from reactive_node.core.history import History, RoundTrip
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node, Outcome
from reactive_node.runtime.store import MemoryStore

RT = RoundTrip("demo-1", "initiator", 1, 1, 0.0, history.digest(b"{}"))

# One operation on a History: ("d", dt) a decision, ("w", reason index, dt) a wait.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("d"), st.just(0), st.floats(0, 30)),
        st.tuples(st.just("w"), st.integers(0, len(contract.WAIT_REASONS) - 1), st.floats(0, 30)),
    ),
    max_size=300,
)


def play(h: History, script: list[tuple[str, int, float]]) -> None:
    now = 1_000.0
    for kind, reason, dt in script:
        now += dt
        if kind == "d":
            h.decision("adopt", now, RT, {"generation": 1, "target": "x"})
        else:
            h.wait(contract.WAIT_REASONS[reason], now)


@given(ops, st.integers(1, 40))
@settings(max_examples=150, deadline=None)
def test_history_is_bounded_ordered_and_since_returns_every_change(
    script: list[tuple[str, int, float]], size: int
) -> None:
    h = History(size=size)
    play(h, script)
    everything = h.entries()
    assert len(everything) == len(h) <= size
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert [e["at"] for e in everything] == sorted(e["at"] for e in everything)
    assert all(e["rev"] >= e["seq"] for e in everything)
    assert h.counter == len(script)
    waits = sum(1 for k, _r, _t in script if k == "w")
    counted = sum(sum(e["counts"].values()) for e in everything if e["kind"] == "waits")
    assert counted <= waits
    if len(everything) < size:  # nothing dropped: every wait is counted
        assert counted == waits
    # One bucket entry per bucket unless a decision came in between.
    for a, b in itertools.pairwise(everything):
        assert not (a["kind"] == b["kind"] == "waits" and a["bucket"] == b["bucket"])
    for since in {0, h.counter // 2, h.counter}:
        assert h.entries(since) == [e for e in everything if e["rev"] > since]


@given(ops, ops)
@settings(max_examples=100, deadline=None)
def test_polling_with_next_sees_each_entry_as_it_ends(
    first: list[tuple[str, int, float]], second: list[tuple[str, int, float]]
) -> None:
    h = History(size=1000)
    play(h, first)
    seen = {e["seq"]: e for e in h.entries(0)}
    mark = h.counter
    play(h, second)
    for e in h.entries(mark):
        seen[e["seq"]] = e
    assert list(seen.values()) == h.entries()


def test_waits_are_counted_per_bucket_and_reason() -> None:
    h = History(bucket_seconds=10)
    for at, reason in [(101, "timeout"), (105, "timeout"), (109.9, "refused"), (110, "timeout")]:
        h.wait(reason, at)
    first, second = h.entries()
    assert (first["bucket"], first["at"], first["last"]) == (100, 101, 109.9)
    assert first["counts"] == {"timeout": 2, "refused": 1}
    assert (second["bucket"], second["counts"]) == (110, {"timeout": 1})
    assert [e["seq"] for e in h.entries(since_time=109.95)] == [second["seq"]]
    h.decision("adopt", 111, RT, {"generation": 2, "target": "t"})
    h.wait("timeout", 112)  # a decision in between: a new entry for the same bucket
    assert [e["kind"] for e in h.entries()] == ["waits", "waits", "adopt", "waits"]


def test_tail_restore_and_split() -> None:
    h = History()
    for i in range(20):
        h.decision("adopt", float(i), RT, {"generation": i, "target": "t"})
    tail = h.tail([{"at": 20.0, "kind": "adopt", "generation": 20, "rt": RT.to_json()}])
    assert len(tail) == history.HISTORY_TAIL
    assert [e["generation"] for e in tail] == list(range(13, 21))
    assert all("seq" not in e and "rev" not in e for e in tail)
    stored = history.with_tail({"generation": 20, "target": "t"}, tail)
    state, again = history.split_stored(json.loads(canonical(stored)))
    assert state == {"generation": 20, "target": "t"}
    fresh = History()
    # Only the last HISTORY_TAIL items count, and of those only well-formed entries.
    assert fresh.restore([*again, {"kind": "bogus", "at": 1}, "junk", {"kind": "adopt"}]) == 5
    assert [e["generation"] for e in fresh.entries()] == list(range(16, 21))
    assert all(e["restored"] for e in fresh.entries())
    assert fresh.restore("not a list") == 0


def make_node(ordinal: int, raw: str | None = None, replicas: int = 3) -> Node:
    peers = tuple(f"127.0.0.1:{i + 1}" for i in range(replicas))
    config = NodeConfig(loop="demo", node=f"demo-{ordinal}", ordinal=ordinal, peers=peers)
    metrics = NodeMetrics(CollectorRegistry(), "demo", config.node, "converge", "ring")
    return Node(config, load_behavior("converge"), MemoryStore(raw), metrics, rng=random.Random(0))


class Net:
    """Round trips between in-process nodes; a scripted answer fails some of them.
    It records every round trip that succeeded, by (initiator boot, seq), with
    the digest of its answer body."""

    def __init__(self, nodes: list[Node], failures: list[bool]) -> None:
        self.nodes = nodes
        self.failures = failures
        self.ok: dict[tuple[int, int], str] = {}

    def transport(self, sender: Node) -> Any:
        async def send(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
            if self.failures and self.failures.pop():
                return Outcome(failure="timeout")
            port = int(url.split(":")[2].split("/")[0])
            reply = await self.nodes[port - 1].serve_roundtrip(
                body, None, sender.config.node, protocol=headers.get(contract.PROTOCOL_HEADER)
            )
            raw = reply.raw if reply.raw is not None else encode(reply.body)
            if reply.status == 200:
                self.ok[(sender.boot, json.loads(body)["seq"])] = history.digest(raw)
            return Outcome(status=reply.status, body=raw)

        return send


@given(
    st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=60),
    st.lists(st.booleans(), max_size=60),
    st.lists(st.integers(0, 2), max_size=3),
)
@settings(max_examples=60, deadline=None)
async def test_every_decision_names_a_round_trip_that_succeeded(
    steps: list[tuple[int, bool]], failures: list[bool], injections: list[int]
) -> None:
    nodes = [make_node(i) for i in range(3)]
    for n in nodes:
        await n.start()
    net = Net(nodes, failures)
    operator_boot = 1
    for g, into in enumerate(injections, start=1):
        body = encode(
            make_request("demo", "operator", operator_boot, g, {"generation": g, "target": g})
        )
        reply = await nodes[into].serve_roundtrip(body, None, "10.0.0.1")
        assert reply.status == 200
        assert reply.raw is not None
        net.ok[(operator_boot, g)] = history.digest(reply.raw)
    for who, _ in steps:
        await nodes[who].step(net.transport(nodes[who]))
    for n in nodes:
        entries = n.history.entries()
        assert len(entries) <= history.HISTORY_SIZE
        generations = [e["generation"] for e in entries if e["kind"] == "adopt"]
        assert generations == sorted(set(generations))  # converge never regresses
        assert n.state is not None
        if generations:
            assert generations[-1] == n.state["generation"]
        for e in entries:
            if e["kind"] in history.DECISIONS:
                rt = e["rt"]
                assert rt is not None, e
                assert net.ok[(int(rt["boot"]), int(rt["seq"]))] == rt["answer"], e
                assert rt["at"] <= e["at"] or rt["role"] == "responder"
        waits = sum(sum(e["counts"].values()) for e in entries if e["kind"] == "waits")
        assert waits == n.waits


async def test_the_tail_is_persisted_only_with_a_state_write_and_restored() -> None:
    nodes = [make_node(i) for i in range(3)]
    for n in nodes:
        await n.start()
    net = Net(nodes, [])
    body = encode(make_request("demo", "operator", 1, 1, {"generation": 7, "target": "t"}))
    assert (await nodes[0].serve_roundtrip(body, None, "10.0.0.1")).status == 200
    for _ in range(3):
        for n in nodes:
            assert await n.step(net.transport(n))
    writes = [n.store.writes for n in nodes]  # type: ignore[attr-defined]
    assert writes == [1, 1, 1]
    for _ in range(5):  # steady state: no write, however many round trips
        for n in nodes:
            assert await n.step(net.transport(n))
    assert [n.store.writes for n in nodes] == writes  # type: ignore[attr-defined]
    raw = nodes[2].store.raw  # type: ignore[attr-defined]
    stored = json.loads(raw)
    tail = stored[contract.HISTORY_STATE_KEY]
    assert [e["kind"] for e in tail] == ["adopt"]
    assert tail[0]["generation"] == 7
    assert tail[0]["rt"]["peer"] in ("demo-0", "demo-1")
    assert len(raw) < 2048
    # A restart restores it; the state itself is as before.
    again = make_node(2, raw)
    await again.start()
    assert again.state == {"generation": 7, "target": "t"}
    (entry,) = again.history.entries()
    assert entry["restored"]
    assert entry["generation"] == 7


async def test_a_hand_edit_is_recorded_as_an_edit_without_a_round_trip() -> None:
    store = MemoryStore()
    n = Node(
        NodeConfig(loop="demo", node="demo-0", ordinal=0, peers=("127.0.0.1:1",)),
        load_behavior("converge"),
        store,
        NodeMetrics(CollectorRegistry(), "demo", "demo-0", "converge", "ring"),
    )
    await n.start()
    n.adopt(type(await store.load())('{"generation": 3, "target": "by hand"}'))
    (entry,) = n.history.entries()
    assert entry["kind"] == "edit"
    assert entry["generation"] == 3
    assert "rt" not in entry


async def test_history_endpoint(make_node: MakeNode) -> None:
    n = await make_node()
    state = {"generation": 2, "target": {"image": "v2"}}
    payload = {"loop": LOOP, "from": "test-0", "boot": 1, "seq": 1, "state": state}
    r = await n.client.post(
        contract.ROUNDTRIP_PATH,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 200
    answer = await r.read()
    r = await n.client.get(contract.HISTORY_PATH)
    assert r.status == 200
    doc = await r.json()
    assert doc["size"] == history.HISTORY_SIZE
    assert doc["next"] == 1
    (entry,) = doc["entries"]
    assert entry["kind"] == "adopt"
    assert entry["generation"] == 2
    assert entry["target"] == history.digest(canonical(state["target"]))
    assert entry["rt"] == {
        "peer": "test-0",
        "role": "responder",
        "boot": "1",
        "seq": "1",
        "at": entry["rt"]["at"],
        "answer": history.digest(answer),
    }
    r = await n.client.get(contract.HISTORY_PATH, params={"since": "1"})
    assert (await r.json())["entries"] == []
    r = await n.client.get(contract.HISTORY_PATH, params={"since": "2000-01-01T00:00:00Z"})
    assert len((await r.json())["entries"]) == 1
    r = await n.client.get(contract.HISTORY_PATH, params={"since": f"{entry['at'] + 1:.3f}"})
    assert (await r.json())["entries"] == []


@pytest.mark.parametrize("since", ["-1", "abc", "1e5", "2026-01-01T00:00:00", "9" * 70, "1.2.3"])
async def test_history_endpoint_refuses_a_bad_since(make_node: MakeNode, since: str) -> None:
    n = await make_node()
    r = await n.client.get(contract.HISTORY_PATH, params={"since": since})
    assert r.status == 400
    doc = await r.json()
    assert doc["error"] == "bad_request"
    assert doc["detail"]


async def test_token_decisions_name_the_round_trips_they_rest_on() -> None:
    """A token loop of three on a shared fake clock: node 0 creates the first token
    on a majority's word and acts on its renewal once a majority vouched; both
    decisions name a round trip that succeeded, and the acquire names one after
    the regeneration."""
    now = [time.time()]  # a sender's boot (its real start) may not be ahead of it
    peers = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    nodes = []
    for i in range(3):
        config = NodeConfig(loop="demo", node=f"demo-{i}", ordinal=i, peers=peers)
        metrics = NodeMetrics(CollectorRegistry(), "demo", config.node, "token", "ring")
        nodes.append(
            Node(
                config,
                load_behavior("token"),
                MemoryStore(),
                metrics,
                clock=lambda: now[0],
                monotonic=lambda: now[0],
                rng=random.Random(i),
            )
        )
    for n in nodes:
        await n.start()
    net = Net(nodes, [])
    events: list[tuple[str, list[int]]] = []
    nodes[0].token_listener = lambda event, epoch: events.append((event, epoch))
    for _ in range(40):
        for n in nodes:
            now[0] += 0.34
            assert await n.step(net.transport(n))
        if events:
            break
    assert events, "node 0 never acquired"
    assert events[0][0] == "acquire", events
    entries = nodes[0].history.entries()
    kinds = [e["kind"] for e in entries]
    assert "regenerate" in kinds
    assert "acquire" in kinds
    assert kinds.index("regenerate") < kinds.index("acquire")
    for e in entries:
        if e["kind"] in history.DECISIONS:
            rt = e["rt"]
            assert net.ok[(int(rt["boot"]), int(rt["seq"]))] == rt["answer"]
    # It acts on the renewal of the epoch it regenerated (docs/node.md): a newer one.
    assert entries[kinds.index("acquire")]["epoch"] == events[0][1]
    assert entries[kinds.index("regenerate")]["epoch"] < events[0][1]
    regenerate = entries[kinds.index("regenerate")]["rt"]
    acquire = entries[kinds.index("acquire")]["rt"]
    assert (int(acquire["boot"]), acquire["seq"]) != (int(regenerate["boot"]), regenerate["seq"])
    assert acquire["at"] >= regenerate["at"]


# --------------------------------------------------------- merge_page (readers)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _page(boot: int, entries: list[dict[str, Any]], following: int) -> dict[str, Any]:
    return {"loop": LOOP, "node": "n-0", "boot": boot, "next": following, "entries": entries}


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 30),
    cuts=st.lists(st.integers(0, 30), max_size=4),
    boot=st.integers(0, contract.MAX_WIRE_INT),
)
def test_merge_page_pages_equal_one_full_read(count: int, cuts: list[int], boot: int) -> None:
    """Reading a history in pages by `next` gives what one full read gives."""
    entries = [{"seq": i + 1, "rev": i + 1, "kind": "edit", "at": float(i)} for i in range(count)]
    full = history.merge_page({}, None, _page(boot, entries, count), incremental=False)
    assert full is not None
    polled: dict[tuple[int, int], dict[str, Any]] = {}
    cursor: tuple[int, int] | None = None
    for cut in [*sorted(min(c, count) for c in cuts), count]:
        since = 0 if cursor is None else cursor[1]
        page = _page(boot, entries[since:cut] if cut >= since else [], max(cut, since))
        merged = history.merge_page(polled, cursor, page, incremental=cursor is not None)
        assert merged is not None
        polled, cursor = merged
    assert polled == full[0]
    assert cursor == (boot, count)
    assert all(v["boot"] == str(boot) for v in polled.values())


def test_merge_page_new_process_reads_again_and_leaves_entries() -> None:
    polled = {(5, 1): {"seq": 1, "boot": "5"}}
    page = _page(6, [{"seq": 9}], 9)
    assert history.merge_page(polled, (5, 1), page, incremental=True) is None
    assert polled == {(5, 1): {"seq": 1, "boot": "5"}}
    merged = history.merge_page(polled, (5, 1), page, incremental=False)
    assert merged == ({(5, 1): {"seq": 1, "boot": "5"}, (6, 9): {"seq": 9, "boot": "6"}}, (6, 9))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "history page is list, not an object"),
        ({"entries": {}}, "'entries' is dict, not a list"),
        ({"entries": [], "boot": "12"}, "'boot' is '12', not an integer"),
        ({"entries": [], "boot": None}, "'boot' is None, not an integer"),
        ({"entries": [], "boot": True}, "'boot' is True, not an integer"),
        ({"entries": [], "boot": -1}, "'boot' is -1, not an integer"),
        ({"entries": [], "boot": 1.5}, "'boot' is 1.5, not an integer"),
        ({"entries": [], "boot": 2**63}, "not an integer 0..2^63-1"),
        ({"entries": [], "boot": 1, "next": "3"}, "'next' is '3', not an integer"),
    ],
)
def test_merge_page_refuses_what_is_not_a_page(doc: Any, message: str) -> None:
    with pytest.raises(history.BadHistoryPage, match=re.escape(message)):
        history.merge_page({}, (1, 0), doc, incremental=True)


@settings(max_examples=300, deadline=None)
@given(doc=_JSON | st.dictionaries(st.sampled_from(["boot", "next", "entries", "x"]), _JSON))
def test_merge_page_never_crashes_on_any_json(doc: Any) -> None:
    """Whatever a node answers: a merge or BadHistoryPage, never another error."""
    try:
        merged = history.merge_page({}, (1, 0), doc, incremental=True)
    except history.BadHistoryPage as e:
        error = str(e)
        assert error.startswith("history page")
        return
    if merged is not None:
        entries, (boot, following) = merged
        assert isinstance(boot, int)
        assert isinstance(following, int)
        assert all(isinstance(k[1], int) for k in entries)
