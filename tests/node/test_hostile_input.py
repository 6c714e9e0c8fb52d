"""No input can break a node (issue 11 §1), at the HTTP layer with hypothesis.

One class per test group: numbers out of range, odd requests (nesting,
header bytes, content types and codings, requests that never finish,
aiohttp's own errors), bad stored state (file, annotation, replicas), and
one sender locking out another. Each answer is a JSON 4xx (or a closed
connection), nothing is stored, no traceback is logged, and a node restarted
on what was stored comes back ready.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from node.nodesupport import (
    KEY,
    LOOP,
    MakeNode,
    NodeUnderTest,
    RawAnswer,
    raw_exchange,
    signature,
)
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Context, Converge, InvalidState, Token
from reactive_node.core import contract
from reactive_node.core.codec import decode_state, encode_state
from reactive_node.runtime.config import NodeConfig
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.pod_store import _snapshot
from reactive_node.runtime.store import FileStore, MemoryStore, parse_replicas

MAX_INT = contract.MAX_STATE_INT
FIXTURE_OK = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60
)


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


def strict_json(raw: bytes) -> Any:
    """JSON as any other tool reads it: no NaN or Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(raw, parse_constant=refuse)


async def assert_json_error(r: aiohttp.ClientResponse, status: int, error: str) -> None:
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    answer = strict_json(await r.read())
    assert answer["error"] == error
    assert isinstance(answer["detail"], str)
    assert answer["detail"]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]


async def restarted(make_node: MakeNode, store: MemoryStore, **settings: object) -> NodeUnderTest:
    """A fresh node on the same store (a restart); it must start and be ready."""
    n = await make_node(store, **settings)
    assert n.node.ready
    assert (await n.client.get(contract.READY_PATH)).status == 200
    return n


# ------------------------------------------------------------------- numbers

too_big = st.one_of(
    st.integers(min_value=MAX_INT + 1, max_value=10**4000),
    st.integers(min_value=-(10**4000), max_value=-MAX_INT - 1),
)
wire_bad = st.one_of(
    st.integers(min_value=contract.MAX_WIRE_INT + 1, max_value=10**4000),
    st.integers(max_value=-1, min_value=-(10**30)),
)


def _place(where: str, value: int) -> dict[str, Any]:
    if where == "generation":
        return body(state={"generation": value, "target": 1})
    if where == "target":
        return body(state={"generation": 3, "target": {"replicas": [1, {"n": value}]}})
    return body(**{where: value})


@FIXTURE_OK
@given(
    case=st.one_of(
        st.tuples(st.sampled_from(["generation", "target"]), too_big),
        st.tuples(st.sampled_from(["boot", "seq"]), wire_bad),
    )
)
async def test_a_number_out_of_range_gets_400_and_nothing_is_stored(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, case: tuple[str, int]
) -> None:
    where, value = case
    n = await make_node()
    r = await post(n, _place(where, value))
    await assert_json_error(r, 400, "bad_request")
    assert n.store.writes == 0
    assert n.node.state == {"generation": 0, "target": None}
    no_tracebacks(caplog)


json_bounded = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_INT, MAX_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@FIXTURE_OK
@given(generation=st.integers(1, MAX_INT), target=json_bounded)
async def test_every_number_in_range_is_stored_and_survives_a_restart(
    make_node: MakeNode, generation: int, target: Any
) -> None:
    n = await make_node()
    r = await post(n, body(state={"generation": generation, "target": target}))
    assert r.status == 200, await r.text()
    answer = strict_json(await r.read())
    # What any JSON tool reads back is exactly what was sent.
    assert answer["state"] == {"generation": generation, "target": target}
    again = await restarted(make_node, n.store)
    assert again.node.state_error is None
    assert again.node.state == answer["state"]
    assert again.metric(contract.M_GENERATION) == float(generation)
    doc = strict_json(await (await again.client.get(contract.STATE_PATH)).read())
    assert doc["summary"]["generation"] == generation


