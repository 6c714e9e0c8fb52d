"""kopf registration: which events reach which pass (`reconcile`, `resync`).

Handlers are registered on a registry passed in (`register`), never on kopf's
global one at import time. Per ReactiveLoop:

- create / resume / update (spec) → one pass (`reconcile.reconcile`), the
  shared children forced; its status changes go into kopf's patch;
- every `resync_seconds`, one background task (started on kopf's startup,
  stopped on its cleanup, so only on the replica that leads) → the same pass
  for every loop in a kopf index of ReactiveLoops (`resync.Resync`);
- pod events (an index and an event handler, never create/update handlers on
  pods, so kopf writes nothing on them) → the same pass at once when a node
  pod is deleted or fails.

Children carry owner references, so deleting a ReactiveLoop lets the garbage
collector remove them; a deleted loop is only forgotten. Nothing here makes
kopf add a finalizer (no timer, no daemon, no non-optional on.delete): a loop
deleted while no operator runs goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import kopf
from reactive_node.core import contract as c

from .kube import KubeError
from .memo import LoopKey
from .plan import PodView, pod_view
from .reconcile import Deps, reconcile
from .resync import Resync

PodIndex = kopf.Index[LoopKey, PodView] | None
LoopIndex = kopf.Index[LoopKey, dict[str, Any]] | None


def register(registry: kopf.OperatorRegistry, deps: Deps) -> None:
    """Register every handler of the operator on `registry`."""
    group, version, plural = c.API_GROUP, c.API_VERSION, c.PLURAL

    @kopf.on.login(id="login", registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return await kopf.login_via_async_client(**kwargs)

    @kopf.index(
        "pods",
        id="node_pods",
        labels={c.LOOP_LABEL: kopf.PRESENT, c.COMPONENT_LABEL: c.NODE_COMPONENT},
        registry=registry,
    )
    def node_pods(
        *,
        name: str,
        namespace: str | None,
        labels: kopf.Labels,
        annotations: kopf.Annotations,
        meta: kopf.Meta,
        status: kopf.Status,
        **_: Any,
    ) -> dict[LoopKey, PodView] | None:
        view = pod_view(name, labels, annotations, meta, status)
        if view is None or namespace is None:
            return None
        return {(namespace, labels[c.LOOP_LABEL]): view}

    @kopf.index(group, version, plural, id="loops", registry=registry)
    def loops(
        *, body: kopf.Body, name: str, namespace: str | None, **_: Any
    ) -> dict[LoopKey, dict[str, Any]]:
        # A snapshot: the background resync reads it while new events arrive.
        return {(namespace or "", name): copy.deepcopy(dict(body))}

    @kopf.on.resume(group, version, plural, id="resume", registry=registry)
    @kopf.on.create(group, version, plural, id="create", registry=registry)
    @kopf.on.update(group, version, plural, field="spec", id="update", registry=registry)
    async def apply(
        *, body: kopf.Body, patch: kopf.Patch, node_pods: PodIndex = None, **_: Any
    ) -> None:
        assert node_pods is not None
        try:
            changes, _events = await reconcile(deps, body, node_pods, force_ensure=True)
        except KubeError as e:
            raise kopf.TemporaryError(f"Kubernetes API: {e}", delay=2) from e
        for k, v in changes.items():
            patch.status[k] = v

    resync_task: list[asyncio.Task[None]] = []

    @kopf.on.startup(id="resync_start", registry=registry)
    async def resync_start(
        *, loops: LoopIndex = None, node_pods: PodIndex = None, **_: Any
    ) -> None:
        """Start the periodic resync: kopf runs only on the leading replica, so does this."""
        assert loops is not None
        assert node_pods is not None
        resync = Resync(deps, loops, node_pods)
        resync_task.append(asyncio.create_task(resync.forever(), name="reactive-loop resync"))

    @kopf.on.cleanup(id="resync_stop", registry=registry)
    async def resync_stop(**_: Any) -> None:
        while resync_task:
            task = resync_task.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.event(group, version, plural, id="loop_event", registry=registry)
    async def loop_event(*, type: str, name: str, namespace: str | None, **_: Any) -> None:
        """Forget a deleted loop (its children go by garbage collection: no finalizer)."""
        if type == "DELETED":
            deps.forget((namespace or "", name))

    @kopf.on.event(
        "pods",
        id="pod_event",
        labels={c.LOOP_LABEL: kopf.PRESENT, c.COMPONENT_LABEL: c.NODE_COMPONENT},
        registry=registry,
    )
    async def pod_event(
        *,
        type: str,
        namespace: str | None,
        labels: kopf.Labels,
        status: kopf.Status,
        loops: LoopIndex = None,
        node_pods: PodIndex = None,
        **_: Any,
    ) -> None:
        """The loop's pass at once when a node pod goes away or fails (the
        resync would, later): the same decision, applied and written."""
        if type != "DELETED" and status.get("phase") not in ("Failed", "Succeeded"):
            return
        if namespace is None or node_pods is None or loops is None:
            return
        key = (namespace, labels[c.LOOP_LABEL])
        loop = await deps.kube.get_loop(*key)  # the newest status, not the index's
        if loop is None:
            return
        await Resync(deps, loops, node_pods).one(key, loop)
