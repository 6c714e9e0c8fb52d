"""The node's HTTP side: an aiohttp application built by `create_app`.

No globals: the node, its configuration and its client session live on the
application under typed keys. One `ClientSession` is made in a cleanup
context, which also loads the state and runs the loop and the store watch as
background tasks, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from ..core import contract
from ..core.backoff import Backoff
from ..core.behaviors import Behavior, load_behavior
from ..core.codec import encode
from .config import NodeConfig
from .decision import DecisionFile
from .faults import FaultSwitch, peer_urls, sender_of
from .keyfiles import KeyFiles
from .metrics import NodeMetrics
from .node import ERROR_DETAIL_CHARS, Node, Outcome, Reply, Transport
from .store import StateStore, StoreError
from .webhook import TokenWebhook, log_only

log = logging.getLogger(__name__)

NODE_KEY = web.AppKey("node", Node)
CONFIG_KEY = web.AppKey("config", NodeConfig)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
FAULTS_KEY = web.AppKey("faults", FaultSwitch)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(reply: Reply) -> web.Response:
    body = reply.raw if reply.raw is not None else encode(reply.body)
    return web.Response(body=body, status=reply.status, content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON; an unexpected failure is logged and answered 503, never 500."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"error": e.reason.lower().replace(" ", "_"), "detail": e.text or e.reason},
            status=e.status,
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return web.json_response(
            {"error": "unavailable", "detail": "internal error, see the node log"}, status=503
        )


def _refuse(node: Node, outcome: str, status: int, error: str, detail: str) -> web.Response:
    node.metrics.requests[outcome].inc()
    return _json(Reply(status, {"error": error, "detail": detail}))


async def roundtrip(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    length = request.content_length
    if length is not None and length > contract.MAX_BODY_BYTES:
        return _refuse(
            node, "too_large", 413, "too_large", f"limit {contract.MAX_BODY_BYTES} bytes"
        )
    if request.content_type != "application/json":
        return _refuse(
            node,
            "bad_request",
            415,
            "unsupported_media_type",
            "a round trip is Content-Type: application/json",
        )
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding != "identity":
        return _refuse(
            node,
            "bad_request",
            415,
            "unsupported_media_type",
            "a round trip body is not compressed (no Content-Encoding)",
        )
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(
            node, "too_large", 413, "too_large", f"limit {contract.MAX_BODY_BYTES} bytes"
        )
    except TimeoutError:
        return _refuse(node, "bad_request", 408, "timeout", "the body did not arrive in time")
    except aiohttp.ClientPayloadError:  # the body ended before its length, or chunking broke
        return _refuse(node, "bad_request", 400, "bad_request", "the body is incomplete")
    faults = request.app.get(FAULTS_KEY)
    if faults is not None and faults.blocked:  # local chaos runs only (docs/chaos.md)
        sender = sender_of(body)
        if sender is not None and faults.refuses_from(sender):
            return _refuse(node, "unavailable", 503, "partitioned", f"link from {sender} is cut")
    reply = await node.serve_roundtrip(
        body,
        request.headers.get(contract.SIGNATURE_HEADER),
        request.remote,
        method=request.method,
        path=request.path,
        protocol=request.headers.get(contract.PROTOCOL_HEADER),
    )
    return _json(reply)


async def state(request: web.Request) -> web.Response:
    document = encode(request.app[NODE_KEY].state_document())
    return web.Response(body=document, content_type="application/json")


def parse_since(text: str | None) -> tuple[int | None, float | None]:
    """`?since=` of `/v1/history` as (rev, None) for a whole number (a `next`
    of an earlier answer), (None, time) for unix seconds with a fraction
    (`1700000000.5`) or an RFC 3339 time with a zone; ValueError otherwise."""
    if text is None or text == "":
        return None, None
    text = text.strip()
    if len(text) > 64:
        raise ValueError("since is too long")
    if text.isascii() and text.isdigit():
        return int(text), None
    if text.isascii() and text.replace(".", "", 1).isdigit():
        return None, float(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since {text[:64]!r} is neither a whole number (a history rev) nor a time"
            " (unix seconds with a fraction, or RFC 3339 with a zone)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"since {text[:64]!r} has no time zone (add Z or +00:00)")
    return None, when.timestamp()


async def history(request: web.Request) -> web.Response:
    """`GET /v1/history?since=`: the node's decisions (docs/node.md, "Decision history")."""
    node = request.app[NODE_KEY]
    try:
        since, since_time = parse_since(request.query.get("since"))
    except ValueError as e:
        return _json(Reply(400, {"error": "bad_request", "detail": str(e)[:ERROR_DETAIL_CHARS]}))
    return _json(Reply(200, node.history_document(since, since_time)))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[NODE_KEY].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


