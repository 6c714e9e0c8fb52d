"""The one client for talking to nodes (reactive_node.runtime.client), against
real node apps on 127.0.0.1 and an aiohttp server that answers badly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from node.nodesupport import LOOP, MakeNode, NodeUnderTest
from reactive_node.core import auth, contract
from reactive_node.core.codec import StateDocument
from reactive_node.runtime.client import NodeClient, NodeError, node_address

KEY = b"k" * 32


def address_of(node: NodeUnderTest) -> str:
    return f"127.0.0.1:{node.client.port}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_reads_state_and_history_of_a_real_node(
    make_node: MakeNode, session: aiohttp.ClientSession
) -> None:
    node = await make_node()
    nodes = NodeClient(session, 2.0)
    state = await nodes.state(address_of(node))
    assert state.loop == LOOP
    assert state.node == node.node.config.node
    assert state == node.node.state_document()
    page = await nodes.history(address_of(node))
    assert page["boot"] == node.node.boot
    assert isinstance(page["entries"], list)
    again = await nodes.history(address_of(node), since=page["next"])
    assert again["entries"] == []


async def test_injects_a_signed_target_into_a_node_with_a_key(
    make_node: MakeNode, session: aiohttp.ClientSession
) -> None:
    node = await make_node(hmac_key=KEY)
    nodes = NodeClient(session, 2.0)
    address = address_of(node)
    state = {"generation": 7, "target": {"v": 1}}
    answer = await nodes.inject(
        address,
        loop=LOOP,
        recipient=node.node.config.node,
        boot=1,
        seq=1,
        state=state,
        keys=auth.Keyring.of(KEY),
    )
    assert answer["state"]["generation"] == 7
    assert node.node.state == state


async def test_an_unsigned_or_misaddressed_injection_is_refused_with_a_clear_error(
    make_node: MakeNode, session: aiohttp.ClientSession
) -> None:
    node = await make_node(hmac_key=KEY)
    nodes = NodeClient(session, 2.0)
    address = address_of(node)
    state = {"generation": 7, "target": 1}
    with pytest.raises(NodeError) as unsigned:
        await nodes.inject(address, loop=LOOP, recipient="x", boot=1, seq=1, state=state)
    assert unsigned.value.status == 401
    assert str(unsigned.value).startswith(f"{address}: /v1/roundtrip answered 401")
    with pytest.raises(NodeError) as elsewhere:
        await nodes.inject(
            address,
            loop=LOOP,
            recipient="another-node",
            boot=1,
            seq=2,
            state=state,
            keys=auth.Keyring.of(KEY),
        )
    assert elsewhere.value.status == 401
    assert node.node.state != state


async def test_a_request_that_cannot_be_made_or_signed_is_a_node_error(
    session: aiohttp.ClientSession,
) -> None:
    nodes = NodeClient(session, 1.0)
    with pytest.raises(NodeError, match="cannot make the round trip"):
        await nodes.inject("127.0.0.1:1", loop="", recipient="n", boot=1, seq=1, state={})
    with pytest.raises(NodeError, match="cannot sign"):
        await nodes.inject(
            "127.0.0.1:1",
            loop=LOOP,
            recipient="not a name!",
            boot=1,
            seq=1,
            state={"generation": 1, "target": 1},
            keys=auth.Keyring.of(KEY),
        )


@pytest.fixture
async def bad_node() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A server answering /v1/state as its mode's "how" says ("slow": never
    within a test; "": a good answer)."""
    release = asyncio.Event()
    mode = {"how": ""}

    async def state(request: web.Request) -> web.StreamResponse:
        how = mode["how"]
        if how == "text":
            return web.Response(text="<html>proxy error</html>")
        if how == "list":
            return web.json_response([1, 2])
        if how == "500":
            return web.Response(status=500, text="internal\nerror")
        if how == "malformed":
            return web.json_response({"node": "n-0", "loops": -1})
        if how == "404":
            return web.Response(status=404)
        if how in ("huge", "huge 500"):  # streamed: no length to refuse it by
            response = web.StreamResponse(status=500 if how == "huge 500" else 200)
            await response.prepare(request)
            chunk = b" " * 65536
            for _ in range(contract.MAX_NODE_ANSWER_BYTES // len(chunk) + 4):
                await response.write(chunk)
            return response
        if how == "slow":
            await release.wait()
        return web.json_response({"loop": LOOP, "node": "n-0"})

    app = web.Application()
    app.router.add_get(contract.STATE_PATH, state)
    app.router.add_post(contract.ROUNDTRIP_PATH, state)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"127.0.0.1:{server.port}", mode
    finally:
        release.set()
        await server.close()


@pytest.mark.parametrize(
    ("how", "status", "reason", "kind"),
    [
        ("text", 200, "answered 200 but not JSON: <html>proxy error</html>", "non-JSON"),
        ("list", 200, "answered list, not a JSON object", "non-object"),
        ("500", 500, "answered 500: internal error", "500"),
        ("404", 404, "answered 404", "404"),
        (
            "malformed",
            200,
            "answered not a state document: Expected `int` >= 0 - at `$.loops`",
            "malformed",
        ),
        ("huge", 200, "answered 200 with more than 1048576 bytes", "too much"),
        ("huge 500", 500, "answered 500 with more than 1048576 bytes", "too much"),
    ],
)
async def test_bad_answers_are_clear_node_errors(
    bad_node: tuple[str, dict[str, str]],
    session: aiohttp.ClientSession,
    how: str,
    status: int,
    reason: str,
    kind: str,
) -> None:
    address, mode = bad_node
    mode["how"] = how
    with pytest.raises(NodeError) as caught:
        await NodeClient(session, 2.0).state(address)
    assert caught.value.status == status
    assert caught.value.address == address
    assert caught.value.reason == f"{contract.STATE_PATH} {reason}"
    assert caught.value.kind == f"state answered {kind}"
    assert str(caught.value) == f"{address}: {caught.value.reason}"


async def test_a_slow_node_is_a_timeout_error(
    bad_node: tuple[str, dict[str, str]], session: aiohttp.ClientSession
) -> None:
    address, mode = bad_node
    mode["how"] = "slow"
    with pytest.raises(NodeError) as caught:
        await NodeClient(session, 0.2).state(address)
    assert caught.value.kind == "TimeoutError"
    assert caught.value.status is None
    assert caught.value.reason.endswith("no answer within 0.2s")


async def test_a_good_answer_from_the_same_server(
    bad_node: tuple[str, dict[str, str]], session: aiohttp.ClientSession
) -> None:
    address, _ = bad_node
    assert await NodeClient(session, 2.0).state(address) == StateDocument(node="n-0", loop=LOOP)


async def test_states_gives_each_node_its_document_or_its_error(
    bad_node: tuple[str, dict[str, str]], session: aiohttp.ClientSession
) -> None:
    good, _ = bad_node
    answers = await NodeClient(session, 2.0).states({"a": good, "b": "127.0.0.1:1"})
    assert answers["a"] == StateDocument(node="n-0", loop=LOOP)
    refused = answers["b"]
    assert isinstance(refused, NodeError)
    assert refused.address == "127.0.0.1:1"
    assert refused.status is None
    assert refused.kind == "ClientConnectorError"


def test_node_address_brackets_ipv6() -> None:
    assert node_address("10.0.0.1", 8080) == "10.0.0.1:8080"
    assert node_address("fd00::1", 8080) == "[fd00::1]:8080"
