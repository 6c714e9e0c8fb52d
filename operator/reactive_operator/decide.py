"""Decide one pass over one loop from what was observed (pure).

A pass is observe → decide → apply (`reconcile`). This module is the middle:
`decide(observed, wanted)` returns a `Decision` — the actions to carry out,
the events to send, the status, and what to remember until the next pass —
without any I/O. The apply step performs the actions once, sends the events
through its one path, and reports what only acting can tell (whether the API
server refused a pod, whether a node took the target); `settle` folds that
into the status.

What observe reads is decided here too, so that a pass reads only what its
decision needs: `shared_due` (the Service, NetworkPolicy, PodDisruptionBudget
and Secret are checked on every change of the resource and once a minute),
`assumed_rbac` (the node RBAC is listed only until it was seen to match the
pods) and `injection_due` (whether a target is to be injected now).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reactive_node.core import contract as c

from . import builders
from .builders import NodeDefaults, Owner
from .config import NodeNetwork
from .plan import Plan, PodView, plan, suspended_value
from .spec import LoopSpec, target_digest
from .status import NodeReport, aggregate

Manifest = dict[str, Any]
#: How often the shared children are checked when the resource does not change.
ENSURE_EVERY_SECONDS = 60.0
INJECT_BACKOFF_MAX = 30.0
#: Nodes tried per injection attempt (looping ones first).
INJECT_CANDIDATES = 3
MAX_EVENT_MESSAGE = 1000


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the loop, sent by the apply step."""

    kind: str
    """`Normal` or `Warning`."""
    reason: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", self.message[:MAX_EVENT_MESSAGE])


# --- actions -------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """Create `manifest` unless it exists; `event` is sent when it was created."""

    manifest: Manifest
    event: Event | None = None


@dataclass(frozen=True)
class PatchBudget:
    name: str
    spec: Manifest
    event: Event


@dataclass(frozen=True)
class PatchNetworkPolicy:
    """Merge-patch the loop's NetworkPolicy's spec (a key set to None is removed)."""

    name: str
    spec: Manifest
    event: Event


@dataclass(frozen=True)
class DeleteBudget:
    name: str
    event: Event
    """Sent when it existed."""


@dataclass(frozen=True)
class CreateNode:
    """One node's RBAC, then its pod; nodes are created side by side."""

    ordinal: int
    rbac: tuple[Manifest, ...]
    pod: Manifest | None
    event: Event | None
    """Sent when the pod was created."""


@dataclass(frozen=True)
class DeletePod:
    name: str
    event: Event
    """Sent when it existed."""


@dataclass(frozen=True)
class DeleteNodeRbac:
    pod: str


@dataclass(frozen=True)
class AnnotatePod:
    """Operator-owned annotations; a failure is logged, never fatal."""

    name: str
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Inject:
    """Write `text` (`builders.injection_text`) to the inject annotation of
    node pod `pod` through the API server: the node takes the target from its
    pod watch (docs/operator.md, "Cluster-wide mode and Secrets"). Whether a
    node holds it is learnt from the nodes' `/v1/state` on a later pass."""

    generation: int
    text: str
    pod: str


Action = (
    Create
    | PatchBudget
    | PatchNetworkPolicy
    | DeleteBudget
    | CreateNode
    | DeletePod
    | DeleteNodeRbac
    | AnnotatePod
    | Inject
)


# --- inputs and output ---------------------------------------------------------


@dataclass(frozen=True)
class Remembered:
    """What the operator remembers about one loop from one pass to the next."""

    ensured_at: float = float("-inf")
    ensured_for: tuple[str, int] | None = None
    """(uid, generation) for which the shared children were last checked."""
    secret_problem: tuple[str, str] | None = None
    """(reason, message): why the loop's HMAC Secret cannot be used, while it cannot."""
    reported_secret_problem: str | None = None
    reported_budget_problem: str | None = None
    reported_policy_problem: str | None = None
    pod_rejected: str | None = None
    """Why the API server refused a node pod (e.g. a bad sidecar), until one is created."""
    inject_backoff: float = 1.0
    next_injection: float = 0.0
    inject_attempts: int = 0
    """Injections written for the current target generation (picks the next pod)."""
    hmac_secret_uid: str | None = None
    """The uid recorded for the loop's HMAC Secret (kept in case writing it to
    the status failed)."""
    last_spec_error: str | None = None
    rbac_clean_for: tuple[int, tuple[int, ...]] | None = None
    """(replicas, pod ordinals) for which the node RBAC was seen to match."""
    reported_errors: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SecretCheck:
    """The loop's HMAC Secret as observe found (or made) it, without reading it."""

    problem: tuple[str, str] | None = None
    """(reason, message) when it is not usable (not this loop's)."""
    created: bool = False
    uid: str | None = None
    """What `status.hmacSecretUID` records (a uid, or `builders.HMAC_SECRET_ADOPTED`)."""


