"""The one module that talks to the Kubernetes API (kubernetes_asyncio).

Everything above it deals in plain manifests (dicts). API failures become a
few named exceptions, with response bodies truncated so nothing sensitive
lands in logs or events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException
from reactive_node.core import contract as c

Manifest = dict[str, Any]
_BODY_LIMIT = 300


class KubeError(Exception):
    """An API call failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: already exists, or a resourceVersion conflict."""


def _translate(e: ApiException) -> KubeError:
    body = e.body or e.reason or ""
    return _error(int(e.status or 0), body if isinstance(body, bytes) else str(body).encode())


#: The longest any one API request may take. Without it a request on a
#: connection that died silently (no RST, no keepalive) waits forever; the
#: cancelled request closes that connection and the next one opens a new one.
REQUEST_TIMEOUT_SECONDS = 30.0


async def _call(coro: Awaitable[Any]) -> Any:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
            return await coro
    except ApiException as e:
        raise _translate(e) from e
    except TimeoutError as e:
        raise KubeError(
            0, f"the API server did not answer within {REQUEST_TIMEOUT_SECONDS:g}s"
        ) from e


def _error(status: int, raw: bytes) -> KubeError:
    text = raw.decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        text = str(json.loads(text).get("message", text))
    text = text[:_BODY_LIMIT]
    if status == 404:
        return NotFound(status, text)
    if status == 409:
        return Conflict(status, text)
    return KubeError(status, text)


async def _json(coro: Awaitable[Any]) -> Any:
    """Await a `_preload_content=False` call; raise on a non-2xx status, else decode JSON.

    Without preloading, kubernetes_asyncio hands back the raw response and
    does not check its status, so this does.
    """
    resp = await _call(coro)
    try:
        raw = await resp.read()
        if not 200 <= resp.status <= 299:
            raise _error(int(resp.status), raw)
        return json.loads(raw) if raw else None
    finally:
        resp.release()


async def load_config() -> None:
    """In-cluster credentials if present, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    renewed: datetime | None
    duration_seconds: int
    resource_version: str | None
    transitions: int


