"""The pod-annotation store: the node's state in an annotation of its own pod.

The node's RBAC allows get, patch and watch on its own pod and nothing else,
so this store reads its pod, patches one annotation with the pod's
resourceVersion as a precondition (a conflict means someone else wrote: the
store re-reads and the node decides again), and watches its own pod through a
`metadata.name` field selector to pick up `kubectl annotate` and the
operator-owned annotations: the replica count, the suspended flag and the
injected target (`reactive-loop.dev/inject`, handed on as text; the node
validates it). The watch is already open for those, so an injection costs the
API server no request of its own. It never creates Events: an invalid
annotation is reported by the node in `/v1/state` and metrics, and the
operator raises the Event and condition.

It speaks to the API server through `KubeClient` (`kube.py`), the only module
of the node that talks to Kubernetes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from ..core import contract
from ..core.backoff import Backoff
from .kube import (
    MERGE_PATCH,
    KubeClient,
    KubeConfigError,
    KubeConflict,
    KubeGone,
    KubeStatusError,
    KubeUnreachable,
    status_error,
)
from .store import Snapshot, StoreConflict, parse_replicas

log = logging.getLogger(__name__)

WATCH_SECONDS: Final = 300
"""How long the API server keeps one watch open (`timeoutSeconds`)."""
WATCH_BACKOFF: Final = (0.5, 30.0)
"""Base and cap of the delay between failed watch attempts, in seconds."""
_RECENT_WRITES: Final = 8


def _rv_int(rv: str | None) -> int | None:
    return int(rv) if rv is not None and rv.isdigit() else None


def _metadata(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _snapshot(pod: Mapping[str, Any]) -> Snapshot:
    annotations = _metadata(pod).get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    replicas, replicas_error = parse_replicas(annotations.get(contract.REPLICAS_ANNOTATION))
    raw = annotations.get(contract.STATE_ANNOTATION)
    error = None
    if raw is not None and not isinstance(raw, str):
        raw, error = None, f"annotation {contract.STATE_ANNOTATION} is not a string"
    suspended = annotations.get(contract.SUSPENDED_ANNOTATION) == "true"
    inject = annotations.get(contract.INJECT_ANNOTATION)
    return Snapshot(
        raw,
        replicas,
        error=error,
        replicas_error=replicas_error,
        suspended=suspended,
        # The API server keeps only strings; anything else is no injection.
        inject=inject if isinstance(inject, str) else None,
    )


class PodStore:
    """State in `reactive-loop.dev/state` on the node's own pod."""

    def __init__(self, namespace: str, pod: str, *, api: KubeClient | None = None) -> None:
        self.namespace = namespace
        self.pod = pod
        self._api_client = api
        self._owns_client = api is None
        self._rv: str | None = None
        self._own_rv: str | None = None
        self._own_texts: collections.deque[str] = collections.deque(maxlen=_RECENT_WRITES)

    @property
    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def _api(self) -> KubeClient:
        if self._api_client is None:
            self._api_client = KubeClient.in_cluster()
        return self._api_client

    async def _read(self) -> dict[str, Any]:
        what = f"cannot read pod {self.namespace}/{self.pod}"
        return await self._api().request(what, "GET", f"{self._pods}/{self.pod}")

    async def load(self) -> Snapshot:
        pod = await self._read()
        self._rv = _metadata(pod).get("resourceVersion")
        return _snapshot(pod)

    async def save(self, text: str) -> None:
        metadata: dict[str, Any] = {"annotations": {contract.STATE_ANNOTATION: text}}
        if self._rv is not None:
            metadata["resourceVersion"] = self._rv
        what = f"cannot patch pod {self.namespace}/{self.pod}"
        try:
            pod = await self._api().request(
                what,
                "PATCH",
                f"{self._pods}/{self.pod}",
                body={"metadata": metadata},
                content_type=MERGE_PATCH,
            )
        except KubeConflict as e:
            log.info("pod %s changed since it was read; re-reading", self.pod)
            raise StoreConflict(await self.load()) from e
        self._rv = self._own_rv = _metadata(pod).get("resourceVersion")
        self._own_texts.append(text)

    def _is_stale_echo(self, rv: str | None, raw: str | None) -> bool:
        """An event older than our own last write must not undo it."""
        own, seen = _rv_int(self._own_rv), _rv_int(rv)
        if own is not None and seen is not None:
            return seen < own
        return raw is not None and raw in self._own_texts and raw != self._own_texts[-1]

    def _accept(self, pod: Mapping[str, Any]) -> Snapshot | None:
        """The snapshot of a pod seen by the watch, or None if it is not news."""
        metadata = _metadata(pod)
        if metadata.get("name") != self.pod:
            return None
        rv = metadata.get("resourceVersion")
        snapshot = _snapshot(pod)
        if self._is_stale_echo(rv, snapshot.raw):
            return None
        if _rv_int(rv) is None or (_rv_int(rv) or 0) >= (_rv_int(self._rv) or 0):
            self._rv = rv
        return snapshot

    async def watch(self) -> AsyncIterator[Snapshot]:
        """Read the pod, then watch it from that resourceVersion, resuming from
        the last event or bookmark; 410 Gone re-reads; failures back off."""
        backoff = Backoff(*WATCH_BACKOFF)
        resume: str | None = None
        what = f"cannot watch pod {self.namespace}/{self.pod}"
        gone = 0
        while True:
            started, seen = time.monotonic(), False
            try:
                if resume is None:
                    pod = await self._read()
                    resume = _metadata(pod).get("resourceVersion")
                    snapshot = self._accept(pod)
                    if snapshot is not None:
                        yield snapshot
                params = {
                    "watch": "true",
                    "fieldSelector": f"metadata.name={self.pod}",
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                if resume is not None:
                    params["resourceVersion"] = resume
                events = self._api().stream(what, self._pods, params, WATCH_SECONDS)
                async with contextlib.aclosing(events):
                    async for event in events:
                        seen = True
                        gone = 0
                        backoff.reset()
                        kind, obj = event.get("type"), event.get("object")
                        if not isinstance(obj, dict):
                            continue
                        if kind == "ERROR":
                            code = obj.get("code")
                            raise status_error(
                                what,
                                code if isinstance(code, int) else 500,
                                str(obj.get("reason", "")),
                                str(obj.get("message", "")),
                            )
                        rv = _metadata(obj).get("resourceVersion")
                        if isinstance(rv, str) and rv:
                            resume = rv
                        if kind in ("ADDED", "MODIFIED"):
                            snapshot = self._accept(obj)
                            if snapshot is not None:
                                yield snapshot
                if not seen and time.monotonic() - started < 1.0:
                    # Ended at once with nothing said: do not spin on it.
                    await asyncio.sleep(backoff.next_delay())
            except KubeGone as e:
                log.info("pod %s: watch expired (%s); re-reading", self.pod, e.reason or e.status)
                resume = None
                gone += 1
                if gone > 1:  # expired again straight after a fresh read
                    await asyncio.sleep(backoff.next_delay())
            except (KubeStatusError, KubeUnreachable, KubeConfigError) as e:
                delay = backoff.next_delay()
                log.warning("pod %s: %s; watching again in %.1f s", self.pod, e, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._owns_client and self._api_client is not None:
            await self._api_client.close()
            self._api_client = None
