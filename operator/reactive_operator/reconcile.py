"""One pass over one loop: observe, decide (`decide`, pure), apply once.

- `observe` reads what the decision needs: the spec, the node pods (from
  kopf's index), every running node's `/v1/state`, and — only when due — the
  PodDisruptionBudget, the node RBAC and the HMAC Secret (`check_hmac_secret`:
  created, never read);
- `decide.decide` turns that into actions, events, the status and what to
  remember;
- `apply` performs the actions, in order (nodes created side by side), and
  reports what only acting tells (a pod the API server refused);
  `decide.settle` folds that into the status;
- `send_events` is the one way the operator's events leave: inside a kopf
  handler through kopf's event queue, elsewhere (the periodic resync) through
  `kube.post_event`; both report as `reactive-loop-operator`.

The caller writes the returned status changes (kopf's patch in a handler, a
merge patch of the status subresource elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf

from . import builders, decide
from .builders import NodeDefaults, Owner
from .config import OperatorConfig
from .decide import Decision, Event, Observed, Remembered, SecretCheck, Wanted
from .kube import Kube, KubeError
from .memo import LoopKey, LoopMemo, Memos
from .metrics import OperatorMetrics
from .nodes import NodeClient, NodeError
from .plan import PodView
from .spec import LoopSpec, SpecError, check_name, parse_spec
from .status import NodeReport, status_patch

#: Nodes whose objects are created at the same time (API requests in flight).
CREATE_CONCURRENCY = 8
log = logging.getLogger("reactive_operator")

#: What the pod index gives (kopf.Index, or a plain mapping in tests).
PodsByLoop = Mapping[LoopKey, Iterable[PodView]]


@dataclass
class Deps:
    """Everything a pass uses, made once in `main`."""

    cfg: OperatorConfig
    kube: Kube
    nodes: NodeClient
    metrics: OperatorMetrics
    memos: Memos = field(init=False)

    def __post_init__(self) -> None:
        self.memos = Memos(self.metrics)

    @property
    def defaults(self) -> NodeDefaults:
        return NodeDefaults(
            self.cfg.node_image,
            self.cfg.node_image_pull_policy,
            self.cfg.token_webhook_allowed_hosts,
            self.cfg.cluster_domain,
        )

    def memo(self, key: LoopKey) -> LoopMemo:
        return self.memos.get(key)

    def forget(self, key: LoopKey) -> None:
        self.memos.forget(key)


def wanted_of(deps: Deps, body: Mapping[str, Any]) -> Wanted:
    """The loop's spec, parsed and checked (or why it is rejected), with the defaults."""
    meta = body.get("metadata") or {}
    spec: LoopSpec | None = None
    error: str | None = None
    try:
        check_name(str(meta.get("name")))
        spec = parse_spec(body.get("spec") or {})
    except SpecError as e:
        error = str(e)
    return Wanted(spec, error, deps.defaults, deps.cfg.node_network)


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body.get("metadata") or {}
    return Owner(str(meta.get("name")), str(meta.get("namespace")), str(meta.get("uid")))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- observe -------------------------------------------------------------------


async def poll(
    nodes: NodeClient, pods: Sequence[PodView], spec: LoopSpec | None
) -> tuple[dict[str, NodeReport | None], dict[str, str]]:
    """Every running member node's `/v1/state`, asked at once: the reports (None:
    not answered, or not a state document) and, for the nodes that answered
    something that is not a state document, why (`Observed.bad_answers`)."""
    wanted = spec.replicas if spec is not None else len(pods)
    ips = {
        p.name: p.ip
        for p in pods
        if p.ip and not p.deleting and p.ordinal < wanted and p.phase == "Running"
    }
    reports: dict[str, NodeReport | None] = {}
    bad: dict[str, str] = {}
    for name, answer in (await nodes.states(ips)).items():
        if isinstance(answer, NodeError):
            reports[name] = None
            if answer.status == 200:  # it answered, but not with a state document
                bad[name] = answer.reason
        else:
            reports[name] = answer
    return reports, bad


async def observe(
    deps: Deps,
    body: Mapping[str, Any],
    pods: Sequence[PodView],
    wanted: Wanted,
    remembered: Remembered,
    *,
    force_ensure: bool,
) -> Observed:
    """What the decision needs, and no more (see `decide`: what to observe)."""
    owner = owner_of(body)
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    status: Mapping[str, Any] = body.get("status") or {}
    spec = wanted.spec
    now = time.monotonic()
    reports, bad_answers = await poll(deps.nodes, pods, spec)
    observed = Observed(
        owner=owner,
        generation=generation,
        status=status,
        pods=tuple(pods),
        reports=reports,
        remembered=remembered,
        now=now,
        wall=_now(),
        bad_answers=bad_answers,
    )
    if spec is None:
        return observed
    kube = deps.kube
    due = force_ensure or decide.shared_due(remembered, owner, generation, now)
    budget = policy = None
    if due:
        budget = await kube.read_pdb(owner.namespace, builders.disruption_budget_name(owner.name))
        policy = await kube.read_network_policy(
            owner.namespace, builders.network_policy_name(owner.name)
        )
    secret = None
    if spec.auth.hmac and due:
        secret = await check_hmac_secret(
            kube, owner, status, generation, remembered.hmac_secret_uid
        )
    rbac = decide.assumed_rbac(remembered, spec.replicas, pods)
    listed = False
    if decide.secret_problem_of(remembered, spec, due, secret) is not None:
        rbac = frozenset()  # no pod is touched: nothing to list
    elif rbac is None:
        rbac, listed = await node_rbac_ordinals(kube, owner), True
    return replace(
        observed,
        shared_due=due,
        budget=budget,
        network_policy=policy,
        rbac_ordinals=rbac,
        rbac_listed=listed,
        secret=secret,
    )


