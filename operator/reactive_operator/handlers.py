"""kopf handlers: wire the pure decisions to the API (`kube`) and the nodes (`nodes`).

Handlers are registered on a registry passed in (`register`), never on kopf's
global one at import time. Per ReactiveLoop:

- create / resume / update (spec) → `reconcile`: shared children, pods and
  RBAC per `plan`, node poll, target injection, status;
- every `resync_seconds`, one background task (started on kopf's startup,
  stopped on its cleanup, so only on the replica that leads) → the same for
  every loop in a kopf index of ReactiveLoops (healing and status polling),
  each loop isolated from the others' failures, a few at a time;
- pod events (an index and an event handler, never create/update handlers on
  pods, so kopf writes nothing on them) → immediate healing when a node pod
  is deleted or fails.

Children carry owner references, so deleting a ReactiveLoop lets the garbage
collector remove them; a deleted loop is only forgotten. Nothing here makes
kopf add a finalizer (no timer, no daemon, no non-optional on.delete): a loop
deleted while no operator runs goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from reactive_node import contract as c

from . import builders
from .builders import NodeDefaults, Owner
from .config import OperatorConfig
from .kube import Kube, KubeError, NotFound
from .metrics import OperatorMetrics
from .nodes import NodeClient
from .plan import Plan, PodView, plan
from .spec import LoopSpec, SpecError, check_name, parse_spec, target_digest
from .status import NodeReport, aggregate, parse_report, status_patch, without_counters

LoopKey = tuple[str, str]
PodIndex = kopf.Index[LoopKey, PodView] | None
LoopIndex = kopf.Index[LoopKey, dict[str, Any]] | None
INJECT_BACKOFF_MAX = 30.0
ENSURE_EVERY_SECONDS = 60.0
#: How often a status write is made when nothing but loop/wait counters changed.
COUNTERS_EVERY_SECONDS = 30.0
#: Nodes whose objects are created at the same time (API requests in flight).
CREATE_CONCURRENCY = 8
#: Loops resynced at the same time by the background resync.
RESYNC_CONCURRENCY = 8
log = logging.getLogger("reactive_operator")


@dataclass
class LoopMemo:
    """What the operator remembers about one loop between handler calls."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ensured_at: float = float("-inf")
    ensured_for: tuple[str, int] | None = None
    hmac_key: bytes | None = None
    inject_backoff: float = 1.0
    next_injection: float = 0.0
    last_spec_error: str | None = None
    rbac_clean_for: tuple[int, tuple[int, ...]] | None = None
    counters_written_at: float = float("-inf")
    reported_errors: set[str] = field(default_factory=set)


@dataclass
class Deps:
    """Everything the handlers use, made once in `main`."""

    cfg: OperatorConfig
    kube: Kube
    nodes: NodeClient
    metrics: OperatorMetrics
    memos: dict[LoopKey, LoopMemo] = field(default_factory=dict)

    @property
    def defaults(self) -> NodeDefaults:
        return NodeDefaults(self.cfg.node_image, self.cfg.node_image_pull_policy)

    def memo(self, key: LoopKey) -> LoopMemo:
        memo = self.memos.get(key)
        if memo is None:
            memo = self.memos[key] = LoopMemo()
            self.metrics.loops.set(len(self.memos))
        return memo

    def forget(self, key: LoopKey) -> None:
        self.memos.pop(key, None)
        self.metrics.loops.set(len(self.memos))