class Kube:
    """Typed verbs on the objects the operator manages."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(cls) -> Kube:
        await load_config()
        return cls(client.ApiClient())

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- create / delete ---------------------------------------------------
    def _creator(self, kind: str) -> Callable[..., Awaitable[Any]]:
        table: dict[str, Callable[..., Awaitable[Any]]] = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Secret": self.core.create_namespaced_secret,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
            "PodDisruptionBudget": self.policy.create_namespaced_pod_disruption_budget,
        }
        return table[kind]

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object; False if it already existed (never overwritten)."""
        ns = manifest["metadata"]["namespace"]
        try:
            await _json(self._creator(manifest["kind"])(ns, dict(manifest), _preload_content=False))
        except Conflict:
            return False
        return True

    async def create_secret(self, manifest: Mapping[str, Any]) -> str | None:
        """Create a Secret and return the uid the API server gave it; None if one
        of that name exists. Nothing is read: the operator holds `create` only
        on Secrets (docs/operator.md, "Cluster-wide mode and Secrets"), so an
        existing one is neither read nor changed, and the uid of the operator's
        own create is how it recognises its Secret later."""
        ns = manifest["metadata"]["namespace"]
        try:
            created = await _json(
                self.core.create_namespaced_secret(ns, dict(manifest), _preload_content=False)  # type: ignore[arg-type]
            )
        except Conflict:
            return None
        uid = (created or {}).get("metadata", {}).get("uid")
        if not isinstance(uid, str) or not uid:
            raise KubeError(0, "the API server created the Secret but returned no uid")
        return uid

    async def _delete(self, fn: Callable[..., Awaitable[Any]], ns: str, name: str) -> bool:
        try:
            await _json(fn(name, ns, _preload_content=False))
        except NotFound:
            return False
        return True

    async def delete_pod(self, ns: str, name: str) -> bool:
        return await self._delete(self.core.delete_namespaced_pod, ns, name)

    async def delete_pdb(self, ns: str, name: str) -> bool:
        return await self._delete(self.policy.delete_namespaced_pod_disruption_budget, ns, name)

    async def delete_node_rbac(self, ns: str, name: str) -> None:
        """RoleBinding, Role and ServiceAccount of one node (all named after its pod)."""
        await self._delete(self.rbac.delete_namespaced_role_binding, ns, name)
        await self._delete(self.rbac.delete_namespaced_role, ns, name)
        await self._delete(self.core.delete_namespaced_service_account, ns, name)

    # --- reads -------------------------------------------------------------
    async def service_account_names(self, ns: str, label_selector: str) -> list[str]:
        data = await _json(
            self.core.list_namespaced_service_account(
                ns, label_selector=label_selector, _preload_content=False
            )
        )
        return [str(item["metadata"]["name"]) for item in data.get("items", [])]

    async def read_pdb(self, ns: str, name: str) -> Manifest | None:
        """The PodDisruptionBudget as the API returns it, or None."""
        try:
            data = await _json(
                self.policy.read_namespaced_pod_disruption_budget(name, ns, _preload_content=False)
            )
        except NotFound:
            return None
        return dict(data)

    async def patch_pdb(self, ns: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch a PodDisruptionBudget."""
        await _json(
            self.policy.patch_namespaced_pod_disruption_budget(
                name,
                ns,
                dict(patch),
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                _preload_content=False,
            )
        )

    async def read_network_policy(self, ns: str, name: str) -> Manifest | None:
        """The NetworkPolicy as the API returns it, or None."""
        try:
            data = await _json(
                self.net.read_namespaced_network_policy(name, ns, _preload_content=False)
            )
        except NotFound:
            return None
        return dict(data)

    async def patch_network_policy(self, ns: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch a NetworkPolicy (a key set to None is removed)."""
        await _json(
            self.net.patch_namespaced_network_policy(
                name,
                ns,
                dict(patch),
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                _preload_content=False,
            )
        )

    async def get_loop(self, ns: str, name: str) -> Manifest | None:
        try:
            obj = await _call(
                self.custom.get_namespaced_custom_object(
                    c.API_GROUP, c.API_VERSION, ns, c.PLURAL, name
                )
            )
        except NotFound:
            return None
        return dict(obj)

    # --- patches -----------------------------------------------------------
    async def annotate_pod(self, ns: str, name: str, annotations: Mapping[str, str]) -> None:
        """Patch operator-owned annotations (never the node's state key)."""
        assert c.STATE_ANNOTATION not in annotations
        await _json(
            self.core.patch_namespaced_pod(
                name,
                ns,
                {"metadata": {"annotations": dict(annotations)}},
                _preload_content=False,
            )
        )

    async def write_injection(self, ns: str, pod: str, text: str) -> None:
        """Set the operator-owned inject annotation of one node pod to `text`
        (`builders.injection_text`): the node takes the target from its pod watch.
        A merge patch of that one key; a missing pod raises NotFound."""
        await _json(
            self.core.patch_namespaced_pod(
                pod,
                ns,
                {"metadata": {"annotations": {c.INJECT_ANNOTATION: text}}},
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                _preload_content=False,
            )
        )

    async def patch_loop_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource of a ReactiveLoop (None deletes a field)."""
        await _json(
            self.custom.patch_namespaced_custom_object_status(
                c.API_GROUP,
                c.API_VERSION,
                ns,
                c.PLURAL,
                name,
                {"status": dict(status)},
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                _preload_content=False,
            )
        )

    async def post_event(
        self, obj: Mapping[str, Any], *, kind: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about `obj` (used where kopf's event queue is not available)."""
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace"))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "reactive-loop-operator"},
            "reportingComponent": "reactive-loop-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await _json(self.core.create_namespaced_event(ns, body, _preload_content=False))  # type: ignore[arg-type]

    # --- leases --------------------------------------------------------------
    async def read_lease(self, ns: str, name: str) -> LeaseRecord | None:
        try:
            data = await _json(self.coord.read_namespaced_lease(name, ns, _preload_content=False))
        except NotFound:
            return None
        spec = data.get("spec") or {}
        renewed = spec.get("renewTime")
        return LeaseRecord(
            holder=spec.get("holderIdentity"),
            renewed=_parse_time(renewed) if renewed else None,
            duration_seconds=int(spec.get("leaseDurationSeconds") or 15),
            resource_version=data["metadata"].get("resourceVersion"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    async def write_lease(
        self,
        ns: str,
        name: str,
        *,
        holder: str,
        duration_seconds: int,
        now: datetime,
        previous: LeaseRecord | None,
        owner_pod: tuple[str, str] | None = None,
    ) -> bool:
        """Create or take/renew the Lease; False if someone else wrote it first.

        With `owner_pod` (name, uid) the Lease is owned by that pod (the writer's
        own), so it is garbage-collected once the pod is gone."""
        transitions = 0 if previous is None else previous.transitions
        taking = previous is None or previous.holder != holder
        if previous is not None and taking:
            transitions += 1
        body = client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=ns,
                resource_version=None if previous is None else previous.resource_version,
                owner_references=None
                if owner_pod is None
                else [
                    client.V1OwnerReference(
                        api_version="v1", kind="Pod", name=owner_pod[0], uid=owner_pod[1]
                    )
                ],
            ),
            spec=client.V1LeaseSpec(
                holder_identity=holder,
                lease_duration_seconds=duration_seconds,
                renew_time=now.astimezone(UTC),
                acquire_time=now.astimezone(UTC) if taking else None,
                lease_transitions=transitions,
            ),
        )
        try:
            if previous is None:
                await _json(self.coord.create_namespaced_lease(ns, body, _preload_content=False))
            else:
                await _json(
                    self.coord.replace_namespaced_lease(name, ns, body, _preload_content=False)
                )
        except Conflict:
            return False
        return True


def _parse_time(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))
