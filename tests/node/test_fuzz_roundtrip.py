"""The bounded fuzz target of the round-trip endpoint (issue 11 §1), run in CI.

Two nodes loop over real sockets in a background thread (the node's own
runner, header and body timeouts, memory stores). Hypothesis throws raw HTTP
requests at node 0 from another address (127.0.0.2): any method, headers with
any bytes (the signature header too), any Content-Type and Content-Encoding,
wrong lengths, and bodies that are anything from random bytes to round trips
with numbers out of range, deep nesting and forged senders. Every answer is
below 500 and JSON, or the connection is closed; afterwards both nodes still
loop, and node 0 restarted on what it stored comes back ready and looping.

`RL_FUZZ_EXAMPLES` sets the number of examples (default 300, about 10 s).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from reactive_node.core import contract
from reactive_node.local.supervisor import free_ports
from reactive_node.runtime.app import NODE_KEY, NodeRunner, create_app
from reactive_node.runtime.config import make_config
from reactive_node.runtime.node import Node
from reactive_node.runtime.store import MemoryStore

pytestmark = pytest.mark.fuzz

LOOP = "fuzz"
EXAMPLES = int(os.environ.get("RL_FUZZ_EXAMPLES", "300"))
FUZZER_ADDRESS = "127.0.0.2"
T = TypeVar("T")


@dataclass
class Pair:
    """Two looping nodes served from a background event loop."""

    ports: list[int]
    stores: list[MemoryStore] = field(default_factory=lambda: [MemoryStore(), MemoryStore()])
    runners: list[NodeRunner | None] = field(default_factory=lambda: [None, None])
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `function(*args)` on the nodes' loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(function(*args), self.loop)
        return future.result(timeout=30)

    def node(self, i: int) -> Node:
        runner = self.runners[i]
        assert runner is not None
        node: Node = runner.app[NODE_KEY]
        return node

    async def start(self, i: int) -> None:
        peers = tuple(f"127.0.0.1:{p}" for p in self.ports)
        config = make_config(
            {"loop": LOOP, "ordinal": i, "peers": peers, "interval": 0.1, "timeout": 2.0}
        )
        app = create_app(config, self.stores[i], CollectorRegistry(), body_timeout=0.5)
        runner = NodeRunner(app, header_timeout=2.0, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.ports[i]).start()
        self.runners[i] = runner

    async def stop(self, i: int) -> None:
        runner = self.runners[i]
        if runner is not None:
            await runner.cleanup()
        self.runners[i] = None


async def _cancel_the_rest() -> None:
    """Cancel what aiohttp still runs (connections it lingers on) before the loop closes."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    running = Pair(ports=free_ports(2))
    thread = threading.Thread(target=running.loop.run_forever, daemon=True)
    thread.start()
    try:
        for i in range(2):
            running.call(running.start, i)
        yield running
    finally:
        for i in range(2):
            running.call(running.stop, i)
        running.call(_cancel_the_rest)
        running.loop.call_soon_threadsafe(running.loop.stop)
        thread.join(timeout=30)
        running.loop.close()


def eventually(probe: Callable[[], T | None], what: str, deadline: float = 20.0) -> T:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {deadline}s")


# --------------------------------------------------------------- strategies