def pod_view(
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
) -> PodView | None:
    """The plan's view of a pod, or None if it is not a proper node pod."""
    try:
        ordinal = int(labels.get(c.ORDINAL_LABEL, ""))
    except ValueError:
        return None
    conditions = status.get("conditions") or []
    ready = any(x.get("type") == "Ready" and x.get("status") == "True" for x in conditions)
    return PodView(
        name=name,
        ordinal=ordinal,
        spec_hash=annotations.get(c.SPEC_HASH_ANNOTATION),
        replicas_annotation=annotations.get(c.REPLICAS_ANNOTATION),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        ip=status.get("podIP") or None,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generation_of(state: Mapping[str, Any] | None) -> int | None:
    if state is None:
        return None
    gen = state.get("generation")
    return gen if isinstance(gen, int) else None


class Reconciler:
    """One reconciliation of one loop: decide with the pure modules, act through `kube`."""

    def __init__(self, deps: Deps, body: Mapping[str, Any], pods: Iterable[PodView]) -> None:
        meta = body.get("metadata") or {}
        self.deps = deps
        self.body = body
        self.name = str(meta.get("name"))
        self.namespace = str(meta.get("namespace"))
        self.generation = int(meta.get("generation") or 0)
        self.owner = Owner(self.name, self.namespace, str(meta.get("uid")))
        self.pods = [p for p in pods]
        self.memo = deps.memo((self.namespace, self.name))
        #: Events that found no kopf event queue (the background resync): posted by the caller.
        self.unposted: list[tuple[str, str, str]] = []

    def spec(self) -> tuple[LoopSpec | None, str | None]:
        try:
            check_name(self.name)
            return parse_spec(self.body.get("spec") or {}), None
        except SpecError as e:
            return None, str(e)

    def event(self, kind: str, reason: str, message: str) -> None:
        # Outside a kopf handler (the background resync, pure tests) there is
        # no event queue: keep the event for the caller to post.
        try:
            kopf.event(kopf.Body(dict(self.body)), type=kind, reason=reason, message=message[:1000])  # type: ignore[arg-type]
        except LookupError:
            self.unposted.append((kind, reason, message[:1000]))
        log.info("%s/%s %s %s: %s", self.namespace, self.name, kind, reason, message)

    # --- children ------------------------------------------------------------
    async def ensure_shared(self, spec: LoopSpec, *, force: bool) -> None:
        """Service, NetworkPolicy and (with auth) the HMAC Secret; create-if-missing."""
        memo = self.memo
        stamp = (self.owner.uid, self.generation)
        fresh = time.monotonic() - memo.ensured_at < ENSURE_EVERY_SECONDS
        if not force and fresh and memo.ensured_for == stamp:
            return
        cfg = self.deps.cfg
        kube = self.deps.kube
        if await kube.create(builders.service(self.owner)):
            self.event("Normal", "Created", f"created headless Service {self.name}")
        await kube.create(
            builders.network_policy(
                self.owner,
                operator_pod_labels=dict(cfg.operator_pod_labels),
                scraper_pod_labels=dict(cfg.scraper_pod_labels),
                scraper_namespace_labels=dict(cfg.scraper_namespace_labels),
            )
        )
        if spec.auth.hmac:
            secret = builders.hmac_secret_name(self.name)
            # Printable: the node reads the key from an env var (secretKeyRef).
            key = secrets.token_hex(32).encode()
            if await kube.create(builders.hmac_secret(self.owner, key)):
                memo.hmac_key = key
                self.event("Normal", "Created", f"created HMAC Secret {secret}")
            else:
                memo.hmac_key = await kube.secret_value(self.namespace, secret, c.HMAC_SECRET_KEY)
        else:
            memo.hmac_key = None
        memo.ensured_at = time.monotonic()
        memo.ensured_for = stamp

    async def heal(self, spec: LoopSpec) -> Plan:
        """Create, delete, annotate and roll pods as `plan` says."""
        kube = self.deps.kube
        replicas = spec.replicas
        ordinals = sorted(p.ordinal for p in self.pods)
        # RBAC objects are listed only until they were once seen to match the
        # pods; while pods and replicas stay as they are, nothing can differ.
        rbac_key = (replicas, tuple(ordinals))
        listed = False
        if self.memo.rbac_clean_for == rbac_key and ordinals == list(range(replicas)):
            rbac = set(range(replicas))
        else:
            names = await kube.service_account_names(self.namespace, builders.selector(self.name))
            rbac = {
                int(n.rsplit("-", 1)[1])
                for n in names
                if n.startswith(self.name + "-") and n.rsplit("-", 1)[1].isdigit()
            }
            listed = True
        wanted_hash = builders.spec_hash(spec, self.deps.defaults)
        todo = plan(replicas=replicas, spec_hash=wanted_hash, pods=self.pods, rbac_ordinals=rbac)
        if listed:
            clean = not (todo.create_rbac or todo.delete_rbac or todo.create_pods)
            self.memo.rbac_clean_for = rbac_key if clean else None
        ns = self.namespace
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create_node(ordinal: int) -> None:
            # Per node in order (its RBAC before its pod); nodes side by side.
            async with gate:
                if ordinal in todo.create_rbac:
                    for manifest in builders.node_rbac(self.owner, ordinal):
                        await kube.create(manifest)
                if ordinal in todo.create_pods:
                    pod = builders.pod(self.owner, spec, ordinal, self.deps.defaults)
                    if await kube.create(pod):
                        self.event("Normal", "CreatedPod", f"created pod {pod['metadata']['name']}")

        await asyncio.gather(
            *(create_node(o) for o in sorted(set(todo.create_rbac) | set(todo.create_pods)))
        )
        for name in todo.delete_pods:
            if await kube.delete_pod(ns, name):
                self.event("Normal", "DeletedPod", f"deleted pod {name} (scale down or failed)")
        for ordinal in todo.delete_rbac:
            await kube.delete_node_rbac(ns, builders.pod_name(self.name, ordinal))
        for name in todo.annotate_replicas:
            try:
                await kube.annotate_pod(ns, name, {c.REPLICAS_ANNOTATION: str(replicas)})
            except KubeError as e:
                log.info("annotating %s/%s: %s", ns, name, e)
        if todo.roll is not None and await kube.delete_pod(ns, todo.roll):
            self.event("Normal", "RollingPod", f"rolling pod {todo.roll}: its template changed")
        return todo

    # --- nodes ---------------------------------------------------------------
    async def poll(self, spec: LoopSpec | None) -> dict[str, NodeReport | None]:
        wanted = spec.replicas if spec is not None else len(self.pods)
        ips = {
            p.name: p.ip
            for p in self.pods
            if p.ip and not p.deleting and p.ordinal < wanted and p.phase == "Running"
        }
        answers = await self.deps.nodes.states(ips)
        return {n: (parse_report(a) if a is not None else None) for n, a in answers.items()}

    async def inject(
        self, spec: LoopSpec, target_gen: int, reports: Mapping[str, NodeReport | None]
    ) -> bool:
        """Round-trip the target into one node; True once some node holds it."""
        memo = self.memo
        if time.monotonic() < memo.next_injection:
            return False
        candidates = sorted(
            (p for p in self.pods if p.ip and reports.get(p.name) is not None),
            key=lambda p: (reports[p.name].phase != "looping", p.ordinal),  # type: ignore[union-attr]
        )
        state = {"generation": target_gen, "target": spec.target}
        failures: list[str] = []
        for pod in candidates[:3]:
            assert pod.ip is not None
            result = await self.deps.nodes.inject(
                pod.ip, loop=self.name, state=state, hmac_key=memo.hmac_key
            )
            held = _generation_of(result.state)
            if result.ok and held is not None and held >= target_gen:
                self.deps.metrics.injections.labels(result="ok").inc()
                memo.inject_backoff = 1.0
                memo.next_injection = 0.0
                self.event(
                    "Normal",
                    "TargetInjected",
                    f"generation {target_gen} injected into {pod.name}",
                )
                return True
            failures.append(f"{pod.name}: {result.status} {result.detail}")
        self.deps.metrics.injections.labels(result="failed").inc()
        memo.next_injection = time.monotonic() + memo.inject_backoff
        memo.inject_backoff = min(memo.inject_backoff * 2, INJECT_BACKOFF_MAX)
        if failures:
            log.info("%s/%s injection failed: %s", self.namespace, self.name, "; ".join(failures))
        return False

    def report_state_errors(self, reports: Mapping[str, NodeReport | None]) -> None:
        seen = {
            f"{n}: {r.state_error}" for n, r in reports.items() if r is not None and r.state_error
        }
        for text in sorted(seen - self.memo.reported_errors):
            self.event("Warning", "InvalidNodeState", text)
        self.memo.reported_errors = seen

    # --- the whole pass ------------------------------------------------------
    async def run(self, *, force_ensure: bool) -> dict[str, Any]:
        """Heal, poll, inject; return the status patch (empty when nothing changed)."""
        spec, spec_error = self.spec()
        memo = self.memo
        current: Mapping[str, Any] = self.body.get("status") or {}
        if spec_error is not None:
            if memo.last_spec_error != spec_error:
                self.event("Warning", "InvalidSpec", spec_error)
            memo.last_spec_error = spec_error
        else:
            memo.last_spec_error = None
        if spec is not None:
            await self.ensure_shared(spec, force=force_ensure)
            await self.heal(spec)
        reports = await self.poll(spec)
        self.report_state_errors(reports)

        target_gen: int | None = None
        digest: str | None = None
        injected = current.get("injectedGeneration")
        if spec is not None and spec.is_converge and spec.target is not None:
            digest = target_digest(spec.target)
            previous = current.get("targetGeneration")
            if current.get("targetDigest") == digest and isinstance(previous, int):
                target_gen = previous
            else:
                target_gen = self.generation
            held = max(
                (r.summary.generation or 0 for r in reports.values() if r is not None), default=0
            )
            if held >= target_gen or await self.inject(spec, target_gen, reports):
                injected = max(int(injected or 0), target_gen)

        desired = aggregate(
            name=self.name,
            generation=self.generation,
            spec=spec,
            spec_error=spec_error,
            pods=self.pods,
            reports=reports,
            target_generation=target_gen,
            target_digest=digest,
            injected_generation=injected if isinstance(injected, int) else None,
            previous_conditions=current.get("conditions") or [],
            now=_now(),
        )
        changes = status_patch(current, desired)
        if not changes:
            return changes
        now = time.monotonic()
        if (
            without_counters(current) == without_counters(desired)
            and now - memo.counters_written_at < COUNTERS_EVERY_SECONDS
        ):
            return {}  # only loop/wait counters moved: refresh them now and then
        memo.counters_written_at = now
        return changes


#: What the pod index and the loop index give (kopf.Index, or a plain mapping in tests).
PodsByLoop = Mapping[LoopKey, Iterable[PodView]]
LoopsByKey = Mapping[LoopKey, Iterable[Mapping[str, Any]]]


async def reconcile(
    deps: Deps, body: Mapping[str, Any], index: PodsByLoop, *, force_ensure: bool
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """One pass over one loop: (status changes, events left to post).

    Counted in the reconcile metric: ok, invalid (spec), or error (it raised).
    """
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    memo = deps.memo(key)
    started = time.perf_counter()
    async with memo.lock:
        pods = list(index.get(key, []))
        worker = Reconciler(deps, body, pods)
        try:
            changes = await worker.run(force_ensure=force_ensure)
        except Exception:
            deps.metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            deps.metrics.reconcile_seconds.observe(time.perf_counter() - started)
    deps.metrics.reconciles.labels(result="invalid" if memo.last_spec_error else "ok").inc()
    return changes, worker.unposted


class Resync:
    """The periodic pass over every indexed loop (replaces a kopf timer: no finalizer).

    Every `resync_seconds`, each loop in the loop index is reconciled like a
    resume (without forcing the shared children), its status merge-patched and
    its events posted. Loops run side by side, at most `RESYNC_CONCURRENCY` at
    once; one that fails is logged and counted and never stops the others.
    """

    def __init__(
        self,
        deps: Deps,
        loops: LoopsByKey,
        pods: PodsByLoop,
        *,
        concurrency: int = RESYNC_CONCURRENCY,
    ) -> None:
        self.deps = deps
        self.loops = loops
        self.pods = pods
        self.concurrency = concurrency

    async def one(self, key: LoopKey) -> None:
        """The pass over one loop; never raises (but for cancellation)."""
        deps = self.deps
        body = next(iter(self.loops.get(key, [])), None)  # the newest one seen
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        ns, name = key
        try:
            changes, unposted = await reconcile(deps, body, self.pods, force_ensure=False)
            if key not in self.loops:
                return  # deleted meanwhile: nothing to write
            if changes:
                await deps.kube.patch_loop_status(ns, name, changes)
            for kind, reason, message in unposted:
                await deps.kube.post_event(body, kind=kind, reason=reason, message=message)
        except asyncio.CancelledError:
            raise
        except NotFound:
            pass  # deleted meanwhile
        except KubeError as e:
            log.warning("resync of %s/%s: Kubernetes API: %s", ns, name, e)
        except Exception:
            log.exception("resync of %s/%s failed", ns, name)
        finally:
            if key not in self.loops:
                deps.forget(key)  # a pass that raced with the deletion

    async def all(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(key: LoopKey) -> None:
            async with gate:
                await self.one(key)

        await asyncio.gather(*(one(k) for k in list(self.loops)))

    async def forever(self) -> None:
        while True:
            await asyncio.sleep(self.deps.cfg.resync_seconds)
            try:
                await self.all()
            except asyncio.CancelledError:
                raise
            except Exception:  # `one` isolates loops; this is a last resort
                log.exception("resync pass failed")


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
            changes, _unposted = await reconcile(deps, body, node_pods, force_ensure=True)
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
        node_pods: PodIndex = None,
        **_: Any,
    ) -> None:
        """Heal at once when a node pod goes away or fails (the resync would, later)."""
        if type != "DELETED" and status.get("phase") not in ("Failed", "Succeeded"):
            return
        if namespace is None or node_pods is None:
            return
        key = (namespace, labels[c.LOOP_LABEL])
        loop = await deps.kube.get_loop(*key)
        if loop is None or (loop.get("metadata") or {}).get("deletionTimestamp"):
            return
        memo = deps.memo(key)
        async with memo.lock:
            worker = Reconciler(deps, loop, node_pods.get(key, []))
            spec, _error = worker.spec()
            if spec is not None:
                await worker.heal(spec)
