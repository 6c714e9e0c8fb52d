"""Helpers for the node tests: a node app on aiohttp's test server, polling."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from prometheus_client import CollectorRegistry
from reactive_node.core import auth, contract
from reactive_node.runtime.app import NODE_KEY, NodeRunner, create_app
from reactive_node.runtime.config import make_config
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore

LOOP = "test"
#: A key long enough for a node (at least 32 bytes), and another one.
KEY = b"test-key-0123456789abcdef0123456789abcdef"
OTHER_KEY = b"other-key-0123456789abcdef0123456789abcde"


def signature(
    raw: bytes,
    *,
    key: bytes = KEY,
    to: str = f"{LOOP}-1",
    sender: str = f"{LOOP}-0",
    now: float | None = None,
) -> dict[str, str]:
    """The signature header of a round trip `raw` to node `to` (the default node)."""
    value = auth.sign(
        auth.Keyring.of(key),
        sender=sender,
        recipient=to,
        body=raw,
        now=time.time() if now is None else now,
    )
    return {contract.SIGNATURE_HEADER: value}


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


class NodeTestServer(TestServer):
    """aiohttp's test server, running the app with the node's own runner."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return NodeRunner(self.app, header_timeout=self.header_timeout, **kwargs)


async def node_factory() -> AsyncIterator[MakeNode]:
    clients: list[TestClient[Any, Any]] = []
    folders: list[Path] = []

    async def make(
        store: MemoryStore | None = None,
        *,
        run_loop: bool = False,
        header_timeout: float = contract.HEADER_TIMEOUT_SECONDS,
        body_timeout: float = contract.BODY_TIMEOUT_SECONDS,
        hmac_key: bytes | None = None,
        **settings: object,
    ) -> NodeUnderTest:
        store = store or MemoryStore()
        registry = CollectorRegistry()
        defaults = {"loop": LOOP, "ordinal": 1, "replicas": len(settings.get("peers") or ()) or 3}  # type: ignore[arg-type]
        if hmac_key is not None:  # as a node gets it: a file
            folder = Path(tempfile.mkdtemp(prefix="rl-keys-"))
            folders.append(folder)
            (folder / "primary").write_bytes(hmac_key)
            settings = {**settings, "hmac_key_file": folder / "primary"}
        config = make_config({**defaults, **settings})
        app = create_app(config, store, registry, run_loop=run_loop, body_timeout=body_timeout)
        port = config.port if "port" in settings else None
        server = NodeTestServer(app, host="127.0.0.1", port=port, header_timeout=header_timeout)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return NodeUnderTest(client, store, registry)

    yield make
    for client in clients:
        await client.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


async def eventually(check: Callable[[], bool], *, within: float = 10.0, what: str = "") -> None:
    """Poll `check` until it holds, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


class RawAnswer:
    """What came back on a raw connection: a status line, headers and a body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


async def raw_exchange(
    host: str,
    port: int,
    data: bytes,
    *,
    within: float = 10.0,
    local_addr: tuple[str, int] | None = None,
) -> RawAnswer | None:
    """Send `data` as is on a fresh connection and read one HTTP answer; None if
    the server closed the connection without one. Fails after `within` seconds."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        try:
            writer.write(data)
            try:
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length)
            return RawAnswer(status, headers, body)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