def aiohttp_transport(session: aiohttp.ClientSession, timeout: float) -> Transport:
    """A `Transport` over one shared session; maps every failure to a wait reason."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        try:
            async with session.post(url, data=body, headers=headers, timeout=client_timeout) as r:
                data = await r.content.read(contract.MAX_BODY_BYTES + 1)
                if len(data) > contract.MAX_BODY_BYTES:
                    return Outcome(failure="rejected")
                return Outcome(status=r.status, body=data)
        except TimeoutError:
            return Outcome(failure="timeout")
        except aiohttp.ClientConnectorDNSError:
            return Outcome(failure="unreachable")
        except aiohttp.ClientConnectorError as e:
            refused = isinstance(e.os_error, ConnectionRefusedError)
            return Outcome(failure="refused" if refused else "unreachable")
        except (aiohttp.ClientError, OSError, socket.gaierror):
            return Outcome(failure="unreachable")

    return send


async def _watch(node: Node) -> None:
    """Feed changes made by others (hand edits, the operator's annotations) to the node."""
    while True:
        try:
            async for snapshot in node.store.watch():
                node.adopt(snapshot)
                await node.take_injection(snapshot)
        except asyncio.CancelledError:
            raise
        except StoreError as e:  # an injection not persisted: the new watch reads it again
            log.warning("node %s: %s; watching again", node.config.node, e)
        except Exception:
            log.exception("node %s: store watch failed; restarting it", node.config.node)
        await asyncio.sleep(node.config.interval)


async def _watch_keys(node: Node) -> None:
    """Re-read the key files once per interval (the kubelet updates a mounted Secret)."""
    while True:
        await asyncio.sleep(node.config.interval)
        try:
            node.refresh_keys()
        except Exception:  # never stop watching
            log.exception("node %s: reading the key files failed", node.config.node)


async def _watch_faults(node: Node, faults: FaultSwitch) -> None:
    """Re-read local mode's fault switch once per interval (docs/chaos.md)."""
    while True:
        try:
            faults.refresh()
        except Exception:  # never stop watching
            log.exception("node %s: reading the faults file failed", node.config.node)
        await asyncio.sleep(node.config.interval)


async def _main(node: Node, transport: Transport | None) -> None:
    """Load the state (retrying), then watch the store and run the loop."""
    backoff = Backoff(node.config.interval, node.config.max_backoff)
    while not node.ready:
        await asyncio.sleep(backoff.next_delay())
        try:
            await node.start()
        except StoreError as e:
            log.warning("node %s: cannot load its state yet: %s", node.config.node, e)
    watcher = asyncio.create_task(_watch(node), name="store-watch")
    try:
        if transport is not None:
            await node.run(transport)
        else:
            await watcher
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


async def _leave(node: Node, transport: Transport) -> None:
    """The last round trip of a stopping node (an acting holder hands the token
    on), bounded by the round-trip timeout and a second more."""
    try:
        await asyncio.wait_for(node.leave(transport), node.config.timeout + 1.0)
    except Exception as e:  # TimeoutError, a store that fails: the process ends anyway
        log.warning("node %s: no hand-on at shutdown: %s", node.config.node, e or type(e).__name__)


def _background(run_loop: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        node = app[NODE_KEY]
        config = app[CONFIG_KEY]
        # A connection per round trip (force_close): most NetworkPolicy
        # implementations judge new connections only, so a kept-alive one would
        # outlive a cut (`kubectl rloop chaos --partition`, a policy change).
        connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=10, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[SESSION_KEY] = session
            webhook = None
            if config.token_webhook:
                webhook = TokenWebhook(
                    config.token_webhook,
                    config.node,
                    session,
                    keyring=lambda: None if node.keys is None else node.keys.current,
                )
                node.token_listener = webhook.notify
            else:
                node.token_listener = log_only(config.node)
            transport = aiohttp_transport(session, config.timeout) if run_loop else None
            faults = app.get(FAULTS_KEY)
            if transport is not None and faults is not None:
                transport = faults.guard(transport, peer_urls(config.peers, config.node_name))
            try:
                await node.start()
            except StoreError as e:
                # Keep serving (readyz says 503) and keep trying in the background.
                log.warning("node %s: cannot load its state yet: %s", config.node, e)
            runners = [asyncio.create_task(_main(node, transport), name="node")]
            if node.keys is not None:
                runners.append(asyncio.create_task(_watch_keys(node), name="key-files"))
            if faults is not None:
                runners.append(asyncio.create_task(_watch_faults(node, faults), name="faults"))
            try:
                yield
            finally:
                for task in runners:
                    task.cancel()
                for task in runners:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if transport is not None:
                    await _leave(node, transport)
                if webhook is not None:
                    # The release the hand-on fired, and any call in flight, get
                    # their timeout to reach the receiver before the process ends.
                    await webhook.close(grace=webhook.timeout.total or 0.0)
                await node.store.close()

    return ctx


def create_app(
    config: NodeConfig,
    store: StateStore,
    registry: CollectorRegistry,
    *,
    behavior: Behavior | None = None,
    run_loop: bool = True,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    body_timeout: float = contract.BODY_TIMEOUT_SECONDS,
) -> web.Application:
    """The node application; `run_loop=False` serves only (for tests). Serve it
    with `NodeRunner`, which answers aiohttp's own errors in JSON too.

    With `config.hmac_key_file` the keys are read here: `auth.BadKey` (a
    ValueError naming the file) if they cannot be used."""
    behavior = behavior or load_behavior(config.behavior)
    keys = None
    if config.hmac_key_file is not None:
        keys = KeyFiles(config.hmac_key_file, config.hmac_accepted_file)
    decision = None
    if config.decision_file is not None:
        decision = DecisionFile(
            config.decision_file,
            loop=config.loop,
            node=config.node,
            behavior=behavior.name,
            clock=clock,
        )
    node = Node(
        config,
        behavior,
        store,
        NodeMetrics(registry, config.loop, config.node, config.behavior, config.topology),
        clock=clock,
        rng=rng,
        keys=keys,
        decision=decision,
    )
    app = web.Application(middlewares=[json_errors], client_max_size=contract.MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app[CONFIG_KEY] = config
    app[BODY_TIMEOUT_KEY] = body_timeout
    if config.faults_file is not None:
        app[FAULTS_KEY] = FaultSwitch(config.faults_file, config.node)
    app.cleanup_ctx.append(_background(run_loop))
    app.router.add_post(contract.ROUNDTRIP_PATH, roundtrip)
    app.router.add_get(contract.STATE_PATH, state)
    app.router.add_get(contract.HISTORY_PATH, history)
    app.router.add_get(contract.METRICS_PATH, make_aiohttp_handler(registry))
    app.router.add_get(contract.HEALTH_PATH, healthz)
    app.router.add_get(contract.READY_PATH, readyz)
    return app


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers (a request it
    cannot parse: bad bytes in a header, an unknown content coding, a line too
    long) in the node's JSON shape, logged as one line instead of a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun
            raise ConnectionError("response already started; closing the connection")
        if status >= 500:
            log.error("unexpected error serving a request", exc_info=exc)
            status, error, detail = 503, "unavailable", "internal error, see the node log"
        else:
            error = "bad_request"
            detail = str(message or (exc and str(exc)) or "bad request")
            log.info("refused a request it could not parse: %s", detail.splitlines()[0][:200])
        response = web.Response(
            status=status,
            body=encode({"error": error, "detail": detail[:ERROR_DETAIL_CHARS]}),
            content_type="application/json",
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class NodeRunner(web.AppRunner):
    """The runner that serves a node app: aiohttp's own errors are JSON, and a
    request's headers must arrive within `header_timeout` seconds (also how long
    an idle keep-alive connection stays open), and bodies are not decompressed."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float = contract.HEADER_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        # No decompression: a round trip is never compressed (`415`), and a broken
        # compressed body must not fail inside aiohttp's parser.
        super().__init__(app, keepalive_timeout=header_timeout, auto_decompress=False, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no parameter for the handler class; the subclass only adds
        # `__call__`, so the server it made is turned into one (same state).
        server.__class__ = _JsonErrorServer
        return server
