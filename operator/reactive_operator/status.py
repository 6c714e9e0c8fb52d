"""Aggregate the nodes' own reports into a ReactiveLoop status (pure).

Input: the pods as observed, each node's `GET /v1/state` answer (or nothing if
it could not be asked), the validated spec (or the reason it is invalid), and
the previous conditions (so that `lastTransitionTime` only moves on a real
transition). Output: the complete `status` mapping the handler patches when it
differs from the current one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .builders import selector
from .plan import PodView
from .spec import LoopSpec

MAX_NODES_IN_STATUS = 64
MAX_MESSAGE = 512


class Summary(BaseModel):
    model_config = ConfigDict(extra="ignore")
    generation: int | None = None
    target: Any = None
    holding: bool | None = None
    epoch: tuple[int, int] | None = None


class NodeReport(BaseModel):
    """The part of a node's `/v1/state` answer the operator uses."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    node: str
    ordinal: int | None = None
    ready: bool = False
    phase: str = "starting"
    loops: int = 0
    waits: int = 0
    last_wait_reason: str | None = Field(None, alias="lastWaitReason")
    state_error: str | None = Field(None, alias="stateError")
    summary: Summary = Field(default_factory=Summary)


def parse_report(raw: Mapping[str, Any]) -> NodeReport | None:
    """A node answer, or None if it is not one (counted as unreachable)."""
    try:
        return NodeReport.model_validate(dict(raw))
    except ValidationError:
        return None


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


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


def _node_entry(pod: PodView, report: NodeReport | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": pod.name, "ordinal": pod.ordinal, "ready": pod.ready}
    if report is None:
        entry["phase"] = "unreachable" if pod.ip else "starting"
        return entry
    entry.update(phase=report.phase, loops=report.loops, waits=report.waits)
    if report.last_wait_reason:
        entry["lastWaitReason"] = report.last_wait_reason
    if report.summary.generation is not None:
        entry["generation"] = report.summary.generation
    if report.summary.holding is not None:
        entry["holding"] = report.summary.holding
    if report.state_error:
        entry["stateError"] = _clip(report.state_error)
    return entry


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
) -> dict[str, Any]:
    """Compute the full status of one loop."""
    wanted = spec.replicas if spec is not None else len(pods)
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.ordinal)
    members = [p for p in live if p.ordinal < wanted]
    ready = sum(1 for p in members if p.ready)
    member_reports = {p.name: reports.get(p.name) for p in members}
    looping = sum(1 for r in member_reports.values() if r is not None and r.phase == "looping")

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": len(live),
        "readyReplicas": ready,
        "looping": looping,
        "waiting": len(members) - looping,
        "selector": selector(name),
        "nodes": [_node_entry(p, member_reports.get(p.name)) for p in members][
            :MAX_NODES_IN_STATUS
        ],
    }
    conditions: list[Condition] = []

    if ready == wanted and len(members) == wanted:
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
        token: dict[str, Any] = {"holders": len(holders)}
        if holders:
            (term, ordinal), holder = holders[0]
            token.update(holder=holder, term=term, ordinal=ordinal)
            status["summary"] = f"{holder} holds epoch {term}.{ordinal}"
        else:
            status["summary"] = "no holder"
        status["token"] = token
        if len(holders) == 1:
            conditions.append(
                Condition("TokenHealthy", "True", "OneHolder", f"{holders[0][1]} holds the token")
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
    elif spec is not None and spec.is_converge:
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
        status["summary"] = (
            f"generation {converged_gen if converged_gen is not None else '-'}/{tgt}"
        )
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


#: Per-node fields that move on every round trip; alone they do not justify a write.
COUNTER_FIELDS = ("loops", "waits")


def without_counters(status: Mapping[str, Any]) -> dict[str, Any]:
    """`status` minus the per-node loop/wait counters (to tell a real change)."""
    out = dict(status)
    nodes = out.get("nodes")
    if isinstance(nodes, list):
        out["nodes"] = [
            {k: v for k, v in n.items() if k not in COUNTER_FIELDS} if isinstance(n, Mapping) else n
            for n in nodes
        ]
    return out


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
        "conditions",
    }
)
