"""The token webhook (issue 11 §4): no redirects, a bounded call, a signed body,
allowed hosts checked at start. Against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from node.nodesupport import KEY, OTHER_KEY, MakeNode
from reactive_node.core import auth, contract
from reactive_node.runtime import server
from reactive_node.runtime.config import ConfigError, load_config, make_config
from reactive_node.runtime.webhook import TokenWebhook, webhook_request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Receiver:
    """A real HTTP server that records every request it gets."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.handler = handler
        self.arrived = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self.server = TestServer(app, host="127.0.0.1")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        if self.handler is not None:
            return await self.handler(request)
        return web.json_response({"ok": True})

    def url(self, path: str = "/fence") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(handler: Handler | None = None) -> Receiver:
        receiver = Receiver(handler)
        await receiver.server.start_server()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        await receiver.server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_call_is_answered_and_unsigned_without_a_key(
    receivers: Callable[..., Awaitable[Receiver]], session: aiohttp.ClientSession
) -> None:
    fence = await receivers()
    hook = TokenWebhook(fence.url(), "relay-1", session)
    assert await hook.call("acquire", [7, 1]) is None
    [(path, headers, body)] = fence.requests
    assert path == "/fence"
    assert json.loads(body) == {"node": "relay-1", "epoch": [7, 1], "event": "acquire"}
    assert headers["Content-Type"] == "application/json"
    assert contract.SIGNATURE_HEADER not in headers