@dataclass(frozen=True)
class Wanted:
    """What is wanted: the spec (or why it is rejected) and the operator's node defaults."""

    spec: LoopSpec | None
    error: str | None
    defaults: NodeDefaults
    network: NodeNetwork


@dataclass(frozen=True)
class Observed:
    """Everything one pass saw before deciding."""

    owner: Owner
    generation: int
    status: Mapping[str, Any]
    """The loop's current status."""
    pods: tuple[PodView, ...]
    reports: Mapping[str, NodeReport | None]
    """Each asked node's `/v1/state` (None: it could not be asked, or its answer
    was not a state document)."""
    remembered: Remembered
    now: float
    """Monotonic seconds (backoff, ensure interval)."""
    wall: str
    """UTC time for condition transitions."""
    shared_due: bool = False
    budget: Mapping[str, Any] | None = None
    """The PodDisruptionBudget under the loop's name (read when `shared_due`)."""
    bad_answers: Mapping[str, str] = field(default_factory=dict)
    """Why a node that answered gave no report (not JSON, not a state document),
    by node; the status shows it as that node's problem."""
    network_policy: Mapping[str, Any] | None = None
    """The NetworkPolicy under the loop's name (read when `shared_due`)."""
    rbac_ordinals: frozenset[int] = frozenset()
    rbac_listed: bool = False
    """Whether `rbac_ordinals` were listed now (else assumed, see `assumed_rbac`)."""
    secret: SecretCheck | None = None
    """The HMAC Secret, when it was looked at this pass."""


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    status: dict[str, Any]
    """The full status, as long as applying refuses no pod."""
    remembered: Remembered
    plan: Plan | None = None
    """The pod plan (None when the loop is not healed: rejected spec, Secret problem)."""


@dataclass(frozen=True)
class Target:
    """The target to hold: its number and digest (see `target_of`)."""

    generation: int
    digest: str


# --- what to observe -----------------------------------------------------------


def shared_due(remembered: Remembered, owner: Owner, generation: int, now: float) -> bool:
    """The shared children are checked again after a change of the resource
    and once every `ENSURE_EVERY_SECONDS` (a forced pass always checks them)."""
    fresh = now - remembered.ensured_at < ENSURE_EVERY_SECONDS
    return not fresh or remembered.ensured_for != (owner.uid, generation)


def assumed_rbac(
    remembered: Remembered, replicas: int, pods: Sequence[PodView]
) -> frozenset[int] | None:
    """The node RBAC ordinals without listing them, when they were seen to match
    these very pods and replicas (nothing can have changed); None: list them."""
    ordinals = sorted(p.ordinal for p in pods)
    if remembered.rbac_clean_for == (replicas, tuple(ordinals)) and ordinals == list(
        range(replicas)
    ):
        return frozenset(range(replicas))
    return None


def target_of(spec: LoopSpec | None, status: Mapping[str, Any], generation: int) -> Target | None:
    """Which target the nodes must hold, numbered by the generation at which
    `spec.target` last changed: kept while its digest is the same (scaling or
    retiming starts no new generation), else this generation."""
    if spec is None or not spec.injects_target or spec.target is None:
        return None
    digest = target_digest(spec.target)
    previous = status.get("targetGeneration")
    if status.get("targetDigest") == digest and isinstance(previous, int):
        return Target(previous, digest)
    return Target(generation, digest)


def held_generation(reports: Mapping[str, NodeReport | None]) -> int:
    """The newest target generation some node holds (0: none)."""
    return max((r.summary.generation or 0 for r in reports.values() if r is not None), default=0)


