"""Helpers for the node tests: a node app on aiohttp's test server, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from reactive_node.app import NODE_KEY, create_app
from reactive_node.config import make_config
from reactive_node.node import Node
from reactive_node.store import MemoryStore

LOOP = "test"


class NodeUnderTest:
    def __init__(
        self, client: TestClient[Any, Any], store: MemoryStore, registry: CollectorRegistry
    ) -> None:
        self.client = client
        self.store = store
        self.registry = registry

    @property
    def node(self) -> Node:
        app = self.client.app
        assert app is not None
        node: Node = app[NODE_KEY]
        return node

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(
            name, {"loop": LOOP, "node": self.node.config.node, **labels}
        )
        return 0.0 if value is None else value


MakeNode = Callable[..., Awaitable[NodeUnderTest]]


async def node_factory() -> AsyncIterator[MakeNode]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        store: MemoryStore | None = None, *, run_loop: bool = False, **settings: object
    ) -> NodeUnderTest:
        store = store or MemoryStore()
        registry = CollectorRegistry()
        defaults = {"loop": LOOP, "ordinal": 1, "replicas": len(settings.get("peers") or ()) or 3}  # type: ignore[arg-type]
        config = make_config({**defaults, **settings})
        app = create_app(config, store, registry, run_loop=run_loop)
        port = config.port if "port" in settings else None
        client = TestClient(TestServer(app, host="127.0.0.1", port=port))
        await client.start_server()
        clients.append(client)
        return NodeUnderTest(client, store, registry)

    yield make
    for client in clients:
        await client.close()


async def eventually(check: Callable[[], bool], *, within: float = 10.0, what: str = "") -> None:
    """Poll `check` until it holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)
