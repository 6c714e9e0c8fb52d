"""The initiator side over real HTTP on 127.0.0.1: loops, waits by reason, token webhook."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from node.nodesupport import MakeNode, NodeUnderTest, eventually
from reactive_node.core import contract
from reactive_node.runtime.app import SESSION_KEY, aiohttp_transport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


FakeHandler = Callable[[web.Request], Any]


@pytest.fixture
async def fake_peer() -> AsyncIterator[Callable[[FakeHandler], Any]]:
    """Start a stand-in peer on 127.0.0.1 answering with the given handler."""
    servers: list[TestServer] = []

    async def start(handler: FakeHandler) -> str:
        app = web.Application()
        app.router.add_post(contract.ROUNDTRIP_PATH, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


async def step(n: NodeUnderTest, limit: float = 0.3) -> bool:
    app = n.client.app
    assert app is not None
    return await n.node.step(aiohttp_transport(app[SESSION_KEY], limit))


def answer(status: int, body: Any) -> FakeHandler:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if isinstance(body, bytes):
            return web.Response(status=status, body=body)
        return web.json_response(body, status=status)

    return handler


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (answer(409, {"error": "stale"}), "stale"),
        (answer(500, {"error": "boom"}), "server_error"),
        (answer(503, {"error": "unavailable"}), "server_error"),
        (answer(400, {"error": "bad_request"}), "rejected"),
        (answer(200, b"<html>"), "rejected"),
        (answer(200, {"from": "x", "state": {"generation": "high"}}), "rejected"),
        (answer(200, {"state": {"generation": 1, "target": 1}}), "rejected"),
    ],
)
async def test_failed_round_trips_count_a_wait_and_keep_state(
    make_node: MakeNode, fake_peer: Any, handler: FakeHandler, reason: str
) -> None:
    address = await fake_peer(handler)
    n = await make_node(ordinal=0, peers=[address, address])
    before = n.node.state
    assert await step(n) is False
    assert n.node.state == before
    doc = n.node.describe()
    assert doc["phase"] == "waiting"
    assert doc["waits"] == 1
    assert doc["lastWaitReason"] == reason
    assert doc["edges"][0]["to"] == "test-1"
    assert doc["edges"][0]["outcome"] == reason
    assert n.metric(contract.M_WAITS, reason=reason) == 1
    assert n.metric(contract.M_LOOPS) == 0


async def test_timeout_refused_and_no_peer(make_node: MakeNode, fake_peer: Any) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({})

    slow = await fake_peer(hang)
    n = await make_node(ordinal=0, peers=["127.0.0.1:1", slow], timeout=0.2)
    assert await step(n, limit=0.2) is False
    assert n.node.last_wait_reason == "timeout"
    n2 = await make_node(ordinal=0, peers=["127.0.0.1:1", f"127.0.0.1:{free_port()}"])
    assert await step(n2) is False
    assert n2.node.last_wait_reason == "refused"
    alone = await make_node(ordinal=0, replicas=1)
    assert await step(alone) is False
    assert alone.metric(contract.M_WAITS, reason="no_peer") == 1
    never.set()


async def test_success_reacts_persists_and_counts_a_loop(
    make_node: MakeNode, fake_peer: Any
) -> None:
    newer = {"from": "test-1", "state": {"generation": 7, "target": "t7"}}
    address = await fake_peer(answer(200, newer))
    n = await make_node(ordinal=0, peers=["127.0.0.1:1", address])
    assert await step(n) is True
    assert n.node.state == newer["state"]
    assert n.store.writes == 1
    doc = n.node.describe()
    assert doc["phase"] == "looping"
    assert doc["loops"] == 1
    assert doc["lastLoopAt"] is not None
    assert n.metric(contract.M_LOOPS) == 1
    assert n.metric(contract.M_LAST_LOOP) > 0
    assert n.metric(contract.M_PHASE, phase="looping") == 1
    assert n.metric(contract.M_PHASE, phase="waiting") == 0


async def test_two_nodes_converge_over_http(make_node: MakeNode) -> None:
    ports = [free_port(), free_port(), free_port()]
    peers = [f"127.0.0.1:{p}" for p in ports]
    nodes = []
    for i in range(3):
        nodes.append(
            await make_node(
                ordinal=i, peers=peers, port=ports[i], run_loop=True, interval=0.05, timeout=0.5
            )
        )
    for i, node in enumerate(nodes):
        assert node.client.port == ports[i]
    # Inject a target into node 1 the way the operator does: one round trip.
    session = nodes[0].client.session
    r = await session.post(
        f"http://{peers[1]}{contract.ROUNDTRIP_PATH}",
        json={
            "loop": "test",
            "from": contract.OPERATOR_SENDER,
            "boot": 1,
            "seq": 1,
            "state": {"generation": 3, "target": {"replicas": 3}},
        },
    )
    assert r.status == 200
    await eventually(
        lambda: all(n.node.state == {"generation": 3, "target": {"replicas": 3}} for n in nodes),
        what="all nodes on generation 3",
    )
    await eventually(lambda: all(n.node.phase == "looping" for n in nodes), what="all looping")
    # Steady state: no more writes while nothing changes.
    writes = [n.store.writes for n in nodes]
    loops = [n.node.loops for n in nodes]
    await eventually(
        lambda: all(n.node.loops >= l0 + 5 for n, l0 in zip(nodes, loops, strict=True))
    )
    assert [n.store.writes for n in nodes] == writes


async def test_token_webhook_sees_increasing_epochs(make_node: MakeNode, fake_peer: Any) -> None:
    events: list[dict[str, Any]] = []

    async def webhook(request: web.Request) -> web.Response:
        events.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/fence", webhook)
    fence = TestServer(app, host="127.0.0.1")
    await fence.start_server()
    try:
        ports = [free_port(), free_port()]
        peers = [f"127.0.0.1:{p}" for p in ports]
        for i in range(2):
            await make_node(
                ordinal=i,
                peers=peers,
                port=ports[i],
                run_loop=True,
                behavior="token",
                interval=0.05,
                token_hold=0.15,
                token_webhook=f"http://127.0.0.1:{fence.port}/fence",
            )

        def acquires() -> list[dict[str, Any]]:
            return [e for e in events if e["event"] == "acquire"]

        await eventually(lambda: len(acquires()) >= 5, what="five token acquisitions")
        epochs = [tuple(e["epoch"]) for e in acquires()]
        assert epochs == sorted(set(epochs)), epochs
        assert all(e["node"] == f"test-{e['epoch'][1]}" for e in acquires())
        assert any(e["event"] == "release" for e in events)
    finally:
        await fence.close()