async def test_an_error_answer_is_a_failed_call(
    receivers: Callable[..., Awaitable[Receiver]],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    fence = await receivers(broken)
    failure = await TokenWebhook(fence.url(), "relay-1", session).call("release", [7, 1])
    assert failure == "answered 500"
    assert "token webhook release [7, 1] failed: answered 500" in caplog.text


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed(
    status: int,
    receivers: Callable[..., Awaitable[Receiver]],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = await receivers()

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": target.url("/elsewhere")})

    fence = await receivers(redirect)
    failure = await TokenWebhook(fence.url(), "relay-1", session).call("acquire", [2, 0])
    assert failure is not None
    assert f"answered {status}" in failure
    assert "redirects are not followed" in caplog.text
    assert len(fence.requests) == 1
    assert target.requests == []  # the Location was never contacted


async def test_a_server_that_never_answers_is_given_up_after_the_bound(
    receivers: Callable[..., Awaitable[Receiver]],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    fence = await receivers(hang)
    hook = TokenWebhook(fence.url(), "relay-1", session)
    assert hook.timeout.total == contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS
    start = time.monotonic()
    failure = await hook.call("acquire", [1, 0])
    elapsed = time.monotonic() - start
    never.set()
    assert failure is not None
    assert "no answer within" in failure
    assert len(fence.requests) == 1  # it did arrive: the answer is what never came
    assert elapsed >= contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS - 0.1
    assert elapsed < contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS + 1.0


async def test_an_answer_that_trickles_forever_is_given_up_after_the_bound(
    receivers: Callable[..., Awaitable[Receiver]], session: aiohttp.ClientSession
) -> None:
    stop = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        while not stop.is_set():  # one byte every 50 ms, never the end
            await response.write(b" ")
            await asyncio.sleep(0.05)
        return response

    fence = await receivers(trickle)
    start = time.monotonic()
    failure = await TokenWebhook(fence.url(), "relay-1", session, timeout=0.5).call(
        "acquire", [1, 0]
    )
    elapsed = time.monotonic() - start
    stop.set()
    assert failure is not None
    assert "no answer within 0.5 s" in failure
    assert 0.4 <= elapsed < 1.5


async def test_a_node_signs_its_calls_with_the_loop_key(
    make_node: MakeNode, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    fence = await receivers()
    n = await make_node(
        behavior="token", hmac_key=KEY, token_webhook=fence.url("/hooks/./fence?x=1")
    )
    listener = n.node.token_listener
    assert listener is not None
    listener("acquire", [4, 1])
    await asyncio.wait_for(fence.arrived.wait(), timeout=5)
    [(path, headers, body)] = fence.requests
    assert path == "/hooks/fence"  # signed as received: no query, dot segments resolved
    assert json.loads(body) == {"node": "test-1", "epoch": [4, 1], "event": "acquire"}
    header = headers[contract.SIGNATURE_HEADER]

    def check(keyring: auth.Keyring, body: bytes = body, path: str = path) -> auth.Signature:
        verifier = auth.Verifier(contract.TOKEN_WEBHOOK_RECIPIENT, not_before=0)
        return verifier.check(keyring, header, body=body, now=time.time(), path=path)

    signature = check(auth.Keyring.of(KEY))
    assert signature.sender == "test-1"
    assert signature.recipient == contract.TOKEN_WEBHOOK_RECIPIENT
    with pytest.raises(auth.Unauthorized, match="unknown key id"):
        check(auth.Keyring.of(OTHER_KEY))
    with pytest.raises(auth.Unauthorized, match="bad signature"):
        check(auth.Keyring.of(KEY), body=body.replace(b"acquire", b"release"))
    with pytest.raises(auth.Unauthorized, match="bad signature"):
        check(auth.Keyring.of(KEY), path="/hooks/other")
    # The node's own round-trip verifier refuses it: it is addressed elsewhere.
    with pytest.raises(auth.Unauthorized, match="signed for token-webhook"):
        auth.Verifier("test-1", not_before=0).check(
            auth.Keyring.of(KEY), header, body=body, now=time.time(), path=path
        )


async def test_a_node_without_a_key_does_not_sign(
    make_node: MakeNode, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    fence = await receivers()
    n = await make_node(behavior="token", token_webhook=fence.url())
    assert n.node.token_listener is not None
    n.node.token_listener("release", [4, 1])
    await asyncio.wait_for(fence.arrived.wait(), timeout=5)
    [(_, headers, body)] = fence.requests
    assert contract.SIGNATURE_HEADER not in headers
    assert json.loads(body)["event"] == "release"


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)
# Segments are not "." or "..": a URL's dot segments are resolved before it is
# sent (and signed), so the receiver never sees them.
paths = st.lists(
    st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,11}", fullmatch=True), max_size=4
).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=200, deadline=None)
@given(
    node=names,
    event=st.sampled_from(["acquire", "release"]),
    epoch=st.lists(st.integers(0, contract.MAX_STATE_INT), min_size=2, max_size=2),
    path=paths,
    now=st.floats(1e9, 4e9),
    flip=st.integers(0, 10_000),
)
def test_every_signed_call_verifies_and_any_changed_byte_does_not(
    node: str, event: str, epoch: list[int], path: str, now: float, flip: int
) -> None:
    keyring = auth.Keyring.of(KEY)
    body, headers = webhook_request(
        f"https://fence.example:8443{path}?q=1",
        node=node,
        event=event,
        epoch=epoch,
        keyring=keyring,
        now=now,
    )
    assert json.loads(body) == {"node": node, "epoch": epoch, "event": event}
    header = headers[contract.SIGNATURE_HEADER]
    verifier = auth.Verifier(contract.TOKEN_WEBHOOK_RECIPIENT, not_before=0)
    assert verifier.check(keyring, header, body=body, now=now, path=path).sender == node
    i = flip % len(body)
    changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
    other = auth.Verifier(contract.TOKEN_WEBHOOK_RECIPIENT, not_before=0)
    with pytest.raises(auth.Unauthorized, match="bad signature"):
        other.check(keyring, header, body=changed, now=now, path=path)
    with pytest.raises(auth.Unauthorized, match="replayed"):
        verifier.check(keyring, header, body=body, now=now, path=path)


# ------------------------------------------------------------- allowed hosts

hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(host=hosts, allowed=st.lists(hosts, max_size=4), upper=st.booleans())
def test_a_webhook_host_is_accepted_exactly_when_allowed(
    host: str, allowed: list[str], upper: bool
) -> None:
    url = f"http://{host.upper() if upper else host}:9000/fence"
    raw: dict[str, Any] = {"token_webhook": url, "token_webhook_allowed_hosts": tuple(allowed)}
    if not allowed or host in allowed:
        assert make_config(raw).token_webhook == url
    else:
        with pytest.raises(ConfigError, match="is not one of the allowed hosts"):
            make_config(raw)


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://fence.ns.svc:9000/f", "fence.ns.svc", True),
        ("http://FENCE.ns.svc./f", " fence.ns.svc. ,other", True),
        ("http://10.0.0.1:9/f", "10.0.0.1", True),
        ("http://[::1]:9/f", "[::1]", True),
        ("http://[::1]:9/f", "::1", True),
        ("http://fence.ns.svc.evil.example/f", "fence.ns.svc", False),
        ("http://evil.example/f", "fence.ns.svc", False),
        ("http://fence.ns.svc@evil.example/f", "fence.ns.svc", False),
        ("http://10.0.0.2/f", "10.0.0.1", False),
    ],
)
def test_allowed_hosts_from_the_environment(url: str, allowed: str, ok: bool) -> None:
    env = {
        contract.ENV_TOKEN_WEBHOOK: url,
        contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS: allowed,
    }
    if ok:
        assert load_config([], env).token_webhook == url
    else:
        with pytest.raises(ConfigError, match=contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS):
            load_config([], env)


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        ("ftp://fence/f", "", "http\\(s\\) URL with a host"),
        ("http:///f", "", "http\\(s\\) URL with a host"),
        ("fence.ns.svc/f", "", "http\\(s\\) URL with a host"),
        ("http://fence:99999/f", "", "is not a URL"),
        ("http://fence/f", "http://fence/f", "not a host name"),
        ("http://fence/f", "fence:9000", "not a host name"),
        ("http://fence/f", "*.ns.svc", "not a host name"),
    ],
)
def test_bad_webhook_settings_are_refused(url: str, allowed: str, message: str) -> None:
    env = {contract.ENV_TOKEN_WEBHOOK: url, contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS: allowed}
    with pytest.raises(ConfigError, match=message):
        load_config([], env)


def test_a_node_with_a_disallowed_webhook_refuses_to_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--behavior",
        "token",
        "--token-webhook",
        "http://evil.example:8080/steal",
        "--token-webhook-allowed-hosts",
        "fence.ns.svc.cluster.local,10.0.0.1",
    ]
    assert server.main(argv) == 2
    err = capsys.readouterr().err
    assert "host 'evil.example' is not one of the allowed hosts" in err
    assert "fence.ns.svc.cluster.local, 10.0.0.1" in err


def test_the_node_process_exits_2_naming_the_host() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        contract.ENV_BEHAVIOR: "token",
        contract.ENV_TOKEN_WEBHOOK: "https://evil.example/steal",
        contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS: "fence.ns.svc.cluster.local",
        contract.ENV_PORT: "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "reactive_node.cli", "node"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "'evil.example' is not one of the allowed hosts" in done.stderr
