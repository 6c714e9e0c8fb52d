"""kmock's Kubernetes emulator, taught the two API server habits the pod store relies on.

kmock stores objects and streams watch events, but (by its own docs) treats
objects as plain JSON. The pod store needs what a real API server does:
`metadata.resourceVersion` bumped on every write and checked as a
precondition when a patch carries one (409 Conflict), and a watch filtered by
a `metadata.name` field selector. Lists with `watch=true` (any case) are
served as watches here. kmock ignores a watch's `resourceVersion` and starts
every watch with an ADDED event for the current object, which the store takes
as a repeat of what it read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock
from kmock._internal.k8s import KubernetesObjectConflictError

PODS = "v1/pods"


@attrs.define(kw_only=True)
class ResourceVersionEmulator(kmock.KubernetesEmulator):
    writes: int = 0
    _version: int = 100

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action == kmock.action.UPDATE and request.name:
            obj = self.objects[request.resource, request.namespace, request.name]
            current = obj.get("metadata", {}).get("resourceVersion")
            data = request.data if isinstance(request.data, dict) else {}
            wanted = data.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != current:
                raise KubernetesObjectConflictError()
            self._version += 1
            self.writes += 1
            data.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        return await super()._handle(request)

    async def _serve_list(self, request: Any) -> Any:
        if str(request.params.get("watch", "")).lower() == "true":
            return self._watch_by_name(request)
        return await super()._serve_list(request)

    async def _watch_by_name(self, request: Any) -> AsyncIterator[Any]:
        selector = str(request.params.get("fieldSelector", ""))
        name = selector.removeprefix("metadata.name=") if "metadata.name=" in selector else None
        async for event in self._serve_watch(request):
            named = (
                event.get("object", {}).get("metadata", {}).get("name")
                if isinstance(event, dict)
                else None
            )
            if name is not None and named is not None and named != name:
                continue
            yield event


def pod(namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": "1",
            "annotations": dict(annotations),
        },
    }