def test_token_terms_saturate_at_the_bound() -> None:
    token = Token()
    ctx = Context(ordinal=0, replicas=3, now=1000.0, started_at=0.0, peer=1, quiet=0.0)
    holder = token.validate(
        {
            "holding": True,
            "epoch": [MAX_INT, 0],
            "since": 0.0,
            "seenAt": 0.0,
            "offer": None,
            "acked": [MAX_INT, 0],
        }
    )
    acting = dataclasses.replace(ctx, acting=True)
    assert token.tick(holder, acting) == holder  # no offer with term 2^53
    assert token.tick(holder, dataclasses.replace(ctx, renew=True)) == holder  # nor renewal
    lost = token.validate(
        {"holding": False, "epoch": [MAX_INT, 2], "since": None, "seenAt": 0.0, "lost": True}
    )
    quorum = dataclasses.replace(ctx, quiet=1e9, confirmed=2, confirmed_epoch=(MAX_INT, 2))
    assert token.tick(lost, quorum) == lost  # no regeneration with term 2^53
    for bad in ([MAX_INT + 1, 0], [0, MAX_INT + 1]):
        with pytest.raises(InvalidState):
            token.validate(
                {"holding": False, "epoch": bad, "since": None, "seenAt": 0.0, "offer": None}
            )
    with pytest.raises(InvalidState):
        token.validate({"holding": False, "epoch": None, "since": 10**400, "seenAt": 0.0})


# -------------------------------------------------------------- odd requests


@FIXTURE_OK
@given(depth=st.integers(1, 3000), as_object=st.booleans())
async def test_any_nesting_depth_gets_a_json_answer(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, depth: int, as_object: bool
) -> None:
    n = await make_node()
    opening, closing = (b'{"a":', b"}") if as_object else (b"[", b"]")
    target = opening * depth + b"1" + closing * depth
    raw = b'{"loop":"test","from":"x","boot":1,"seq":1,"state":{"generation":1,"target":%s}}' % (
        target
    )
    r = await post(n, raw)
    # The state object is level 1, the target level 2.
    if depth + 1 <= contract.MAX_STATE_DEPTH:
        assert r.status == 200
    else:
        await assert_json_error(r, 400, "bad_request")
        assert n.store.writes == 0
    no_tracebacks(caplog)


def _request(headers: list[tuple[bytes, bytes]], payload: bytes) -> bytes:
    lines = [b"POST " + contract.ROUNDTRIP_PATH.encode() + b" HTTP/1.1", b"Host: node"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(payload))
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


async def _exchange(n: NodeUnderTest, data: bytes) -> RawAnswer | None:
    server = n.client.server
    assert server.port is not None
    return await raw_exchange("127.0.0.1", server.port, data)


def _assert_4xx_json_or_closed(answer: RawAnswer | None) -> None:
    if answer is None:
        return  # the server closed the connection: allowed
    assert 200 <= answer.status < 500, answer.status
    assert answer.content_type == "application/json", answer.headers
    strict_json(answer.body)


header_names = st.one_of(
    st.sampled_from([b"Content-Type", b"X-Reactive-Loop-Signature", b"Content-Length", b"Host"]),
    st.binary(min_size=1, max_size=20),
)


@FIXTURE_OK
@given(name=header_names, value=st.binary(max_size=60), signed=st.booleans())
async def test_any_bytes_in_any_header_get_a_json_4xx_or_a_close(
    make_node: MakeNode,
    caplog: pytest.LogCaptureFixture,
    name: bytes,
    value: bytes,
    signed: bool,
) -> None:
    n = await make_node(hmac_key=KEY if signed else None)
    payload = json.dumps(body()).encode()
    headers = [(b"Content-Type", b"application/json"), (name, value)]
    answer = await _exchange(n, _request(headers, payload))
    _assert_4xx_json_or_closed(answer)
    if answer is not None and answer.status != 200:
        assert n.store.writes == 0
    no_tracebacks(caplog)


