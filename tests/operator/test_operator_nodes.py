"""The operator's HTTP side against real node processes (no Kubernetes).

Three `reactive-loop node` processes (memory store) listen on 127.0.0.2-4 at
one free port; the operator's `NodeClient` asks them for `/v1/state` exactly
as it does in a cluster, with and without HMAC (targets go through the API
server: tests/operator/test_operator_inject.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument
from reactive_operator.nodes import NodeClient, NodeError
from reactive_operator.plan import PodView
from reactive_operator.reconcile import poll
from reactive_operator.spec import parse_spec
from reactive_operator.status import aggregate

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


def start_loop(
    loop: str, port: int, hmac_key: str | None, key_dir: Path
) -> list[subprocess.Popen[bytes]]:
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
            (key_dir / "primary").write_text(hmac_key + "\n")
            env[c.ENV_HMAC_KEY_FILE] = str(key_dir / "primary")
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
def loop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, str | None]]:
    port = free_port()
    procs = start_loop("oploop", port, request.param, tmp_path_factory.mktemp("keys"))
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


async def test_poll_and_aggregate(client: NodeClient) -> None:
    ips = {v.name: v.ip for v in views() if v.ip}
    spec = parse_spec({"replicas": 3})

    async def all_looping() -> dict[str, Any] | None:
        answers = await client.states(ips)
        reports = {n: (None if isinstance(a, NodeError) else a) for n, a in answers.items()}
        if not all(r is not None and r.phase == "looping" for r in reports.values()):
            return None
        return aggregate(
            name="oploop",
            generation=1,
            spec=spec,
            spec_error=None,
            pods=views(),
            reports=reports,
            target_generation=None,
            target_digest=None,
            injected_generation=None,
            previous_conditions=[],
            now="2026-01-01T00:00:00Z",
        )

    status = await eventually(all_looping, "three nodes looping")
    assert status["looping"] == 3
    assert status["readyReplicas"] == 3


async def test_unreachable_node_is_none(client: NodeClient) -> None:
    assert await client.state("127.0.0.9") is None


class _Answers:
    """Node answers as the shared client gives them."""

    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | NodeError]:
        return {
            "oploop-0": StateDocument(node="oploop-0", phase="looping"),
            "oploop-1": NodeError("10.0.0.3:8080", "/v1/state answered not a state document", 200),
            "oploop-2": NodeError("10.0.0.4:8080", "/v1/state: no answer within 1s"),
        }


async def test_poll_keeps_why_an_answer_was_bad() -> None:
    reports, bad = await poll(_Answers(), views(), parse_spec({"replicas": 3}))  # type: ignore[arg-type]
    assert reports["oploop-0"] is not None
    assert reports["oploop-1"] is None
    assert reports["oploop-2"] is None
    assert bad == {"oploop-1": "/v1/state answered not a state document"}
