"""`reactive-loop-operator`: leader election, health/metrics server, kopf.

Configuration comes from `RLO_*` environment variables (see `config`). The
health server answers /healthz (the process and its event loop live),
/readyz (standby waiting for the Lease, or kopf running and ready) and
/metrics (the operator's own registry).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from reactive_node.core import contract as c

from . import handlers
from .config import ConfigError, OperatorConfig, load
from .kube import Kube
from .leader import Elector
from .metrics import OperatorMetrics
from .nodes import NodeClient
from .reconcile import Deps

log = logging.getLogger("reactive_operator")


@dataclass
class Health:
    """What /readyz reports."""

    phase: str = "starting"  # starting | standby | leading | stopping
    kopf_ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.phase == "standby" or (self.phase == "leading" and self.kopf_ready.is_set())


HEALTH = web.AppKey("health", Health)


def create_app(registry: CollectorRegistry, health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH] = health

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "phase": request.app[HEALTH].phase})

    async def readyz(request: web.Request) -> web.Response:
        h = request.app[HEALTH]
        return web.json_response(
            {"ready": h.ready, "phase": h.phase}, status=200 if h.ready else 503
        )

    app.router.add_get(c.HEALTH_PATH, healthz)
    app.router.add_get(c.READY_PATH, readyz)
    app.router.add_get(c.METRICS_PATH, make_aiohttp_handler(registry))
    return app


KOPF_PREFIX = "kopf.reactive-loop.dev"
#: The one name every Event of the operator comes from (kopf's and our own).
EVENT_SOURCE = "reactive-loop-operator"


class SpecDigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled configuration as a digest of `spec`, never a copy of it.

    kopf compares the stored essence with the current one to call the update
    handler (`field="spec"`); the operator never reads the old spec (each pass
    decides from the current one), so a SHA-256 of the spec detects exactly the
    same changes. The annotation stays about 100 bytes whatever the spec's size,
    so a spec near the API's limits cannot make kopf's patch exceed the 256 KiB
    annotation budget; labels and annotations (kopf's default essence, which
    would copy them too) are left out: no handler watches them.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        spec = body.get("spec") or {}
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
        return {"spec": {"sha256": hashlib.sha256(text.encode()).hexdigest()}}


def kopf_settings(cfg: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Keep kopf's bookkeeping in annotations of the ReactiveLoop: the status
    # schema is structural, so kopf's default status fields would be pruned.
    # Both stay small: progress only while a handler retries, the diff base a digest.
    prefix = KOPF_PREFIX
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = SpecDigestDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = prefix + "/finalizer"
    settings.peering.standalone = True  # the Lease elects the one active replica
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = cfg.identity
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    return settings


class Acquirer(Protocol):
    async def acquire(self, stop: asyncio.Event) -> bool: ...


async def lead(elector: Acquirer | None, stop: asyncio.Event) -> bool:
    """Wait until this replica leads (at once without an elector). False if
    `stop` came first."""
    return elector is None or await elector.acquire(stop)


async def run(cfg: OperatorConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    registry = CollectorRegistry()
    # process_resident_memory_bytes, process_cpu_seconds_total: the operator's own cost.
    ProcessCollector(registry=registry)
    metrics = OperatorMetrics(registry)
    health = Health()
    runner = web.AppRunner(create_app(registry, health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.bind, cfg.port).start()
    log.info("health and metrics on %s:%d", cfg.bind, cfg.port)

    kube = await Kube.connect()
    try:
        async with aiohttp.ClientSession() as session:
            nodes = NodeClient(session, cfg.node_timeout_seconds)
            elector: Elector | None = None
            if cfg.leader_election:
                elector = Elector(
                    kube,
                    namespace=cfg.lease_namespace,
                    name=cfg.lease_name,
                    identity=cfg.identity,
                    duration=cfg.lease_seconds,
                    owner_uid=cfg.pod_uid,
                )
                health.phase = "standby"
            if not await lead(elector, stop):
                return 0
            health.phase = "leading"
            registry_k = kopf.OperatorRegistry()
            handlers.register(registry_k, Deps(cfg, kube, nodes, metrics))
            lost = False

            async def on_lost() -> None:
                nonlocal lost
                lost = True
                stop.set()

            keeper = asyncio.create_task(elector.keep(stop, on_lost)) if elector else None
            try:
                await kopf.operator(
                    registry=registry_k,
                    settings=kopf_settings(cfg),
                    standalone=True,
                    # kopf would derive it from the user name, which a bare
                    # non-root uid (no passwd entry) does not have.
                    identity=cfg.identity,  # type: ignore[arg-type]
                    clusterwide=not cfg.namespaces,
                    namespaces=list(cfg.namespaces),
                    stop_flag=stop,
                    ready_flag=health.kopf_ready,
                )
            finally:
                health.phase = "stopping"
                stop.set()
                if keeper is not None:
                    await keeper
                if elector is not None and not lost:
                    await elector.release()
            return 1 if lost else 0
    finally:
        await kube.close()
        await runner.cleanup()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("RLO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        # kopf logs every successful handler call at INFO: one line per pod event.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        cfg = load(os.environ)
    except ConfigError as e:
        print(f"reactive-loop-operator: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(run(cfg)))


if __name__ == "__main__":
    main()