@FIXTURE_OK
@given(value=st.text(max_size=30) | st.just("\u00e9\udcff"))
async def test_any_signature_header_is_401_not_5xx(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    n = await make_node(hmac_key=KEY)
    raw = json.dumps(body()).encode()
    answer = await _exchange(
        n,
        _request(
            [
                (b"Content-Type", b"application/json"),
                (b"X-Reactive-Loop-Signature", value.encode("utf-8", "surrogateescape")),
            ],
            raw,
        ),
    )
    assert answer is not None
    # 401; or 400 from aiohttp's own parser for bytes no header may hold (controls).
    expected = {401: "unauthorized", 400: "bad_request"}
    assert answer.status in expected
    assert strict_json(answer.body)["error"] == expected[answer.status]
    if answer.status == 400:
        assert any(ord(c) < 32 or ord(c) == 127 for c in value)
    no_tracebacks(caplog)


@FIXTURE_OK
@given(content_type=st.text(max_size=30))
async def test_a_content_type_other_than_json_gets_415(
    make_node: MakeNode, content_type: str
) -> None:
    assume(content_type.split(";")[0].strip().lower() != "application/json")
    n = await make_node()
    answer = await _exchange(
        n,
        _request(
            [(b"Content-Type", content_type.encode("utf-8", "surrogateescape"))],
            json.dumps(body()).encode(),
        ),
    )
    assert answer is not None
    # 415; or 400 from aiohttp's own parser for bytes no header may hold (controls).
    expected = {415: "unsupported_media_type", 400: "bad_request"}
    assert answer.status in expected
    assert strict_json(answer.body)["error"] == expected[answer.status]
    assert n.store.writes == 0


def _compressed(kind: str, data: bytes) -> tuple[str, bytes]:
    if kind == "gzip":
        return "gzip", gzip.compress(data)
    if kind == "broken gzip":
        return "gzip", b"\x1f\x8b" + os.urandom(20)
    if kind == "deflate":
        return "deflate", zlib.compress(data)
    if kind == "broken deflate":
        return "deflate", b"x\x9c" + os.urandom(20)
    if kind == "br":
        return "br", os.urandom(30)
    return "x-unknown", data


@pytest.mark.parametrize(
    "kind", ["gzip", "broken gzip", "deflate", "broken deflate", "br", "unknown"]
)
async def test_compressed_bodies_get_415(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    n = await make_node()
    encoding, payload = _compressed(kind, json.dumps(body()).encode())
    answer = await _exchange(
        n,
        _request(
            [(b"Content-Type", b"application/json"), (b"Content-Encoding", encoding.encode())],
            payload,
        ),
    )
    assert answer is not None
    assert answer.status == 415
    assert strict_json(answer.body)["error"] == "unsupported_media_type"
    assert n.store.writes == 0
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nBad\x00Name: 1\r\n\r\n",
        b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/roundtrip HTTP/9.9\r\nHost: x\r\n\r\n",
    ],
)
async def test_aiohttps_own_errors_are_json(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    n = await make_node()
    answer = await _exchange(n, raw)
    assert answer is not None
    assert 400 <= answer.status < 500
    assert answer.content_type == "application/json"
    assert strict_json(answer.body)["error"] == "bad_request"
    no_tracebacks(caplog)


async def test_headers_that_never_finish_are_cut_off(make_node: MakeNode) -> None:
    n = await make_node(header_timeout=0.5)
    started = time.monotonic()
    answer = await _exchange(n, b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer is None  # closed without an answer
    assert time.monotonic() - started < 5


async def test_a_body_that_never_finishes_gets_408(make_node: MakeNode) -> None:
    n = await make_node(body_timeout=0.3)
    head = (
        b"POST /v1/roundtrip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    answer = await _exchange(n, head)
    assert answer is not None
    assert answer.status == 408
    assert strict_json(answer.body)["error"] == "timeout"
    assert n.store.writes == 0


# ---------------------------------------------------------- bad stored state

stored_texts = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(
        [
            '{"generation": NaN, "target": 1}',
            '{"generation": 1, "target": Infinity}',
            '{"generation": 1, "target": "\\ud800"}',
            '{"generation": 1e400, "target": 1}',
            '{"generation": 100000000000000000000, "target": 1}',
            '{"generation": 1, "target": ' + "[" * 2000 + "]" * 2000 + "}",
            '{"generation": 1, "target": ' + "9" * 5000 + "}",
            '{"generation": 1, "target": 1}\x00',
        ]
    ),
    json_bounded.map(lambda t: encode_state({"generation": 5, "target": t})),
)


@FIXTURE_OK
@given(raw=stored_texts, replicas=st.one_of(st.none(), st.text(max_size=8)))
async def test_any_stored_state_and_replicas_start_a_ready_node(
    make_node: MakeNode,
    caplog: pytest.LogCaptureFixture,
    raw: str,
    replicas: str | None,
) -> None:
    try:
        Converge().validate(decode_state(raw))
        n_valid = True
    except ValueError:  # BadBody or InvalidState
        n_valid = False
    store = MemoryStore(raw=raw, replicas=replicas)
    n = await restarted(make_node, store)
    count, problem = parse_replicas(replicas)
    assert n.node.replicas == (count or 3)
    doc = strict_json(await (await n.client.get(contract.STATE_PATH)).read())
    assert (doc["stateError"] is None) == (n_valid and problem is None)
    if problem is not None:
        assert "replicas" in doc["stateError"]
    # Whatever was stored, the node round-trips (and so recovers from its peers).
    r = await post(n, body(boot=time.time_ns(), state={"generation": 7, "target": "peer"}))
    assert r.status == 200, await r.text()
    assert n.node.state_error is None  # the good state replaced the bad one
    no_tracebacks(caplog)


@given(text=st.one_of(st.none(), st.text(max_size=12), st.integers().map(str)))
def test_the_replicas_annotation_takes_any_string(text: str | None) -> None:
    pod = {
        "metadata": {"annotations": {} if text is None else {contract.REPLICAS_ANNOTATION: text}}
    }
    snapshot = _snapshot(pod)
    if snapshot.replicas is None:
        assert (snapshot.replicas_error is None) == (text is None)
    else:
        assert 1 <= snapshot.replicas <= contract.MAX_REPLICAS
        assert text is not None
        assert int(text) == snapshot.replicas
        assert snapshot.replicas_error is None


@pytest.mark.parametrize("kind", ["directory", "not utf-8", "too large", "nan"])
async def test_an_unreadable_state_file_starts_the_node_with_state_error(
    make_node: MakeNode, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "test-1.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b'{"generation": 1, "target": "\xff"}')
    elif kind == "too large":
        path.write_text('{"generation": 1, "target": "' + "x" * 300_000 + '"}')
    else:
        path.write_text('{"generation": NaN, "target": 1}')
    store = FileStore(path)
    snapshot = await store.load()
    if kind in ("directory", "too large"):
        assert snapshot.raw is None
        assert snapshot.error
    registry = CollectorRegistry()
    config = NodeConfig(loop=LOOP, ordinal=1, replicas=3)
    metrics = NodeMetrics(registry, LOOP, "test-1", "converge", "ring")
    node = Node(config, Converge(), store, metrics)
    await node.start()
    assert node.ready
    assert node.state == {"generation": 0, "target": None}
    assert node.state_error is not None
    assert (
        registry.get_sample_value(contract.M_STATE_INVALID, {"loop": LOOP, "node": "test-1"}) == 1
    )


# ---------------------------------------------------------- sender lock-out


async def _post_from(
    n: NodeUnderTest, address: str, payload: dict[str, Any], **headers: str
) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            n.client.make_url(contract.ROUNDTRIP_PATH),
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **headers},
        ) as r,
    ):
        return r.status, await r.json()