async def node_rbac_ordinals(kube: Kube, owner: Owner) -> frozenset[int]:
    """The ordinals whose node ServiceAccount exists (its Role and RoleBinding go with it)."""
    names = await kube.service_account_names(owner.namespace, builders.selector(owner.name))
    return frozenset(
        int(n.rsplit("-", 1)[1])
        for n in names
        if n.startswith(owner.name + "-") and n.rsplit("-", 1)[1].isdigit()
    )


# --- the HMAC Secret (apply side) ----------------------------------------------


async def check_hmac_secret(
    kube: Kube,
    owner: Owner,
    status: Mapping[str, Any],
    generation: int,
    remembered_uid: str | None,
) -> SecretCheck:
    """Create the loop's HMAC Secret with a new random key unless one of that
    name exists, and decide whether it is this loop's — without reading it (the
    operator may only create Secrets): see `builders.hmac_secret_ownership`.
    The uid of the operator's own create is written to the status at once,
    before any node pod is made; a failed write is logged, remembered and
    written again next pass."""
    key = secrets.token_hex(32).encode()  # 64 printable bytes
    created = await kube.create_secret(builders.hmac_secret(owner, key))
    rec = status.get(builders.HMAC_SECRET_UID_FIELD)
    recorded = rec if isinstance(rec, str) else None
    own = builders.hmac_secret_ownership(
        owner,
        created_uid=created,
        recorded=remembered_uid or recorded,
        status=status,
        generation=generation,
    )
    if own.record is not None:
        try:
            await kube.patch_loop_status(
                owner.namespace, owner.name, {builders.HMAC_SECRET_UID_FIELD: own.record}
            )
        except KubeError as e:
            log.warning(
                "%s/%s: recording %s: %s (again next pass)",
                owner.namespace,
                owner.name,
                builders.HMAC_SECRET_UID_FIELD,
                e,
            )
    problem = (own.problem.reason, own.problem.message) if own.problem is not None else None
    return SecretCheck(
        problem, created=created is not None, uid=own.record or remembered_uid or recorded
    )


# --- apply ---------------------------------------------------------------------


@dataclass
class Applied:
    """What applying did, as it happened."""

    remembered: Remembered
    """The decision's memory, with what acting learnt (refused pods, injection backoff)."""
    events: list[Event] = field(default_factory=list)
    """Events of actions that took effect."""


