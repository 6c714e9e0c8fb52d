"""The node's HTTP API: round trips, bad input, state, metrics, health (DESIGN §2, §7)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from asyncio.subprocess import PIPE, STDOUT
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from node.nodesupport import KEY, LOOP, OTHER_KEY, MakeNode, NodeUnderTest, eventually, signature
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Converge
from reactive_node.core import auth, contract
from reactive_node.core.codec import encode_state
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore

REQUESTS = contract.M_REQUESTS


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "loop": LOOP,
        "from": "test-0",
        "boot": 1,
        "seq": 1,
        "state": {"generation": 2, "target": {"image": "v2"}},
    }
    base.update(overrides)
    return base


async def post(n: NodeUnderTest, payload: bytes | dict[str, Any], **headers: str) -> Any:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await n.client.post(
        contract.ROUNDTRIP_PATH, data=data, headers={"Content-Type": "application/json", **headers}
    )


async def test_round_trip_merges_persists_and_answers(make_node: MakeNode) -> None:
    n = await make_node()
    r = await post(n, body())
    assert r.status == 200
    answer = await r.json()
    assert answer == {"from": "test-1", "state": {"generation": 2, "target": {"image": "v2"}}}
    stored = json.loads(n.store.raw or "")
    assert stored.pop(contract.HISTORY_STATE_KEY)[0]["kind"] == "adopt"  # docs/node.md
    assert stored == answer["state"]
    assert n.metric(REQUESTS, outcome="ok") == 1
    # Same state again: no new write (steady state makes zero writes).
    r = await post(n, body(seq=2))
    assert r.status == 200
    assert n.store.writes == 1
    assert n.metric(contract.M_STATE_WRITES, result="ok") == 1
    assert n.metric(contract.M_GENERATION) == 2


BAD_INPUTS = [
    (b"{not json", 400, "bad_request"),
    (b"\xff\xfe", 400, "bad_request"),
    (b"[]", 400, "bad_request"),
    (json.dumps(body(seq="1")).encode(), 400, "bad_request"),
    (json.dumps(body(boot=-1)).encode(), 400, "bad_request"),
    (json.dumps(body(state="x")).encode(), 400, "bad_request"),
    (json.dumps({k: v for k, v in body().items() if k != "from"}).encode(), 400, "bad_request"),
    # Unknown fields are ignored (protocol version 2) but checked.
    (json.dumps(body(extra=2**60)).encode(), 400, "bad_request"),
    (
        json.dumps(
            body(extra=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])
        ).encode(),
        400,
        "bad_request",
    ),
    (json.dumps(body(state={"generation": "2", "target": 1})).encode(), 400, "bad_request"),
    (json.dumps(body(loop="other")).encode(), 400, "wrong_loop"),
    (json.dumps(body(state={"generation": 1, "target": "x" * 70000})).encode(), 413, "too_large"),
]


@pytest.mark.parametrize(("payload", "status", "outcome"), BAD_INPUTS)
async def test_bad_input_gets_a_json_4xx_and_changes_nothing(
    make_node: MakeNode, payload: bytes, status: int, outcome: str
) -> None:
    n = await make_node()
    before = n.node.describe()["state"]
    r = await post(n, payload)
    assert r.status == status
    error = await r.json()
    assert error["error"] == outcome
    assert isinstance(error["detail"], str)
    assert error["detail"]
    assert n.node.describe()["state"] == before
    assert n.store.writes == 0
    assert n.metric(REQUESTS, outcome=outcome) == 1


async def test_oversized_body_without_length_is_refused(make_node: MakeNode) -> None:
    n = await make_node()

    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 4096

    r = await n.client.post(
        contract.ROUNDTRIP_PATH, data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status == 413
    assert (await r.json())["error"] == "too_large"
    assert n.metric(REQUESTS, outcome="too_large") == 1


async def test_replayed_and_older_requests_are_stale(make_node: MakeNode) -> None:
    n = await make_node()
    assert (await post(n, body(seq=5))).status == 200
    replay = await post(n, body(seq=5, state={"generation": 9, "target": "late"}))
    assert replay.status == 409
    assert (await replay.json())["error"] == "stale"
    older = await post(n, body(seq=4, state={"generation": 9, "target": "late"}))
    assert older.status == 409
    assert n.node.describe()["summary"]["generation"] == 2
    assert n.metric(REQUESTS, outcome="stale") == 2
    # A restarted sender (newer boot) starts its sequence again.
    assert (await post(n, body(boot=2, seq=1))).status == 200


async def test_signatures_are_required_when_a_key_is_configured(make_node: MakeNode) -> None:
    n = await make_node(hmac_key=KEY)
    raw = json.dumps(body()).encode()
    missing = await post(n, raw)
    assert missing.status == 401
    assert (await missing.json())["error"] == "unauthorized"
    wrong = await post(n, raw, **signature(raw, key=OTHER_KEY))
    assert wrong.status == 401
    assert "unknown key id" in (await wrong.json())["detail"]
    assert n.store.writes == 0
    assert n.metric(REQUESTS, outcome="unauthorized") == 2
    good = await post(n, raw, **signature(raw))
    assert good.status == 200
    assert n.node.describe()["auth"] == {
        "primary": auth.key_id(KEY),
        "keyIds": [auth.key_id(KEY)],
        "error": None,
    }


async def test_signed_fields_are_all_checked(make_node: MakeNode) -> None:
    n = await make_node(hmac_key=KEY)

    async def refused(raw: bytes, headers: dict[str, str], why: str) -> None:
        r = await post(n, raw, **headers)
        answer = await r.json()
        assert (r.status, answer["error"]) == (401, "unauthorized"), answer
        assert why in answer["detail"], answer

    raw = json.dumps(body(seq=1)).encode()
    await refused(raw, signature(raw, to="test-2"), "signed for test-2")
    await refused(raw, signature(raw, sender="test-2"), "signed by test-2")
    await refused(raw, signature(raw, now=time.time() - 31), "more than 30 s")
    await refused(raw, signature(raw, now=time.time() + 31), "more than 30 s")
    await refused(raw, signature(raw, now=n.node.started_at - 0.5), "before this node started")
    await refused(raw + b" ", signature(raw), "bad signature")
    header = signature(raw)[contract.SIGNATURE_HEADER]
    tampered = header[:-1] + ("1" if header.endswith("0") else "0")
    await refused(raw, {contract.SIGNATURE_HEADER: tampered}, "bad signature")
    await refused(raw, {contract.SIGNATURE_HEADER: header[:-1]}, "malformed")
    ok = signature(raw)
    assert (await post(n, raw, **ok)).status == 200
    await refused(raw, ok, "replayed")
    assert n.store.writes == 1


async def test_a_signed_request_for_another_method_or_path_does_not_verify() -> None:
    keys = auth.Keyring.of(KEY)
    raw = b"{}"
    now = time.time()
    value = auth.sign(keys, sender="a", recipient="b", body=raw, now=now, path="/v1/other")
    with pytest.raises(auth.Unauthorized, match="bad signature"):
        auth.Verifier("b", not_before=0).check(keys, value, body=raw, now=now)
    value = auth.sign(keys, sender="a", recipient="b", body=raw, now=now, method="PUT")
    with pytest.raises(auth.Unauthorized, match="bad signature"):
        auth.Verifier("b", not_before=0).check(keys, value, body=raw, now=now)


async def test_persist_failure_answers_503_and_keeps_state(make_node: MakeNode) -> None:
    n = await make_node()
    n.store.fail_saves = 1
    r = await post(n, body())
    assert r.status == 503
    assert (await r.json())["error"] == "unavailable"
    assert n.node.describe()["summary"]["generation"] == 0
    assert n.metric(REQUESTS, outcome="unavailable") == 1
    assert n.metric(contract.M_STATE_WRITES, result="error") == 1
    assert (await post(n, body(seq=2))).status == 200


async def test_unknown_paths_and_methods_answer_json(make_node: MakeNode) -> None:
    n = await make_node()
    r = await n.client.get("/nope")
    assert r.status == 404
    assert "error" in await r.json()
    r = await n.client.get(contract.ROUNDTRIP_PATH)
    assert r.status == 405
    assert "error" in await r.json()


async def test_state_document_has_the_agreed_shape(make_node: MakeNode) -> None:
    n = await make_node()
    r = await n.client.get(contract.STATE_PATH)
    assert r.status == 200
    doc = await r.json()
    assert set(doc) == {
        "loop", "node", "ordinal", "behavior", "topology", "boot", "ready", "phase", "loops",
        "waits", "lastWaitReason", "lastLoopAt", "replicas", "state", "stateError", "summary",
        "edges", "auth", "protocol", "suspended",
    }  # fmt: skip
    assert set(doc["summary"]) == {"generation", "target", "holding", "epoch"}
    assert doc["loop"] == LOOP
    assert doc["node"] == "test-1"
    assert doc["ordinal"] == 1
    assert doc["ready"] is True
    assert doc["phase"] == "starting"
    assert doc["state"] == {"generation": 0, "target": None}
    assert doc["stateError"] is None
    assert doc["edges"] == []
    assert doc["auth"] is None
    assert (await n.client.get(contract.HEALTH_PATH)).status == 200
    assert (await n.client.get(contract.READY_PATH)).status == 200


async def test_invalid_stored_state_keeps_the_last_good_one(make_node: MakeNode) -> None:
    good = {"generation": 4, "target": "kept"}
    store = MemoryStore(raw=encode_state(good))
    n = await make_node(store)
    assert n.node.state == good
    store.edit(raw='{"generation": "four"}')
    await _until(lambda: n.node.state_error is not None)
    doc = await (await n.client.get(contract.STATE_PATH)).json()
    assert doc["state"] == good
    assert "invalid stored state" in doc["stateError"]
    assert n.metric(contract.M_STATE_INVALID) == 1
    store.edit(raw="not json at all")
    await _until(lambda: n.metric(contract.M_STATE_INVALID) == 2)
    assert n.node.state == good
    # A valid hand edit is adopted and clears the error.
    store.edit(raw=encode_state({"generation": 5, "target": "by hand"}))
    await _until(lambda: n.node.state_error is None)
    assert n.node.state == {"generation": 5, "target": "by hand"}


async def test_invalid_state_at_start_starts_fresh_and_reports(make_node: MakeNode) -> None:
    n = await make_node(MemoryStore(raw="{"))
    assert n.node.ready
    assert n.node.state == {"generation": 0, "target": None}
    assert n.node.state_error is not None
    assert n.metric(contract.M_STATE_INVALID) == 1


async def test_replicas_from_the_store_are_adopted(make_node: MakeNode) -> None:
    store = MemoryStore(replicas=3)
    n = await make_node(store)
    store.edit(replicas=7)
    await _until(lambda: n.node.replicas == 7)
    assert (await (await n.client.get(contract.STATE_PATH)).json())["replicas"] == 7


async def test_metrics_pass_promtool(make_node: MakeNode) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (make system-deps)"
    n = await make_node()
    await post(n, body())
    await post(n, b"{")
    r = await n.client.get(contract.METRICS_PATH)
    assert r.status == 200
    text = await r.text()
    for name in (
        contract.M_LOOPS, contract.M_WAITS, contract.M_ROUNDTRIP_SECONDS, contract.M_REQUESTS,
        contract.M_STATE_WRITES, contract.M_STATE_INVALID, contract.M_GENERATION,
        contract.M_TOKEN_HOLDER, contract.M_TOKEN_EPOCH, contract.M_LAST_LOOP, contract.M_PHASE,
        contract.M_INFO,
    ):  # fmt: skip
        assert f"\n{name}" in text or text.startswith(name) or f"# TYPE {name}" in text, name
    assert 'reactive_loop_requests_served_total{loop="test",node="test-1",outcome="ok"} 1.0' in text
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode == 0, out.decode()


async def _until(check: Any) -> None:
    await eventually(check, within=5.0)


async def test_not_ready_until_the_state_is_loaded(make_node: MakeNode) -> None:
    store = MemoryStore(raw=encode_state({"generation": 2, "target": "x"}))
    store.fail_loads = 2
    n = await make_node(store, interval=0.05)
    assert (await n.client.get(contract.READY_PATH)).status == 503
    r = await post(n, body())
    assert r.status == 503
    assert (await r.json())["error"] == "unavailable"
    assert (await (await n.client.get(contract.STATE_PATH)).json())["ready"] is False
    await _until(lambda: n.node.ready)
    assert (await n.client.get(contract.READY_PATH)).status == 200
    assert n.node.state == {"generation": 2, "target": "x"}


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.one_of(st.integers(-2, 5), json_any)
states = st.one_of(
    json_any,
    st.fixed_dictionaries({"generation": numbers, "target": json_any}),
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_any.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"loop": st.sampled_from([LOOP, "x"]), "from": st.text(max_size=5), "boot": numbers,
         "seq": numbers, "state": states},
        optional={"extra": json_any},
    ).map(lambda v: json.dumps(v).encode()),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(raw=bodies)
async def test_any_body_gets_a_json_answer_and_only_200_changes_state(raw: bytes) -> None:
    registry = CollectorRegistry()
    config = NodeConfig(loop=LOOP, ordinal=1, replicas=3)
    store = MemoryStore()
    node = Node(
        config, Converge(), store, NodeMetrics(registry, LOOP, "test-1", "converge", "ring")
    )
    await node.start()
    before = node.state
    reply = await node.serve_roundtrip(raw, None)
    assert reply.status in (200, 400, 409)
    json.dumps(reply.body)  # always serialisable
    if reply.status != 200:
        assert node.state == before
        assert set(reply.body) == {"error", "detail"}
        assert store.writes == 0
