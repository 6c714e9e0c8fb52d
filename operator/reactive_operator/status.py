"""Aggregate the nodes' own reports into a ReactiveLoop status (pure).

Input: the pods as observed, each node's `GET /v1/state` answer (or nothing if
it could not be asked), the validated spec (or the reason it is invalid), and
the previous conditions (so that `lastTransitionTime` only moves on a real
transition). Output: the complete `status` mapping the reconciler patches when
it differs from the current one.

The status stays short whatever the loop's size (`kubectl describe` at 64
nodes and beyond): counts, conditions and one line for each of at most
`MAX_NODES_IN_STATUS` nodes that need attention; the nodes that are fine are
only counted. Nothing in it moves on every round trip, so a steady loop
costs no status write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reactive_node.core.codec import BadStateDocument, StateDocument, decode_state_document

from .builders import pod_name, selector
from .plan import PodView
from .spec import LoopSpec

#: Nodes that need attention listed in `status.nodes`, lowest ordinals first;
#: the others are counted in `status.nodesNotListed`.
MAX_NODES_IN_STATUS = 5
#: One line per listed node (`kubectl describe` prints one line per entry).
MAX_NODE_LINE = 200
MAX_MESSAGE = 512


#: The part of a node's `/v1/state` answer the operator uses is the node's own
#: schema (`reactive_node.core.codec.StateDocument`): a number out of the node's
#: bounds makes it no report (the node counts as unreachable), so nothing a node
#: says can make the status unwritable.
NodeReport = StateDocument


def parse_report(raw: Any) -> NodeReport | None:
    """A node answer (JSON bytes or decoded), or None if it is not one (counted
    as unreachable); `reactive_node.runtime.client` decodes the answers it reads."""
    try:
        return decode_state_document(raw)
    except BadStateDocument:
        return None


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    new: Sequence[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions in Kubernetes form; lastTransitionTime kept unless status changed."""
    before = {str(c.get("type")): c for c in previous}
    out: list[dict[str, Any]] = []
    for cond in new:
        old = before.get(cond.type)
        since = now if old is None or old.get("status") != cond.status else None
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": _clip(cond.message),
                "observedGeneration": generation,
                "lastTransitionTime": since or (old or {}).get("lastTransitionTime", now),
            }
        )
    return out


def node_problems(
    pod: PodView,
    report: NodeReport | None,
    *,
    suspend: bool,
    target_generation: int | None,
    bad_answer: str | None = None,
) -> list[str]:
    """What needs attention on one member node (empty when it is fine): its pod
    not ready, the node not asked or its answer unusable (`bad_answer` says
    why), a bad state, not looping, behind the target."""
    problems: list[str] = []
    if not pod.ready:
        problems.append(f"pod {pod.phase}, not ready")
    if report is None:
        if bad_answer is not None:
            problems.append(f"bad answer: {bad_answer}")
        else:
            problems.append(
                "unreachable: the operator cannot ask it" if pod.ip else "no pod IP yet"
            )
        return problems
    if report.state_error:
        problems.append(f"invalid state: {report.state_error}")
    resting = report.phase == "suspended" and suspend
    if report.phase != "looping" and not resting:
        reason = f" ({report.last_wait_reason})" if report.last_wait_reason else ""
        problems.append(f"{report.phase}{reason}")
    held = report.summary.generation or 0
    if target_generation and held < target_generation:
        problems.append(f"behind target {target_generation} (holds {held})")
    return problems


def attention(
    name: str,
    wanted: int | None,
    members: Sequence[PodView],
    all_pods: Sequence[PodView],
    reports: Mapping[str, NodeReport | None],
    *,
    suspend: bool,
    target_generation: int | None,
    bad_answers: Mapping[str, str] | None = None,
) -> list[str]:
    """One line `<pod>: <problems>` per member node that needs attention, by
    ordinal; `wanted` (spec.replicas, None while the spec is rejected) also
    names the members that have no pod."""
    bad_answers = bad_answers or {}
    by_ordinal = {p.ordinal: p for p in members}
    ordinals = set(by_ordinal) | (set(range(wanted)) if wanted is not None else set())
    terminating = {p.ordinal for p in all_pods if p.deleting}
    lines: list[str] = []
    for ordinal in sorted(ordinals):
        pod = by_ordinal.get(ordinal)
        if pod is None:
            problem = "pod terminating" if ordinal in terminating else "no pod"
            lines.append(f"{pod_name(name, ordinal)}: {problem}")
            continue
        problems = node_problems(
            pod,
            reports.get(pod.name),
            suspend=suspend,
            target_generation=target_generation,
            bad_answer=bad_answers.get(pod.name),
        )
        if problems:
            lines.append(_clip(f"{pod.name}: {'; '.join(problems)}", MAX_NODE_LINE))
    return lines