async def apply(deps: Deps, observed: Observed, decision: Decision, applied: Applied) -> None:
    """Perform the decision's actions once, in order; consecutive node creations
    run side by side (at most `CREATE_CONCURRENCY`). Outcomes go to `applied`,
    also when an action raises."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def gated(action: decide.Action) -> None:
        async with gate:
            await _act(deps, observed, action, applied)

    batch: list[decide.Action] = []
    for action in (*decision.actions, None):
        if isinstance(action, decide.CreateNode):
            batch.append(action)
            continue
        if batch:
            await asyncio.gather(*(gated(a) for a in batch))
            batch = []
        if action is not None:
            await _act(deps, observed, action, applied)


async def _act(deps: Deps, observed: Observed, action: decide.Action, applied: Applied) -> None:
    kube = deps.kube
    ns = observed.owner.namespace
    match action:
        case decide.Create(manifest, event):
            if await kube.create(manifest) and event is not None:
                applied.events.append(event)
        case decide.PatchBudget(name, spec, event):
            await kube.patch_pdb(ns, name, {"spec": spec})
            applied.events.append(event)
        case decide.PatchNetworkPolicy(name, spec, event):
            await kube.patch_network_policy(ns, name, {"spec": spec})
            applied.events.append(event)
        case decide.DeleteBudget(name, event):
            if await kube.delete_pdb(ns, name):
                applied.events.append(event)
        case decide.CreateNode(_, rbac, pod, event):
            for manifest in rbac:
                await kube.create(manifest)
            if pod is not None:
                await _create_pod(kube, pod, event, applied)
        case decide.DeletePod(name, event):
            if await kube.delete_pod(ns, name):
                applied.events.append(event)
        case decide.DeleteNodeRbac(pod):
            await kube.delete_node_rbac(ns, pod)
        case decide.AnnotatePod(name, annotations):
            try:
                await kube.annotate_pod(ns, name, annotations)
            except KubeError as e:
                log.info("annotating %s/%s: %s", ns, name, e)
        case decide.Inject():
            await _inject(deps, observed, action, applied)


async def _create_pod(
    kube: Kube, pod: Mapping[str, Any], event: Event | None, applied: Applied
) -> None:
    name = pod["metadata"]["name"]
    try:
        created = await kube.create(pod)
    except KubeError as e:
        if e.status not in (400, 403, 422):
            raise
        # The spec's pod template fields (sidecars, volumes…) are checked by
        # the API server only now: the status says so.
        applied.remembered, warning = decide.refused_pod(applied.remembered, name, str(e))
        if warning is not None:
            applied.events.append(warning)
        return
    applied.remembered = replace(applied.remembered, pod_rejected=None)
    if created and event is not None:
        applied.events.append(event)


async def _inject(deps: Deps, observed: Observed, action: decide.Inject, applied: Applied) -> None:
    """Write the target to one node pod's inject annotation through the API
    server; whether a node took it shows in the nodes' `/v1/state` later. Either
    way the next attempt waits (and goes to the next candidate pod)."""
    ns, loop = observed.owner.namespace, observed.owner.name
    try:
        await deps.kube.write_injection(ns, action.pod, action.text)
    except KubeError as e:
        deps.metrics.injections.labels(ns, "failed").inc()
        log.info("%s/%s injection into %s failed: %s", ns, loop, action.pod, e)
    else:
        deps.metrics.injections.labels(ns, "ok").inc()
        applied.events.append(decide.injected_event(action.generation, action.pod))
    applied.remembered = decide.after_injection(applied.remembered, time.monotonic())


# --- events --------------------------------------------------------------------


async def send_events(kube: Kube, body: Mapping[str, Any], events: Sequence[Event]) -> None:
    """The one way the operator's events leave. A lost event is logged, never fatal."""
    meta = body.get("metadata") or {}
    for event in events:
        log.info(
            "%s/%s %s %s: %s",
            meta.get("namespace"),
            meta.get("name"),
            event.kind,
            event.reason,
            event.message,
        )
        try:
            # Inside a kopf handler: kopf's queue (reporting instance: RLO_IDENTITY).
            kopf.event(
                kopf.Body(dict(body)),  # type: ignore[arg-type]
                type=event.kind,
                reason=event.reason,
                message=event.message,
            )
        except LookupError:  # no kopf handler here (the background resync)
            try:
                await kube.post_event(
                    body, kind=event.kind, reason=event.reason, message=event.message
                )
            except KubeError as e:
                log.warning(
                    "event %s on %s/%s: %s",
                    event.reason,
                    meta.get("namespace"),
                    meta.get("name"),
                    e,
                )


# --- the pass ------------------------------------------------------------------


async def run_pass(
    deps: Deps,
    body: Mapping[str, Any],
    pods: Sequence[PodView],
    memo: LoopMemo,
    *,
    force_ensure: bool,
) -> tuple[dict[str, Any], list[Event], Wanted]:
    """Observe, decide, apply; return (status changes, events sent, the wanted spec).

    The memory the decision leaves is kept only once every action was applied
    (a pass that raises is decided again next time); what acting learnt is kept
    either way, and the events of what took effect are sent either way.
    """
    wanted = wanted_of(deps, body)
    observed = await observe(deps, body, pods, wanted, memo.remembered, force_ensure=force_ensure)
    decision = decide.decide(observed, wanted)
    applied = Applied(decision.remembered)
    try:
        await apply(deps, observed, decision, applied)
    except BaseException as e:
        memo.remembered = replace(
            memo.remembered,
            pod_rejected=applied.remembered.pod_rejected,
            inject_backoff=applied.remembered.inject_backoff,
            next_injection=applied.remembered.next_injection,
            inject_attempts=applied.remembered.inject_attempts,
            hmac_secret_uid=applied.remembered.hmac_secret_uid,
        )
        if isinstance(e, Exception):  # not when cancelled: stop at once
            await send_events(deps.kube, body, applied.events)
        raise
    memo.remembered = applied.remembered
    events = [*decision.events, *applied.events]
    await send_events(deps.kube, body, events)
    desired = decide.settle(observed, wanted, applied.remembered)
    return status_patch(observed.status, desired), events, wanted


async def reconcile(
    deps: Deps, body: Mapping[str, Any], index: PodsByLoop, *, force_ensure: bool
) -> tuple[dict[str, Any], list[Event]]:
    """One pass over one loop under its lock: (status changes, events sent).

    Counted in the reconcile metric: ok, invalid (spec), or error (it raised).
    """
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    memo = deps.memo(key)
    started = time.perf_counter()
    async with memo.lock:
        pods = list(index.get(key, []))
        result = "error"
        try:
            changes, events, wanted = await run_pass(
                deps, body, pods, memo, force_ensure=force_ensure
            )
            result = "invalid" if wanted.error is not None else "ok"
        finally:
            deps.metrics.reconciles.labels(result=result).inc()
            deps.metrics.reconcile_seconds.labels(key[0], result).observe(
                time.perf_counter() - started
            )
    return changes, events