def injection_due(
    spec: LoopSpec | None,
    status: Mapping[str, Any],
    generation: int,
    reports: Mapping[str, NodeReport | None],
    remembered: Remembered,
    now: float,
) -> bool:
    """A target to inject now: no node holds it, the loop runs, no backoff.
    While suspended the target waits (injection is a round trip the operator
    starts); it is injected once the loop resumes."""
    target = target_of(spec, status, generation)
    return (
        spec is not None
        and target is not None
        and not spec.suspend
        and held_generation(reports) < target.generation
        and now >= remembered.next_injection
    )


def secret_problem_of(
    remembered: Remembered, spec: LoopSpec, shared_due: bool, secret: SecretCheck | None
) -> tuple[str, str] | None:
    """Why the loop's HMAC Secret cannot be used: as found now when it was looked
    at, none when the shared children are checked anew without it (the loop
    does not sign), else as remembered. While there is one, no pod is touched."""
    if spec.auth.hmac and secret is not None:
        return secret.problem
    return None if shared_due else remembered.secret_problem


# --- deciding ------------------------------------------------------------------


def _problem_event(previous: str | None, reason: str, message: str) -> tuple[Event | None, str]:
    """A Warning for a problem only when it differs from the one last reported."""
    text = f"{reason}: {message}"
    return (Event("Warning", reason, message) if text != previous else None), text


def _network_policy(
    owner: Owner, desired: Manifest, current: Mapping[str, Any] | None
) -> tuple[list[Action], str | None]:
    """Create the loop's NetworkPolicy, or patch it to the wanted spec (an
    operator upgrade that changes the policy reaches loops made before it);
    one under its name that is not this loop's is left alone (the problem)."""
    name = str(desired["metadata"]["name"])
    if current is None:
        return [Create(desired)], None
    if not builders.owns(owner, current):
        return [], (
            f"NetworkPolicy {name} exists but is not owned by this ReactiveLoop:"
            " it is neither used nor changed; delete or rename it"
        )
    want = desired["spec"]
    spec_now = current.get("spec") or {}
    stale = {k: None for k in ("ingress", "egress") if k not in want and spec_now.get(k)}
    if stale or {k: spec_now.get(k) for k in want} != want:
        return [
            PatchNetworkPolicy(
                name, {**want, **stale}, Event("Normal", "Updated", f"updated NetworkPolicy {name}")
            )
        ], None
    return [], None


def _budget(
    owner: Owner, spec: LoopSpec, current: Mapping[str, Any] | None
) -> tuple[list[Action], str | None]:
    """Create, patch or delete the PodDisruptionBudget as the spec says; one
    under its name that is not this loop's is left alone (the problem text)."""
    name = builders.disruption_budget_name(owner.name)
    desired = builders.pod_disruption_budget(owner, spec)
    if current is not None and not builders.owns(owner, current):
        return [], (
            f"PodDisruptionBudget {name} exists but is not owned by this ReactiveLoop:"
            " it is neither used nor changed; delete or rename it"
        )
    if desired is None:
        if current is None:
            return [], None
        return [
            DeleteBudget(name, Event("Normal", "Deleted", f"deleted PodDisruptionBudget {name}"))
        ], None
    if current is None:
        return [
            Create(desired, Event("Normal", "Created", f"created PodDisruptionBudget {name}"))
        ], None
    spec_now = current.get("spec") or {}
    if {k: spec_now.get(k) for k in desired["spec"]} != desired["spec"]:
        return [
            PatchBudget(
                name,
                desired["spec"],
                Event("Normal", "Updated", f"updated PodDisruptionBudget {name}"),
            )
        ], None
    return [], None


