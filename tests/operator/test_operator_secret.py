"""The HMAC Secret without Kubernetes: the operator only creates Secrets and
never reads one (issue 11 §4). It owns `<loop>-hmac` when its own create made
it (the uid is recorded in `status.hmacSecretUID` before any node pod is
created) or an older operator had checked it; any other Secret of that name is
neither used nor changed, and no node pod is created."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument
from reactive_operator import builders
from reactive_operator.builders import Owner
from reactive_operator.config import load
from reactive_operator.kube import KubeError
from reactive_operator.memo import LoopKey
from reactive_operator.metrics import OperatorMetrics
from reactive_operator.reconcile import Deps
from reactive_operator.resync import Resync

UID_FIELD = builders.HMAC_SECRET_UID_FIELD


class SecretKube:
    """The Kubernetes verbs a pass uses, with `create` only on Secrets (no read
    or patch of a Secret exists here: calling one fails the test). `secrets`
    holds what exists before the pass; status patches are merged into the
    loop bodies, as the API server would; `log` keeps the order of writes."""

    def __init__(
        self, bodies: Mapping[LoopKey, dict[str, Any]], secrets: dict[str, Any] | None = None
    ) -> None:
        self.bodies = bodies
        self.secrets: dict[str, dict[str, Any]] = secrets or {}
        self.log: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.fail_status_writes = 0
        self._uids = itertools.count(1)

    async def create_secret(self, manifest: Mapping[str, Any]) -> str | None:
        name = manifest["metadata"]["name"]
        if name in self.secrets:
            return None
        uid = f"secret-uid-{next(self._uids)}"
        self.secrets[name] = {**manifest, "metadata": {**manifest["metadata"], "uid": uid}}
        self.log.append(f"Secret/{name}")
        return uid

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        assert manifest["kind"] != "Secret"
        self.log.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        return True

    async def read_network_policy(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def read_pdb(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def service_account_names(self, ns: str, label_selector: str) -> list[str]:
        return []

    async def patch_loop_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        if self.fail_status_writes:
            self.fail_status_writes -= 1
            raise KubeError(500, "the API server is busy")
        body = self.bodies[(ns, name)]
        merged = {**(body.get("status") or {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.log.append("status:" + ",".join(sorted(status)))

    async def post_event(
        self, obj: Mapping[str, Any], *, kind: str, reason: str, message: str
    ) -> None:
        self.events.append((reason, message))


class NoNodes:
    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | None]:
        return {}


def signed_loop(name: str = "demo", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"replicas": 2, "target": {"v": 1}, "auth": {"hmac": True}},
        "status": status,
    }


def setup(body: dict[str, Any], secrets: dict[str, Any] | None = None) -> tuple[SecretKube, Resync]:
    key = ("ns", body["metadata"]["name"])
    kube = SecretKube({key: body}, secrets)
    deps = Deps(load({}), kube, NoNodes(), OperatorMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    return kube, Resync(deps, {key: [body]}, {})


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(meta["name"], meta["namespace"], meta["uid"])


def condition(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in body["status"]["conditions"] if x["type"] == kind)
    return found


async def test_a_new_loop_gets_its_secret_and_its_uid_is_recorded_before_any_pod() -> None:
    body = signed_loop()
    kube, resync = setup(body)
    await resync.all()
    secret = kube.secrets["demo-hmac"]
    assert builders.owns(owner_of(body), secret)
    assert len(base64.b64decode(secret["data"][c.HMAC_SECRET_PRIMARY])) == 64
    assert secret["data"][c.HMAC_SECRET_ACCEPTED] == ""
    assert body["status"][UID_FIELD] == secret["metadata"]["uid"]
    assert ("Created", "created HMAC Secret demo-hmac") in kube.events
    recorded = kube.log.index(f"status:{UID_FIELD}")
    assert kube.log.index("Secret/demo-hmac") < recorded < kube.log.index("Pod/demo-0")
    assert condition(body, "Degraded")["reason"] != "SecretNotOwned"
    # The next check finds the name taken and its creation recorded: still the loop's.
    body["metadata"]["generation"] = 2
    await resync.all()
    assert body["status"][UID_FIELD] == secret["metadata"]["uid"]
    assert condition(body, "Degraded")["reason"] != "SecretNotOwned"


async def test_a_secret_it_did_not_create_is_never_used_or_changed() -> None:
    body = signed_loop()
    foreign = builders.hmac_secret(Owner("demo", "ns", "uid-of-a-deleted-demo"), b"f" * 64)
    kube, resync = setup(body, {"demo-hmac": foreign})
    await resync.all()
    assert kube.secrets["demo-hmac"] == foreign
    assert not any(w.startswith("Pod/") for w in kube.log)
    assert UID_FIELD not in body["status"]
    degraded = condition(body, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SecretNotOwned")
    ready = condition(body, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotOwned")  # never Ready
    # The same problem is reported once, and checked again on every change.
    body["metadata"]["generation"] = 2
    await resync.all()
    assert [r for r, _ in kube.events].count("SecretNotOwned") == 1
    assert not any(w.startswith("Pod/") for w in kube.log)
    # Once the foreign Secret is gone, the operator makes its own and the pods.
    del kube.secrets["demo-hmac"]
    body["metadata"]["generation"] = 3
    await resync.all()
    assert builders.owns(owner_of(body), kube.secrets["demo-hmac"])
    assert body["status"][UID_FIELD] == kube.secrets["demo-hmac"]["metadata"]["uid"]
    assert "Pod/demo-0" in kube.log


async def test_a_recorded_creation_is_trusted_after_a_restart() -> None:
    body = signed_loop(**{UID_FIELD: "uid-of-its-secret"})
    existing = builders.hmac_secret(owner_of(body), b"o" * 64)
    kube, resync = setup(body, {"demo-hmac": existing})  # a new operator: nothing remembered
    await resync.all()
    assert kube.secrets["demo-hmac"] == existing
    assert body["status"][UID_FIELD] == "uid-of-its-secret"
    assert "Pod/demo-0" in kube.log


async def test_a_secret_an_older_operator_had_checked_is_adopted() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "AllNodesReady"}
    body = signed_loop(observedGeneration=1, conditions=[ready])
    existing = builders.hmac_secret(owner_of(body), b"o" * 64)
    kube, resync = setup(body, {"demo-hmac": existing})
    await resync.all()
    assert body["status"][UID_FIELD] == builders.HMAC_SECRET_ADOPTED
    assert "Pod/demo-0" in kube.log


async def test_a_failed_uid_write_is_remembered_and_written_again() -> None:
    body = signed_loop()
    kube, resync = setup(body)
    kube.fail_status_writes = 1  # the write right after the create
    await resync.all()
    uid = kube.secrets["demo-hmac"]["metadata"]["uid"]
    assert body["status"][UID_FIELD] == uid  # with the pass's status
    del body["status"][UID_FIELD]  # as if that write had been lost too
    body["metadata"]["generation"] = 2
    await resync.all()
    assert body["status"][UID_FIELD] == uid  # remembered, not taken for foreign
    assert condition(body, "Degraded")["reason"] != "SecretNotOwned"