def converge_summary(target_generation: int, at_target: int, wanted: int) -> str:
    """`kubectl get`'s one line for converge: which target, and how many nodes hold it.

    `target 7: 3/5 nodes` reads "target number 7, held by 3 of the 5 nodes"; the
    number is the resource generation at which spec.target last changed, so it
    moves only when the target does (never with scaling or retiming).
    """
    if target_generation == 0:
        return "no target"
    return f"target {target_generation}: {at_target}/{wanted} nodes"


def aggregate(
    *,
    name: str,
    generation: int,
    spec: LoopSpec | None,
    spec_error: str | None,
    pods: Sequence[PodView],
    reports: Mapping[str, NodeReport | None],
    target_generation: int | None,
    target_digest: str | None,
    injected_generation: int | None,
    previous_conditions: Sequence[Mapping[str, Any]],
    now: str,
    refusal: tuple[str, str] | None = None,
    bad_answers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Compute the full status of one loop.

    `refusal` is (reason, message) when the operator refuses to run a valid spec
    (the loop's Secret is not its own or unusable): Degraded with that reason.

    Ready is True only when the operator runs the spec (no `spec_error`, no
    `refusal`) and every one of `spec.replicas` nodes is ready; Suspended says
    whether `spec.suspend` holds (Unknown when the spec is rejected).
    """
    wanted = spec.replicas if spec is not None else len(pods)
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.ordinal)
    members = [p for p in live if p.ordinal < wanted]
    ready = sum(1 for p in members if p.ready)
    member_reports = {p.name: reports.get(p.name) for p in members}
    looping = sum(1 for r in member_reports.values() if r is not None and r.phase == "looping")
    resting = sum(1 for r in member_reports.values() if r is not None and r.phase == "suspended")

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": len(live),
        "readyReplicas": ready,
        "looping": looping,
        "waiting": len(members) - looping - resting,
        "selector": selector(name),
    }
    conditions: list[Condition] = []

    if spec is None or spec_error is not None:
        conditions.append(
            Condition(
                "Ready",
                "False",
                "InvalidSpec",
                f"the operator rejects the spec (see Degraded); {ready}/{wanted} nodes ready",
            )
        )
    elif refusal is not None:
        conditions.append(
            Condition(
                "Ready",
                "False",
                refusal[0],
                f"the operator does not run the loop (see Degraded); {ready}/{wanted} nodes ready",
            )
        )
    elif ready == wanted and len(members) == wanted:
        conditions.append(
            Condition("Ready", "True", "AllNodesReady", f"{ready}/{wanted} nodes ready")
        )
    else:
        conditions.append(
            Condition("Ready", "False", "NodesNotReady", f"{ready}/{wanted} nodes ready")
        )

    if spec is not None and spec.is_token:
        holders = sorted(
            (
                (r.summary.epoch or (0, 0), n)
                for n, r in member_reports.items()
                if r is not None and r.summary.holding
            ),
            reverse=True,
        )
        # A node that has the token but acts only once a majority renewed its
        # lease (docs/node.md): the token is not lost, it is changing hands.
        pending = sorted(
            (
                (r.summary.epoch or (0, 0), n)
                for n, r in member_reports.items()
                if r is not None and r.summary.held and not r.summary.holding
            ),
            reverse=True,
        )
        token: dict[str, Any] = {"holders": len(holders)}
        if holders:
            (term, ordinal), holder = holders[0]
            token.update(holder=holder, term=term, ordinal=ordinal)
            status["summary"] = f"{holder} holds epoch {term}.{ordinal}"
        elif pending:
            (term, ordinal), holder = pending[0]
            status["summary"] = f"{holder} has epoch {term}.{ordinal}, lease pending"
        else:
            status["summary"] = "no holder"
        status["token"] = token
        if len(holders) == 1:
            conditions.append(
                Condition("TokenHealthy", "True", "OneHolder", f"{holders[0][1]} holds the token")
            )
        elif not holders and pending:
            conditions.append(
                Condition(
                    "TokenHealthy",
                    "True",
                    "LeasePending",
                    f"{pending[0][1]} has the token and acts once a majority renews its lease",
                )
            )
        elif not holders:
            conditions.append(
                Condition("TokenHealthy", "False", "TokenLost", "no node reports holding the token")
            )
        else:
            names = ", ".join(h[1] for h in holders)
            conditions.append(
                Condition(
                    "TokenHealthy", "False", "SeveralHolders", f"{len(holders)} holders: {names}"
                )
            )
    elif spec is not None and (spec.is_converge or spec.injects_target):
        # Converge, or a custom behaviour that takes a target: its summary's
        # generation is the newest target generation a node holds.
        gens = [
            (r.summary.generation or 0) if r is not None else None for r in member_reports.values()
        ]
        known = [g for g in gens if g is not None]
        if target_generation is not None:
            status["targetGeneration"] = target_generation
        if target_digest is not None:
            status["targetDigest"] = target_digest
        if injected_generation is not None:
            status["injectedGeneration"] = injected_generation
        converged_gen = min(known) if known and len(known) == wanted else None
        if converged_gen is not None:
            status["convergedGeneration"] = converged_gen
        tgt = target_generation or 0
        at_target = sum(1 for g in known if g >= tgt)
        status["summary"] = converge_summary(tgt, at_target, wanted)
        if tgt == 0:
            conditions.append(Condition("Converged", "False", "NoTarget", "spec.target is not set"))
        elif at_target == wanted and len(known) == wanted:
            conditions.append(
                Condition(
                    "Converged",
                    "True",
                    "AllNodesConverged",
                    f"{wanted} nodes hold generation {tgt}",
                )
            )
        else:
            conditions.append(
                Condition(
                    "Converged",
                    "False",
                    "Converging",
                    f"{at_target}/{wanted} nodes hold generation {tgt}",
                )
            )
    else:
        status["summary"] = "custom" if spec is not None else "invalid spec"

    state_errors = [
        f"{n}: {r.state_error}"
        for n, r in member_reports.items()
        if r is not None and r.state_error
    ]
    unreachable = [
        p.name for p in members if p.ip and p.ready and member_reports.get(p.name) is None
    ]
    if spec_error is not None:
        conditions.append(Condition("Degraded", "True", "InvalidSpec", spec_error))
    elif refusal is not None:
        conditions.append(Condition("Degraded", "True", refusal[0], refusal[1]))
    elif state_errors:
        conditions.append(
            Condition("Degraded", "True", "InvalidNodeState", "; ".join(state_errors))
        )
    elif unreachable:
        conditions.append(
            Condition(
                "Degraded",
                "True",
                "NodesUnreachable",
                "the operator cannot ask " + ", ".join(unreachable),
            )
        )
    else:
        conditions.append(Condition("Degraded", "False", "AsExpected", "no problem seen"))

    if spec is None:
        conditions.append(
            Condition("Suspended", "Unknown", "InvalidSpec", "the operator rejects the spec")
        )
    elif spec.suspend:
        conditions.append(
            Condition(
                "Suspended",
                "True",
                "Suspended",
                "spec.suspend is true: the nodes start no round trip (they still answer) and"
                " the operator creates, deletes and rolls no pod",
            )
        )
        status["summary"] = f"suspended; {status['summary']}"
    else:
        conditions.append(Condition("Suspended", "False", "Running", "spec.suspend is false"))

    unwell = attention(
        name,
        spec.replicas if spec is not None else None,
        members,
        pods,
        member_reports,
        suspend=spec is not None and spec.suspend,
        target_generation=status.get("targetGeneration"),
        bad_answers=bad_answers,
    )
    if unwell:
        status["nodes"] = unwell[:MAX_NODES_IN_STATUS]
    if len(unwell) > MAX_NODES_IN_STATUS:
        status["nodesNotListed"] = len(unwell) - MAX_NODES_IN_STATUS
    status["conditions"] = merge_conditions(
        previous_conditions, conditions, generation=generation, now=now
    )
    return status


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` status into `desired` (empty if equal).

    Keys present before but absent now are removed with None.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if current.get(key) != value:
            patch[key] = value
    for key in current:
        if key not in desired and key in _OWNED_KEYS:
            patch[key] = None
    return patch


_OWNED_KEYS = frozenset(
    {
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "looping",
        "waiting",
        "selector",
        "summary",
        "targetGeneration",
        "targetDigest",
        "injectedGeneration",
        "convergedGeneration",
        "token",
        "nodes",
        "nodesNotListed",
        "conditions",
    }
)