def _heal(observed: Observed, wanted: Wanted, spec: LoopSpec) -> tuple[Plan, list[Action]]:
    """Create, delete, annotate and roll pods as `plan` says."""
    owner = observed.owner
    todo = plan(
        replicas=spec.replicas,
        spec_hash=builders.spec_hash(spec, wanted.defaults),
        pods=list(observed.pods),
        rbac_ordinals=set(observed.rbac_ordinals),
        suspend=spec.suspend,
    )
    actions: list[Action] = []
    for ordinal in sorted(set(todo.create_rbac) | set(todo.create_pods)):
        rbac = tuple(builders.node_rbac(owner, ordinal)) if ordinal in todo.create_rbac else ()
        pod = None
        event = None
        if ordinal in todo.create_pods:
            pod = builders.pod(owner, spec, ordinal, wanted.defaults)
            event = Event("Normal", "CreatedPod", f"created pod {pod['metadata']['name']}")
        actions.append(CreateNode(ordinal, rbac, pod, event))
    for name in todo.delete_pods:
        actions.append(
            DeletePod(
                name, Event("Normal", "DeletedPod", f"deleted pod {name} (scale down or failed)")
            )
        )
    for ordinal in todo.delete_rbac:
        actions.append(DeleteNodeRbac(builders.pod_name(owner.name, ordinal)))
    annotations: dict[str, dict[str, str]] = {}
    for name in todo.annotate_replicas:
        annotations.setdefault(name, {})[c.REPLICAS_ANNOTATION] = str(spec.replicas)
    for name in todo.annotate_suspended:
        annotations.setdefault(name, {})[c.SUSPENDED_ANNOTATION] = suspended_value(spec.suspend)
    actions.extend(AnnotatePod(name, values) for name, values in annotations.items())
    if todo.roll is not None:
        actions.append(
            DeletePod(
                todo.roll,
                Event("Normal", "RollingPod", f"rolling pod {todo.roll}: its template changed"),
            )
        )
    return todo, actions


def decide(observed: Observed, wanted: Wanted) -> Decision:
    """Everything one pass does about one loop, from what it observed."""
    spec = wanted.spec
    mem = observed.remembered
    owner = observed.owner
    actions: list[Action] = []
    events: list[Event] = []

    if wanted.error is not None and mem.last_spec_error != wanted.error:
        events.append(Event("Warning", "InvalidSpec", wanted.error))
    mem = replace(mem, last_spec_error=wanted.error)

    todo: Plan | None = None
    if spec is not None:
        secret_problem = secret_problem_of(mem, spec, observed.shared_due, observed.secret)
        if observed.shared_due:
            actions.append(
                Create(
                    builders.service(owner),
                    Event("Normal", "Created", f"created headless Service {owner.name}"),
                )
            )
            policy_actions, policy_problem = _network_policy(
                owner, builders.network_policy(owner, spec, wanted.network), observed.network_policy
            )
            actions.extend(policy_actions)
            if policy_problem is not None and policy_problem != mem.reported_policy_problem:
                events.append(Event("Warning", "NetworkPolicyNotOwned", policy_problem))
            mem = replace(mem, reported_policy_problem=policy_problem)
            budget_actions, budget_problem = _budget(owner, spec, observed.budget)
            actions.extend(budget_actions)
            if budget_problem is not None and budget_problem != mem.reported_budget_problem:
                events.append(Event("Warning", "DisruptionBudgetNotOwned", budget_problem))
            mem = replace(mem, reported_budget_problem=budget_problem)
        secret = observed.secret if spec.auth.hmac else None
        if secret is not None:
            if secret.created:
                name = builders.hmac_secret_name(owner.name)
                events.append(Event("Normal", "Created", f"created HMAC Secret {name}"))
            reported = None
            if secret.problem is not None:
                event, reported = _problem_event(mem.reported_secret_problem, *secret.problem)
                if event is not None:
                    events.append(event)
            mem = replace(mem, reported_secret_problem=reported)
            if secret.uid is not None:
                mem = replace(mem, hmac_secret_uid=secret.uid)
        if observed.shared_due and secret_problem is None:
            # Checked: not again until the resource changes or a minute passed.
            mem = replace(
                mem, ensured_at=observed.now, ensured_for=(owner.uid, observed.generation)
            )
        mem = replace(mem, secret_problem=secret_problem)
        if secret_problem is None:
            todo, heal_actions = _heal(observed, wanted, spec)
            actions.extend(heal_actions)
            if not todo.create_pods:
                mem = replace(mem, pod_rejected=None)  # nothing left to create: nothing refused
            if observed.rbac_listed:
                clean = not (todo.create_rbac or todo.delete_rbac or todo.create_pods)
                ordinals = tuple(sorted(p.ordinal for p in observed.pods))
                mem = replace(mem, rbac_clean_for=(spec.replicas, ordinals) if clean else None)

    seen = frozenset(
        f"{n}: {r.state_error}"
        for n, r in observed.reports.items()
        if r is not None and r.state_error
    )
    events.extend(
        Event("Warning", "InvalidNodeState", t) for t in sorted(seen - mem.reported_errors)
    )
    mem = replace(mem, reported_errors=seen)

    target = target_of(spec, observed.status, observed.generation)
    if (
        target is not None
        and mem.inject_attempts > 0
        and held_generation(observed.reports) >= target.generation
    ):
        mem = replace(mem, inject_backoff=1.0, next_injection=0.0, inject_attempts=0)
    if (
        spec is not None
        and mem.secret_problem is None
        and injection_due(
            spec, observed.status, observed.generation, observed.reports, mem, observed.now
        )
    ):
        assert target is not None
        pod = builders.injection_pod(
            candidates(observed.pods, observed.reports), mem.inject_attempts
        )
        if pod is not None:
            text = builders.injection_text(target.generation, spec.target)
            actions.append(Inject(target.generation, text, pod))

    status = settle(observed, wanted, mem)
    return Decision(tuple(actions), tuple(events), status, mem, todo)


