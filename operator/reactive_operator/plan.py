"""Decide what to create, delete, annotate or roll for one loop (pure).

The reconciler observes the loop's pods and node RBAC, calls `plan`, and
carries out the result. Rules:

- a missing pod below `replicas` is created (its RBAC first);
- scaling down deletes pods with ordinal ≥ replicas, highest first, and their
  RBAC once the pod is gone; scaling touches no other pod except the
  operator-owned replicas annotation;
- a Failed or Succeeded pod is deleted so that it is recreated;
- a pod whose spec-hash differs from the desired one is rolled (deleted,
  then recreated) one at a time, and only while every other node is ready;
- while the loop is suspended nothing is created, deleted or rolled: only the
  operator-owned suspended annotation is set (the nodes then start no round
  trip); on resume it is cleared and the rules above apply again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reactive_node.core import contract as c


@dataclass(frozen=True)
class PodView:
    """What the plan needs to know about one existing node pod."""

    name: str
    ordinal: int
    spec_hash: str | None = None
    replicas_annotation: str | None = None
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    ip: str | None = None
    suspended_annotation: str | None = None


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
        suspended_annotation=annotations.get(c.SUSPENDED_ANNOTATION),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
        ip=status.get("podIP") or None,
    )


@dataclass(frozen=True)
class Plan:
    create_rbac: tuple[int, ...] = ()
    create_pods: tuple[int, ...] = ()
    delete_pods: tuple[str, ...] = ()
    delete_rbac: tuple[int, ...] = ()
    annotate_replicas: tuple[str, ...] = ()
    annotate_suspended: tuple[str, ...] = ()
    """Pods whose suspended annotation must be set to the wanted value."""
    roll: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (
            self.create_rbac
            or self.create_pods
            or self.delete_pods
            or self.delete_rbac
            or self.annotate_replicas
            or self.annotate_suspended
            or self.roll
        )


def plan(
    *,
    replicas: int,
    spec_hash: str,
    pods: list[PodView],
    rbac_ordinals: set[int],
    suspend: bool = False,
) -> Plan:
    """Compare desired and observed state; return the actions, idempotently."""
    flag = suspended_value(suspend)
    annotate_suspended = tuple(
        p.name
        for p in sorted(pods, key=lambda p: p.ordinal)
        if not p.deleting and (p.suspended_annotation or "false") != flag
    )
    if suspend:
        return Plan(annotate_suspended=annotate_suspended, notes=("suspended",))
    by_ordinal: dict[int, PodView] = {}
    for pod in sorted(pods, key=lambda p: (p.ordinal, p.deleting)):
        by_ordinal.setdefault(pod.ordinal, pod)
    notes: list[str] = []

    create_pods = tuple(o for o in range(replicas) if o not in by_ordinal)
    create_rbac = tuple(o for o in range(replicas) if o not in rbac_ordinals)

    surplus = sorted(
        (p for p in pods if p.ordinal >= replicas and not p.deleting),
        key=lambda p: p.ordinal,
        reverse=True,
    )
    failed = [
        p
        for p in pods
        if p.ordinal < replicas and not p.deleting and p.phase in ("Failed", "Succeeded")
    ]
    delete_pods = [p.name for p in surplus] + [p.name for p in failed]
    if failed:
        notes.append("recreating " + ", ".join(p.name for p in failed))

    alive_ordinals = {p.ordinal for p in pods}
    delete_rbac = tuple(
        sorted(
            (o for o in rbac_ordinals if o >= replicas and o not in alive_ordinals), reverse=True
        )
    )

    roll: str | None = None
    healthy = (
        not create_pods
        and not failed
        and all(by_ordinal[o].ready and not by_ordinal[o].deleting for o in range(replicas))
    )
    outdated = [
        by_ordinal[o]
        for o in range(replicas)
        if o in by_ordinal and by_ordinal[o].spec_hash != spec_hash
    ]
    if outdated and healthy:
        roll = max(outdated, key=lambda p: p.ordinal).name
    elif outdated:
        notes.append(f"{len(outdated)} pod(s) outdated; rolling waits until every node is ready")

    wanted = str(replicas)
    annotate = tuple(
        p.name
        for p in sorted(pods, key=lambda p: p.ordinal)
        if p.ordinal < replicas
        and not p.deleting
        and p.name not in delete_pods
        and p.name != roll
        and p.replicas_annotation != wanted
    )

    return Plan(
        create_rbac=create_rbac,
        create_pods=create_pods,
        delete_pods=tuple(delete_pods),
        delete_rbac=delete_rbac,
        annotate_replicas=annotate,
        annotate_suspended=tuple(
            n for n in annotate_suspended if n not in delete_pods and n != roll
        ),
        roll=roll,
        notes=tuple(notes),
    )


def suspended_value(suspend: bool) -> str:
    """The suspended annotation's value for `spec.suspend` (absent reads as "false")."""
    return "true" if suspend else "false"
