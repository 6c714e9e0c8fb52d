"""Wire protocol version (issue 10 §3): version 1 bodies, frozen from the code of
commit d29e2e1 (tests/node/fixtures/wire_v1), still work; version 2 bodies carry
`v` and may carry unknown fields, which are ignored but checked; a node talks
version 1 to a peer until the peer answered in version 2, and goes back to 1
without a wait when a peer refuses `v` (a rollback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import load_behavior
from reactive_node.core import contract
from reactive_node.core.codec import (
    PROTOCOL_VERSION,
    BadBody,
    RoundTripRequest,
    UnsupportedVersion,
    decode_request,
    decode_response,
    encode,
    make_request,
)
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node, Outcome, answer_version, version_refused
from reactive_node.runtime.store import MemoryStore

FIXTURES = Path(__file__).parent / "fixtures" / "wire_v1"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().strip()


class V1Request(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    """The version 1 decode rules (codec.py at d29e2e1): unknown fields refused."""

    loop: str
    sender: str
    boot: int
    seq: int
    state: dict[str, Any]


class V1Response(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    sender: str
    state: dict[str, Any]


@pytest.mark.parametrize("behavior", ["converge", "token"])
def test_version_1_bodies_decode_and_encode_byte_for_byte(behavior: str) -> None:
    raw = fixture(f"{behavior}_request.json")
    request = decode_request(raw)
    assert request.version == 1
    # What this code sends as version 1 is exactly what version 1 sent.
    assert encode(request) == raw
    assert encode(make_request(*msgspec.structs.astuple(request)[:5])) == raw
    answer = decode_response(fixture(f"{behavior}_answer.json"))
    assert answer.version == 1
    assert answer.sender == "demo-1"


def test_version_2_bodies_carry_v_and_version_1_rules_refuse_them() -> None:
    request = make_request("demo", "demo-0", 1, 2, {"generation": 1, "target": None}, 2)
    body = encode(request)
    assert json.loads(body)["v"] == 2
    assert decode_request(body).version == 2
    with pytest.raises(msgspec.ValidationError, match="unknown field `v`"):
        msgspec.json.decode(body, type=V1Request)


def test_unknown_fields_are_ignored_but_checked() -> None:
    base = json.loads(fixture("converge_request.json"))
    ok = {**base, "v": 2, "future": {"list": [1, 2.5, "x"], "flag": True}}
    assert decode_request(json.dumps(ok).encode()).state == base["state"]
    answer = {"from": "demo-1", "state": base["state"], "v": 2, "peerBoot": 7}
    assert decode_response(json.dumps(answer).encode()).version == 2
    with pytest.raises(BadBody, match=r"out of range .* `\$\.future`"):
        decode_request(json.dumps({**base, "future": 2**60}).encode())
    deep: Any = 0
    for _ in range(contract.MAX_STATE_DEPTH):
        deep = [deep]
    with pytest.raises(BadBody, match="nested deeper"):
        decode_request(json.dumps({**base, "future": deep}).encode())
    with pytest.raises(BadBody, match="out of range"):
        decode_response(json.dumps({**answer, "big": [-(2**60)]}).encode())


@pytest.mark.parametrize("v", [0, 3, 99])
def test_a_version_it_does_not_speak_is_refused(v: int) -> None:
    base = json.loads(fixture("converge_request.json"))
    with pytest.raises(UnsupportedVersion, match=f"version {v} is not supported"):
        decode_request(json.dumps({**base, "v": v}).encode())
    with pytest.raises(BadBody):
        decode_request(json.dumps({**base, "v": "2"}).encode())
    with pytest.raises(UnsupportedVersion):
        make_request("demo", "x", 1, 1, {}, v)


def test_answer_version_and_version_refused() -> None:
    assert answer_version(1, None) == 1
    assert answer_version(1, "2") == 2
    assert answer_version(1, "7") == PROTOCOL_VERSION
    assert answer_version(1, "two") == 1
    assert answer_version(2, None) == 2
    for name in ("converge_v2_refused.json", "token_v2_refused.json"):
        assert version_refused(Outcome(status=400, body=fixture(name)))
    other = encode({"error": "bad_request", "detail": "Expected `int`, got `str` - at `$.seq`"})
    assert not version_refused(Outcome(status=400, body=other))
    assert not version_refused(Outcome(status=409, body=fixture("converge_v2_refused.json")))


def make_node(behavior: str, ordinal: int, raw: str | None = None) -> Node:
    config = NodeConfig(
        loop="demo",
        node=f"demo-{ordinal}",
        ordinal=ordinal,
        peers=("127.0.0.1:1", "127.0.0.1:2"),
        behavior=behavior,
        interval=0.01,
    )
    metrics = NodeMetrics(CollectorRegistry(), "demo", config.node, behavior, "ring")
    return Node(config, load_behavior(behavior), MemoryStore(raw), metrics)


@pytest.mark.parametrize("behavior", ["converge", "token"])
async def test_a_node_answers_version_1_requests_in_version_1(behavior: str) -> None:
    node = make_node(behavior, 1)
    await node.start()
    reply = await node.serve_roundtrip(fixture(f"{behavior}_request.json"), None, "127.0.0.1")
    assert reply.status == 200, reply.body
    assert reply.raw is not None
    answer = msgspec.json.decode(reply.raw, type=V1Response)  # a version 1 node reads it
    assert answer.sender == "demo-1"
    assert "v" not in json.loads(reply.raw)


async def test_a_node_answers_in_version_2_when_the_sender_says_it_speaks_it() -> None:
    node = make_node("converge", 1)
    await node.start()
    body = fixture("converge_request.json")
    reply = await node.serve_roundtrip(body, None, "127.0.0.1", protocol="2")
    assert reply.status == 200
    assert reply.raw is not None
    assert json.loads(reply.raw)["v"] == 2
    v2 = json.loads(body) | {"v": 2, "seq": 5}
    reply = await node.serve_roundtrip(json.dumps(v2).encode(), None, "127.0.0.1")
    assert reply.raw is not None
    assert json.loads(reply.raw)["v"] == 2
    v3 = json.loads(body) | {"v": 3, "seq": 6}
    reply = await node.serve_roundtrip(json.dumps(v3).encode(), None, "127.0.0.1")
    assert reply.status == 400
    assert reply.body["error"] == "unsupported_version"


class Peer:
    """A peer that decodes by the rules of one version: 1 (as d29e2e1 did: unknown
    fields refused, `v` refused with the fixture's 400) or 2 (the current node)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.version = 1
        self.sent: list[dict[str, Any]] = []
        self.statuses: list[int] = []

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        self.sent.append(json.loads(body))
        if self.version == 1:
            try:
                msgspec.json.decode(body, type=V1Request)
            except msgspec.ValidationError:
                self.statuses.append(400)
                return Outcome(status=400, body=fixture("converge_v2_refused.json"))
            reply = await self.node.serve_roundtrip(body, None, "127.0.0.1")  # no header read
        else:
            reply = await self.node.serve_roundtrip(
                body, None, "127.0.0.1", protocol=headers.get(contract.PROTOCOL_HEADER)
            )
        self.statuses.append(reply.status)
        raw = reply.raw if reply.raw is not None else encode(reply.body)
        if self.version == 1:
            assert "v" not in json.loads(raw)
        return Outcome(status=reply.status, body=raw)


async def test_a_node_talks_version_1_until_its_peer_answers_in_2_and_back_on_a_rollback() -> None:
    initiator = make_node("converge", 0, '{"generation": 4, "target": "t"}')
    responder = make_node("converge", 1)
    await initiator.start()
    await responder.start()
    peer = Peer(responder)
    # Peer on version 1: bodies without `v`, no 400, no wait.
    for _ in range(3):
        assert await initiator.step(peer)
    assert all("v" not in b for b in peer.sent)
    assert initiator.describe()["protocol"]["peers"] == {"demo-1": 1}
    # The peer is upgraded: the first answer says 2, then bodies carry `v`.
    peer.version = 2
    assert await initiator.step(peer)
    assert "v" not in peer.sent[-1]
    assert await initiator.step(peer)
    assert peer.sent[-1]["v"] == 2
    assert initiator.describe()["protocol"]["peers"] == {"demo-1": 2}
    # Rolled back to version 1: the refused body is said again in 1, no wait.
    peer.version = 1
    assert await initiator.step(peer)
    assert peer.statuses[-2:] == [400, 200]
    assert "v" not in peer.sent[-1]
    assert await initiator.step(peer)
    assert "v" not in peer.sent[-1]
    assert initiator.waits == 0
    assert responder.state == {"generation": 4, "target": "t"}
    assert peer.statuses.count(400) == 1


def test_round_trip_request_fields_are_those_of_version_1_plus_v() -> None:
    names = [f.encode_name for f in msgspec.structs.fields(RoundTripRequest)]
    assert names == ["loop", "from", "boot", "seq", "state", "v"]