def candidates(pods: Sequence[PodView], reports: Mapping[str, NodeReport | None]) -> list[str]:
    """The node pods to write an injection to, in turn: answering ones, looping
    first, by ordinal, at most `INJECT_CANDIDATES`."""
    answering = [p for p in pods if p.ip and reports.get(p.name) is not None]
    answering.sort(key=lambda p: (_phase(reports, p.name) != "looping", p.ordinal))
    return [p.name for p in answering[:INJECT_CANDIDATES]]


def _phase(reports: Mapping[str, NodeReport | None], name: str) -> str | None:
    report = reports.get(name)
    return report.phase if report is not None else None


def after_injection(remembered: Remembered, now: float) -> Remembered:
    """After writing an injection (or failing to): wait 1, 2, 4 … 30 s for a
    node to report it before writing it to the next candidate pod. `decide`
    resets this once a node holds the target."""
    return replace(
        remembered,
        next_injection=now + remembered.inject_backoff,
        inject_backoff=min(remembered.inject_backoff * 2, INJECT_BACKOFF_MAX),
        inject_attempts=remembered.inject_attempts + 1,
    )


def injected_event(generation: int, pod: str) -> Event:
    return Event("Normal", "TargetInjected", f"generation {generation} written to pod {pod}")


def refused_pod(remembered: Remembered, pod: str, error: str) -> tuple[Remembered, Event | None]:
    """The API server refused a node pod (400, 403, 422: its template fields
    are checked only now): remembered for the status, one Warning per message."""
    text = f"pod {pod} refused: {error}"
    event = Event("Warning", "PodRejected", text) if text != remembered.pod_rejected else None
    return replace(remembered, pod_rejected=text), event


def settle(observed: Observed, wanted: Wanted, remembered: Remembered) -> dict[str, Any]:
    """The loop's full status from what was observed and, after applying, from
    what applying found (`remembered` after it: a refused pod). The injected
    generation is the one a node reports holding in its `/v1/state`."""
    spec = wanted.spec
    target = target_of(spec, observed.status, observed.generation)
    previous = observed.status.get("injectedGeneration")
    known = int(previous) if isinstance(previous, int) else None
    if target is not None and target.generation <= held_generation(observed.reports):
        known = max(known or 0, target.generation)  # a node holds it
    refusal = None
    if spec is not None and spec.auth.hmac and remembered.secret_problem is not None:
        refusal = remembered.secret_problem
    elif spec is not None and remembered.pod_rejected is not None:
        refusal = ("PodRejected", remembered.pod_rejected)
    status = aggregate(
        name=observed.owner.name,
        generation=observed.generation,
        spec=spec,
        spec_error=wanted.error,
        pods=observed.pods,
        reports=observed.reports,
        target_generation=target.generation if target is not None else None,
        target_digest=target.digest if target is not None else None,
        injected_generation=known,
        previous_conditions=observed.status.get("conditions") or [],
        now=observed.wall,
        refusal=refusal,
        bad_answers=observed.bad_answers,
    )
    # Kept also once auth is off (not an owned key `status_patch` clears): a
    # Secret of that name stays the loop's if HMAC is switched on again.
    recorded = observed.status.get(builders.HMAC_SECRET_UID_FIELD)
    uid = remembered.hmac_secret_uid or (recorded if isinstance(recorded, str) else None)
    if uid:
        status[builders.HMAC_SECRET_UID_FIELD] = uid
    return status
