"""The node's HTTP side: an aiohttp application built by `create_app`.

No globals: the node, its configuration and its client session live on the
application under typed keys. One `ClientSession` is made in a cleanup
context, which also loads the state and runs the loop and the store watch as
background tasks, and stops them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from . import contract
from .backoff import Backoff
from .behaviors import Behavior, load_behavior
from .codec import encode
from .config import NodeConfig
from .metrics import NodeMetrics
from .node import Node, Outcome, Reply, Transport
from .store import StateStore, StoreError

log = logging.getLogger(__name__)

NODE_KEY = web.AppKey("node", Node)
CONFIG_KEY = web.AppKey("config", NodeConfig)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)

WEBHOOK_TIMEOUT = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(reply: Reply) -> web.Response:
    return web.Response(
        body=encode(reply.body), status=reply.status, content_type="application/json"
    )


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


async def roundtrip(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    length = request.content_length
    if length is not None and length > contract.MAX_BODY_BYTES:
        node.metrics.requests["too_large"].inc()
        return _json(
            Reply(413, {"error": "too_large", "detail": f"limit {contract.MAX_BODY_BYTES} bytes"})
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        node.metrics.requests["too_large"].inc()
        return _json(
            Reply(413, {"error": "too_large", "detail": f"limit {contract.MAX_BODY_BYTES} bytes"})
        )
    reply = await node.serve_roundtrip(body, request.headers.get(contract.SIGNATURE_HEADER))
    return _json(reply)


async def state(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].describe())


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


def _token_webhook(
    app: web.Application, tasks: set[asyncio.Task[None]]
) -> Callable[[str, list[int]], None]:
    """Best-effort POST {node, epoch, event} to the configured webhook."""
    config = app[CONFIG_KEY]
    url = config.token_webhook

    async def post(event: str, epoch: list[int]) -> None:
        payload = {"node": config.node, "epoch": epoch, "event": event}
        try:
            async with app[SESSION_KEY].post(
                url or "", json=payload, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
            ) as r:
                await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("node %s: token webhook %s failed: %s", config.node, event, e)

    def notify(event: str, epoch: list[int]) -> None:
        log.info("node %s: token %s epoch %s", config.node, event, epoch)
        if not url:
            return
        task = asyncio.get_running_loop().create_task(post(event, list(epoch)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return notify


async def _watch(node: Node) -> None:
    """Feed changes made by others (hand edits, the operator's replicas) to the node."""
    while True:
        try:
            async for snapshot in node.store.watch():
                node.adopt(snapshot)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("node %s: store watch failed; restarting it", node.config.node)
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


def _background(run_loop: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        node = app[NODE_KEY]
        config = app[CONFIG_KEY]
        tasks: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=10)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[SESSION_KEY] = session
            node.token_listener = _token_webhook(app, tasks)
            transport = aiohttp_transport(session, config.timeout) if run_loop else None
            try:
                await node.start()
            except StoreError as e:
                # Keep serving (readyz says 503) and keep trying in the background.
                log.warning("node %s: cannot load its state yet: %s", config.node, e)
            runners = [asyncio.create_task(_main(node, transport), name="node")]
            try:
                yield
            finally:
                for task in [*runners, *tasks]:
                    task.cancel()
                for task in [*runners, *tasks]:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
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
) -> web.Application:
    """The node application; `run_loop=False` serves only (for tests)."""
    behavior = behavior or load_behavior(config.behavior)
    node = Node(
        config,
        behavior,
        store,
        NodeMetrics(registry, config.loop, config.node, config.behavior, config.topology),
        clock=clock,
        rng=rng,
    )
    app = web.Application(middlewares=[json_errors], client_max_size=contract.MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(_background(run_loop))
    app.router.add_post(contract.ROUNDTRIP_PATH, roundtrip)
    app.router.add_get(contract.STATE_PATH, state)
    app.router.add_get(contract.METRICS_PATH, make_aiohttp_handler(registry))
    app.router.add_get(contract.HEALTH_PATH, healthz)
    app.router.add_get(contract.READY_PATH, readyz)
    return app
