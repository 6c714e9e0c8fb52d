"""The operator's HTTP side against real node processes (no Kubernetes).

Three `reactive-loop node` processes (memory store) listen on 127.0.0.2-4 at
one free port; the operator's `NodeClient` asks them for `/v1/state` and
injects targets exactly as it does in a cluster, with and without HMAC.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from reactive_node import contract as c
from reactive_operator.nodes import NodeClient
from reactive_operator.plan import PodView
from reactive_operator.spec import parse_spec
from reactive_operator.status import aggregate, parse_report

pytestmark = pytest.mark.processes

SCRIPT = str(Path(sys.executable).with_name("reactive-loop"))
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
T = TypeVar("T")


def free_port() -> int:
    """A port free on every test address (bind each, keep the first's number)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in HOSTS:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on all test addresses")


def start_loop(loop: str, port: int, hmac_key: str | None) -> list[subprocess.Popen[bytes]]:
    peers = ",".join(f"{h}:{port}" for h in HOSTS)
    procs = []
    for ordinal, host in enumerate(HOSTS):
        env = {
            **os.environ,
            c.ENV_LOOP: loop,
            c.ENV_ORDINAL: str(ordinal),
            c.ENV_PEERS: peers,
            c.ENV_BIND: host,
            c.ENV_PORT: str(port),
            c.ENV_STORE: "memory",
            c.ENV_BEHAVIOR: "converge",
            c.ENV_TOPOLOGY: "ring",
            c.ENV_INTERVAL: "0.2",
            c.ENV_TIMEOUT: "0.1",
            c.ENV_MAX_BACKOFF: "0.5",
        }
        if hmac_key is not None:
            env[c.ENV_HMAC_KEY] = hmac_key
        procs.append(
            subprocess.Popen(
                [SCRIPT, "node"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, deadline: float = 20
) -> T:
    end = time.monotonic() + deadline
    last: T | None = None
    while time.monotonic() < end:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {deadline}s (last: {last!r})")


KEY = "k" * 64


@pytest.fixture(scope="module", params=[None, KEY], ids=["plain", "hmac"])
def loop(request: pytest.FixtureRequest) -> Iterator[tuple[int, str | None]]:
    port = free_port()
    procs = start_loop("oploop", port, request.param)
    try:
        yield port, request.param
    finally:
        stop(procs)


@pytest.fixture
async def client(loop: tuple[int, str | None]) -> AsyncIterator[NodeClient]:
    async with aiohttp.ClientSession() as session:
        yield NodeClient(session, timeout=1.0, port=loop[0])


def views() -> list[PodView]:
    return [
        PodView(name=f"oploop-{i}", ordinal=i, phase="Running", ready=True, ip=h)
        for i, h in enumerate(HOSTS)
    ]


async def test_poll_inject_and_aggregate(client: NodeClient, loop: tuple[int, str | None]) -> None:
    _, key = loop
    ips = {v.name: v.ip for v in views() if v.ip}

    async def all_looping() -> dict[str, Any] | None:
        answers = await client.states(ips)
        reports = {n: (parse_report(a) if a else None) for n, a in answers.items()}
        ok = all(r is not None and r.phase == "looping" for r in reports.values())
        return reports if ok else None

    await eventually(all_looping, "three nodes looping")

    if key is not None:
        unsigned = await client.inject(
            HOSTS[0], loop="oploop", state={"generation": 9, "target": 1}, hmac_key=None
        )
        assert not unsigned.ok
        assert unsigned.status == 401
        wrong = await client.inject(
            HOSTS[0], loop="oploop", state={"generation": 9, "target": 1}, hmac_key=b"x" * 64
        )
        assert wrong.status == 401

    other_loop = await client.inject(
        HOSTS[0],
        loop="elsewhere",
        state={"generation": 9, "target": 1},
        hmac_key=None if key is None else key.encode(),
    )
    assert not other_loop.ok
    assert other_loop.status is not None
    assert 400 <= other_loop.status < 500

    target = {"colour": "green"}
    result = await client.inject(
        HOSTS[1],
        loop="oploop",
        state={"generation": 7, "target": target},
        hmac_key=None if key is None else key.encode(),
    )
    assert result.ok, result.detail
    assert result.state is not None
    assert result.state["generation"] == 7

    spec = parse_spec({"replicas": 3, "target": target})

    async def converged() -> dict[str, Any] | None:
        answers = await client.states(ips)
        reports = {n: (parse_report(a) if a else None) for n, a in answers.items()}
        status = aggregate(
            name="oploop",
            generation=7,
            spec=spec,
            spec_error=None,
            pods=views(),
            reports=reports,
            target_generation=7,
            target_digest="d",
            injected_generation=7,
            previous_conditions=[],
            now="2026-01-01T00:00:00Z",
        )
        conv = next(x for x in status["conditions"] if x["type"] == "Converged")
        return status if conv["status"] == "True" else None

    status = await eventually(converged, "the loop converges on generation 7")
    assert status["convergedGeneration"] == 7
    assert status["looping"] == 3
    docs = await client.states(ips)
    assert all(d is not None and d["state"]["target"] == target for d in docs.values())

    # An older generation never moves a node back.
    older = await client.inject(
        HOSTS[2],
        loop="oploop",
        state={"generation": 3, "target": {"colour": "red"}},
        hmac_key=None if key is None else key.encode(),
    )
    assert older.ok
    assert older.state is not None
    assert older.state["generation"] == 7


async def test_unreachable_node_is_none(client: NodeClient) -> None:
    assert await client.state("127.0.0.9") is None
    res = await client.inject(
        "127.0.0.9", loop="oploop", state={"generation": 1, "target": 1}, hmac_key=None
    )
    assert not res.ok
    assert res.status is None
