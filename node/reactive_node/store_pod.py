"""The pod-annotation store: the only module of the node that talks to Kubernetes.

The node's RBAC allows get, patch and watch on its own pod and nothing else,
so this store reads its pod, patches one annotation with the pod's
resourceVersion as a precondition (a conflict means someone else wrote: the
store re-reads and the node decides again), and watches its own pod through a
`metadata.name` field selector to pick up `kubectl annotate` and the
operator-owned replica count. It never creates Events: an invalid annotation
is reported by the node in `/v1/state` and metrics, and the operator raises
the Event and condition.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from . import contract
from .store import Snapshot, StoreConflict, StoreError

log = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = 10.0
WATCH_SECONDS: Final = 300
_RECENT_WRITES: Final = 8


def _rv_int(rv: str | None) -> int | None:
    return int(rv) if rv is not None and rv.isdigit() else None


def _snapshot(pod: Any) -> Snapshot:
    annotations: dict[str, str] = (pod.metadata.annotations or {}) if pod.metadata else {}
    replicas_text = annotations.get(contract.REPLICAS_ANNOTATION)
    replicas = None
    if replicas_text is not None and replicas_text.strip().isdigit():
        replicas = int(replicas_text)
    return Snapshot(annotations.get(contract.STATE_ANNOTATION), replicas)


def _short(e: ApiException) -> str:
    # Response bodies can be long (and echo what was sent): keep logs short.
    return f"{e.status} {e.reason}: {str(e.body or '')[:200]}"


class PodStore:
    """State in `reactive-loop.dev/state` on the node's own pod."""

    def __init__(self, namespace: str, pod: str, *, api_client: Any | None = None) -> None:
        self.namespace = namespace
        self.pod = pod
        self._client = api_client
        self._owns_client = api_client is None
        self._rv: str | None = None
        self._own_rv: str | None = None
        self._own_texts: collections.deque[str] = collections.deque(maxlen=_RECENT_WRITES)

    def _api(self) -> Any:
        if self._client is None:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            self._client = client.ApiClient()
        return client.CoreV1Api(self._client)

    async def load(self) -> Snapshot:
        try:
            pod = await self._api().read_namespaced_pod(
                self.pod, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as e:
            raise StoreError(f"cannot read pod {self.namespace}/{self.pod}: {_short(e)}") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise StoreError(f"cannot reach the API server: {e}") from e
        self._rv = pod.metadata.resource_version
        return _snapshot(pod)

    async def save(self, text: str) -> None:
        body: dict[str, Any] = {"metadata": {"annotations": {contract.STATE_ANNOTATION: text}}}
        if self._rv is not None:
            body["metadata"]["resourceVersion"] = self._rv
        try:
            pod = await self._api().patch_namespaced_pod(
                self.pod,
                self.namespace,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as e:
            if e.status == 409:
                log.info("pod %s changed since it was read; re-reading", self.pod)
                raise StoreConflict(await self.load()) from e
            raise StoreError(f"cannot patch pod {self.namespace}/{self.pod}: {_short(e)}") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise StoreError(f"cannot reach the API server: {e}") from e
        self._rv = self._own_rv = pod.metadata.resource_version
        self._own_texts.append(text)

    def _is_stale_echo(self, rv: str | None, raw: str | None) -> bool:
        """An event older than our own last write must not undo it."""
        own, seen = _rv_int(self._own_rv), _rv_int(rv)
        if own is not None and seen is not None:
            return seen < own
        return raw is not None and raw in self._own_texts and raw != self._own_texts[-1]

    async def watch(self) -> AsyncIterator[Snapshot]:
        selector = f"metadata.name={self.pod}"
        while True:
            w = watch.Watch()
            try:
                async with w.stream(
                    self._api().list_namespaced_pod,
                    self.namespace,
                    field_selector=selector,
                    timeout_seconds=WATCH_SECONDS,
                ) as stream:
                    async for event in stream:
                        pod = event["object"]
                        if event["type"] not in ("ADDED", "MODIFIED") or not hasattr(
                            pod, "metadata"
                        ):
                            continue
                        if pod.metadata.name != self.pod:
                            continue
                        rv = pod.metadata.resource_version
                        snapshot = _snapshot(pod)
                        if self._is_stale_echo(rv, snapshot.raw):
                            continue
                        if _rv_int(rv) is None or (_rv_int(rv) or 0) >= (_rv_int(self._rv) or 0):
                            self._rv = rv
                        yield snapshot
            except ApiException as e:
                raise StoreError(f"cannot watch pod {self.pod}: {_short(e)}") from e
            finally:
                w.stop()
            await asyncio.sleep(0)

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
