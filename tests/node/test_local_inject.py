"""`set-target` against real node apps (memory store): skips the dead, retries on refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from reactive_node.core import contract
from reactive_node.core.codec import encode_state
from reactive_node.local.inject import GENERATION_FILE, set_target
from reactive_node.local.supervisor import free_ports
from reactive_node.runtime.app import NODE_KEY, create_app
from reactive_node.runtime.config import make_config
from reactive_node.runtime.store import MemoryStore


async def start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def node_app(ordinal: int, addresses: list[str]) -> web.Application:
    config = make_config(
        {"loop": "inject", "ordinal": ordinal, "peers": tuple(addresses), "interval": 60}
    )
    return create_app(config, MemoryStore(), CollectorRegistry(), run_loop=False)


def refusing_app(generation: int) -> web.Application:
    """Looks like a node on GET /v1/state but refuses every round trip with 503."""

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "loop": "inject",
                "node": "inject-1",
                "state": {"generation": generation, "target": "old"},
            }
        )

    async def roundtrip(request: web.Request) -> web.Response:
        return web.json_response({"error": "unavailable", "detail": "test"}, status=503)

    app = web.Application()
    app.router.add_get(contract.STATE_PATH, state)
    app.router.add_post(contract.ROUNDTRIP_PATH, roundtrip)
    return app


@pytest.fixture
async def loop_of_four() -> AsyncIterator[tuple[list[str], list[web.Application]]]:
    """Node 0 is dead (nothing listens), 1 refuses round trips, 2 and 3 are real nodes."""
    ports = free_ports(4)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    apps = [refusing_app(generation=4), node_app(2, addresses), node_app(3, addresses)]
    runners = [await start(app, port) for app, port in zip(apps, ports[1:], strict=True)]
    try:
        yield addresses, apps
    finally:
        for runner in runners:
            await runner.cleanup()


def held(app: web.Application) -> Any:
    return app[NODE_KEY].state


async def test_injects_above_every_generation_through_the_first_taker(
    loop_of_four: tuple[list[str], list[web.Application]],
) -> None:
    addresses, apps = loop_of_four
    result = await set_target({"v": 1}, addresses, request_timeout=2.0)
    assert result.ok, result.failures
    # Newest seen was 4 (the refusing node), so 5; it went through node 2, the first taker.
    assert result.generation == 5
    assert result.address == addresses[2]
    assert held(apps[1]) == {"generation": 5, "target": {"v": 1}}
    assert held(apps[2]) == {"generation": 0, "target": None}  # untouched: one injection
    assert any(addresses[0] in f for f in result.failures)  # dead: reported
    assert any(addresses[1] in f and "503" in f for f in result.failures)  # refused: reported

    again = await set_target({"v": 2}, addresses, request_timeout=2.0)
    assert again.ok
    assert again.generation == 6
    assert held(apps[1]) == {"generation": 6, "target": {"v": 2}}


async def test_fails_when_no_node_takes_it() -> None:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    result = await set_target({"v": 1}, addresses, request_timeout=1.0)
    assert not result.ok
    assert len(result.failures) == 2


async def test_racing_injections_get_unique_generations_above_unreachable_nodes(
    loop_of_four: tuple[list[str], list[web.Application]], tmp_path: Path
) -> None:
    addresses, apps = loop_of_four
    # Node 0 is down, but its state file says it holds generation 9.
    (tmp_path / "inject-0.json").write_text(encode_state({"generation": 9, "target": "old"}))
    results = await asyncio.gather(
        *(set_target({"v": i}, addresses, state_dir=tmp_path) for i in range(4))
    )
    assert all(r.ok for r in results), [r.failures for r in results]
    generations = [r.generation for r in results]
    assert sorted(g for g in generations if g is not None) == [10, 11, 12, 13]
    assert (tmp_path / GENERATION_FILE).read_text().strip() == "13"
    # Injections are one at a time in generation order: the newest is what the
    # first taker holds, never an older one.
    newest = generations.index(13)
    assert held(apps[1]) == {"generation": 13, "target": {"v": newest}}
    # The allotted generation is remembered even when no node reports it.
    apps[1][NODE_KEY].state = {"generation": 0, "target": None}
    again = await set_target({"v": "next"}, addresses, state_dir=tmp_path)
    assert again.generation == 14