numbers = st.one_of(
    st.integers(-3, 10),
    st.integers(0, contract.MAX_STATE_INT),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**53, 2**63, 2**64, 10**400, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.none() | st.booleans() | numbers | st.text(max_size=6)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    value: Any = draw(leaves)
    for _ in range(draw(st.integers(0, 80))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


states = st.one_of(
    st.fixed_dictionaries({"generation": numbers, "target": json_values | nested()}),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    json_values,
)
round_trips = st.fixed_dictionaries(
    {
        "loop": st.sampled_from([LOOP, "other", ""]),
        "from": st.sampled_from([f"{LOOP}-0", f"{LOOP}-1", contract.OPERATOR_SENDER, "x"]),
        "boot": st.one_of(numbers, st.just(time.time_ns())),
        "seq": numbers,
        "state": states,
    },
    optional={"extra": json_values},
).map(lambda value: json.dumps(value).encode())
json_in_bounds = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-contract.MAX_STATE_INT, contract.MAX_STATE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
valid_round_trips = st.fixed_dictionaries(
    {
        "loop": st.just(LOOP),
        "from": st.sampled_from([f"{LOOP}-1", contract.OPERATOR_SENDER, "x"]),
        "boot": st.integers(0, time.time_ns()),
        "seq": st.integers(0, contract.MAX_WIRE_INT),
        "state": st.fixed_dictionaries(
            {"generation": st.integers(0, contract.MAX_STATE_INT), "target": json_in_bounds}
        ),
    }
).map(lambda value: json.dumps(value).encode())
bodies = st.one_of(
    valid_round_trips,
    valid_round_trips,
    round_trips,
    round_trips.map(gzip.compress),
    st.binary(max_size=300),
    round_trips.map(lambda b: b[: len(b) // 2]),
)
header_bytes = st.binary(max_size=40)
ROUNDTRIP = contract.ROUNDTRIP_PATH.encode()
ODD_PARTS = ["method", "path", "content-type", "content-encoding", "signature", "header", "length"]
content_types = st.one_of(
    st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"text/plain"]),
    header_bytes,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A raw HTTP request: mostly a well-formed POST (so the body reaches the node's
    checks), else with one or more odd parts (method, path, headers, length)."""
    odd = set(draw(st.lists(st.sampled_from(ODD_PARTS), max_size=3)))
    method: bytes = (
        draw(st.sampled_from([b"GET", b"PUT", b"P\x00ST"])) if "method" in odd else b"POST"
    )
    path: bytes = (
        draw(st.sampled_from([b"/", b"/%zz", b"/v1/state"])) if "path" in odd else ROUNDTRIP
    )
    payload: bytes = draw(bodies)
    headers = [b"Host: node"]
    if "content-type" not in odd:
        headers.append(b"Content-Type: application/json")
    elif draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(content_types))
    if "content-encoding" in odd:
        encoding = draw(st.sampled_from([b"gzip", b"deflate", b"br", b"identity"]) | header_bytes)
        headers.append(b"Content-Encoding: " + encoding)
    if "signature" in odd:
        headers.append(contract.SIGNATURE_HEADER.encode() + b": " + draw(header_bytes))
    if "header" in odd:
        headers.append(draw(st.binary(min_size=1, max_size=12)) + b": " + draw(header_bytes))
    length = len(payload) + (draw(st.sampled_from([-1, 3])) if "length" in odd else 0)
    headers.append(b"Content-Length: %d" % max(0, length))
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + payload


def exchange(port: int, data: bytes) -> tuple[int, str, bytes] | None:
    """One raw request from the fuzzer's address; None if closed without an answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(FUZZER_ADDRESS, 0)
    ) as sock:
        try:
            sock.sendall(data)
        except ConnectionError:
            return None
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionError):
            return None
        return response.status, response.getheader("Content-Type", ""), body


def _loops(pair: Pair) -> list[int]:
    return [pair.node(i).loops for i in range(2)]


def test_no_request_breaks_the_round_trip_endpoint(pair: Pair) -> None:
    eventually(lambda: all(n > 0 for n in _loops(pair)), "both nodes loop before the fuzz")
    answered: dict[int, int] = {}
    closed: list[bytes] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=requests())
    def one(data: bytes) -> None:
        answer = exchange(pair.ports[0], data)
        if answer is None:
            closed.append(data)
            return  # closing the connection is an allowed answer
        status, content_type, body = answer
        answered[status] = answered.get(status, 0) + 1
        assert status < 500, (status, body)
        assert content_type.split(";")[0].strip() == "application/json", (status, content_type)
        document = json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in {body!r}"))
        assert isinstance(document, dict)
        if status >= 400:
            assert set(document) == {"error", "detail"}

    one()
    # Every example was sent (none was skipped or filtered away).
    assert sum(answered.values()) + len(closed) >= EXAMPLES, (answered, len(closed))
    # The endpoint still serves a good round trip from the fuzzer's address.
    good = {"loop": LOOP, "from": "after-fuzz", "boot": time.time_ns(), "seq": 1}
    good["state"] = {"generation": 0, "target": None}
    payload = json.dumps(good).encode()
    answer = exchange(
        pair.ports[0],
        b"POST %s HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (ROUNDTRIP, len(payload), payload),
    )
    assert answer is not None
    assert answer[0] == 200, answer

    # Both nodes still loop...
    before = _loops(pair)
    eventually(
        lambda: all(a > b for a, b in zip(_loops(pair), before, strict=True)),
        "both nodes loop after the fuzz",
    )
    # ...and node 0, restarted on whatever it stored, is ready and loops again.
    pair.call(pair.stop, 0)
    pair.call(pair.start, 0)
    assert pair.node(0).ready
    assert pair.node(0).state_error is None
    eventually(lambda: pair.node(0).loops > 0, "the restarted node loops")