@FIXTURE_OK
@given(
    boot_ahead=st.floats(-1e9, contract.BOOT_SKEW_SECONDS - 1),
    seq=st.integers(0, contract.MAX_WIRE_INT),
)
async def test_a_forged_sender_cannot_lock_out_the_real_one(
    make_node: MakeNode, boot_ahead: float, seq: int
) -> None:
    n = await make_node()
    real_boot = time.time_ns() - 10**9
    assert (await _post_from(n, "127.0.0.1", body(boot=real_boot, seq=1)))[0] == 200
    forged_boot = max(0, int((time.time() + boot_ahead) * 1e9))
    forged = body(boot=forged_boot, seq=seq, state={"generation": 3, "target": "forged"})
    status, _ = await _post_from(n, "127.0.0.2", forged)
    assert status == 200  # a plausible round trip from elsewhere is served
    # The real sender, from its own address, is not stale.
    status, answer = await _post_from(n, "127.0.0.1", body(boot=real_boot, seq=2))
    assert status == 200, answer
    # ...while its own replay still is.
    status, answer = await _post_from(n, "127.0.0.1", body(boot=real_boot, seq=2))
    assert status == 409, answer


@FIXTURE_OK
@given(ahead=st.integers(contract.BOOT_SKEW_SECONDS + 1, 10**9))
async def test_a_boot_ahead_of_the_clock_is_refused(make_node: MakeNode, ahead: int) -> None:
    n = await make_node()
    boot = min(contract.MAX_WIRE_INT, time.time_ns() + ahead * 10**9)
    r = await post(n, body(boot=boot))
    await assert_json_error(r, 400, "bad_request")
    assert n.store.writes == 0
    assert (await post(n, body(boot=time.time_ns(), seq=1))).status == 200


async def test_with_a_key_a_replay_from_another_address_is_still_stale(
    make_node: MakeNode,
) -> None:
    n = await make_node(hmac_key=KEY)
    payload = body(boot=time.time_ns())
    header = signature(json.dumps(payload).encode())
    assert (await _post_from(n, "127.0.0.1", payload, **header))[0] == 200
    # The very same request (signature) is a replay, from wherever it comes.
    assert (await _post_from(n, "127.0.0.2", payload, **header))[0] == 401
    # Signed anew (a key holder resending an old (boot, seq)): stale by name alone.
    again = signature(json.dumps(payload).encode(), now=time.time() + 0.002)
    assert (await _post_from(n, "127.0.0.2", payload, **again))[0] == 409


async def test_a_failed_round_trip_does_not_advance_the_sender(make_node: MakeNode) -> None:
    n = await make_node()
    n.store.fail_saves = 1
    assert (await post(n, body(seq=5))).status == 503
    # The same request again is not a duplicate that moved state: it is served.
    assert (await post(n, body(seq=5))).status == 200
    assert (await post(n, body(seq=5))).status == 409
