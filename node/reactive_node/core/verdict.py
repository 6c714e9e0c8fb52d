"""The chaos checker: invariants over the decision histories of a loop, pure and
I/O-free (docs/chaos.md). `reactive-loop chaos` collects the histories, the
faults it injected and the targets it injected, and `check` says what broke.

Times are wall-clock seconds (all nodes of a local loop share one clock).

Violations, by `kind`:

* `regression` — a node adopted a lower converge generation than it held;
* `phantom` — a node adopted a (generation, target) that nobody injected
  (neither the chaos run nor the state the loop held when it started);
* `not_converged` — a node did not hold the newest generation within
  `Bounds.converge` seconds after the faults stopped;
* `two_holders` — two nodes acted as the token holder at one instant;
* `epoch_order` — a token acquisition's epoch was not above every earlier one;
* `no_holder` — no instant with exactly one acting holder within
  `Bounds.token` seconds after the faults stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .behaviors.base import DRIFT_FACTOR

#: Most violations listed per kind (the count is always exact).
MAX_LISTED: Final = 50


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The timings of the loop and the bounds they give (docs/chaos.md)."""

    nodes: int
    interval: float
    timeout: float
    max_backoff: float
    loss_timeout: float
    lease: float

    @property
    def converge(self) -> float:
        """Seconds after the faults stop within which every node holds the newest
        generation: one backoff (a node may be sleeping its longest one), then
        two round trips per node (`2·N·(interval + timeout)`)."""
        return self.max_backoff + 2 * self.nodes * (self.interval + self.timeout)

    @property
    def token(self) -> float:
        """Seconds after the faults stop within which one node acts as the holder:
        the bound docs/node.md states ("Known limits of the token"), `lossTimeout
        + 2·interval + guard + maxBackoff` (the guard is 1.25 leases), which the
        simulation's properties check."""
        return self.loss_timeout + 2 * self.interval + DRIFT_FACTOR * self.lease + self.max_backoff

    @property
    def token_goal(self) -> float:
        """Issue 10's goal for the same, `lossTimeout + 2·interval` (reported, not enforced)."""
        return self.loss_timeout + 2 * self.interval

    def to_json(self) -> dict[str, float]:
        return {
            "nodes": self.nodes,
            "interval": self.interval,
            "timeout": self.timeout,
            "maxBackoff": self.max_backoff,
            "tokenLossTimeout": self.loss_timeout,
            "tokenLease": self.lease,
            "convergeSeconds": round(self.converge, 3),
            "tokenSeconds": round(self.token, 3),
            "tokenGoalSeconds": round(self.token_goal, 3),
        }


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault as it happened: `kill`, `pause` or `partition`."""

    kind: str
    start: float
    end: float
    """When it was undone: a pause resumed, a link restored, a killed node ready again."""
    nodes: tuple[str, ...]
    """The node killed or paused; a partition's one side."""
    other: tuple[str, ...] = ()
    """A partition's other side."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "nodes": list(self.nodes),
        }
        if self.other:
            out["other"] = list(self.other)
        return out


@dataclasses.dataclass(frozen=True)
class Injection:
    """A target the chaos run injected: its generation and target digest."""

    at: float
    generation: int
    target: str
    ok: bool
    """Whether a node confirmed it; an unconfirmed one may still have been taken."""

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "generation": self.generation, "target": self.target, "ok": self.ok}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A node acting as the token holder from `start` to `end`."""

    node: str
    epoch: tuple[int, int]
    start: float
    end: float
    open: bool = False
    """Still acting when the observation ended."""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "epoch": list(self.epoch),
            "start": self.start,
            "end": self.end,
            "open": self.open,
        }


@dataclasses.dataclass
class Observation:
    """What a chaos run saw. `histories` maps a node to its entries (as
    `/v1/history` gives them, each with the `boot` of the process that served
    it); `baseline` maps a node to the (generation, target digest) it held
    when the run started."""

    behavior: str
    nodes: Sequence[str]
    started: float
    faults_end: float
    ended: float
    bounds: Bounds
    histories: Mapping[str, Sequence[Mapping[str, Any]]]
    faults: Sequence[Fault] = ()
    injections: Sequence[Injection] = ()
    baseline: Mapping[str, tuple[int, str] | None] = dataclasses.field(default_factory=dict)


def _epoch(value: Any) -> tuple[int, int] | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def unique_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A node's entries without the copies a restart restored (the same kind,
    time and details), oldest first."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for entry in entries:
        if _number(entry.get("at")) is None:
            continue
        body = {k: v for k, v in entry.items() if k not in ("seq", "rev", "restored", "boot")}
        key = json.dumps(body, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        out.append(dict(entry))
    out.sort(key=lambda e: float(e["at"]))
    return out


class _Report:
    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def add(self, kind: str, at: float | None, detail: str, **extra: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_LISTED:
            self.listed.append({"kind": kind, "at": at, "detail": detail, **extra})


def _check_converge(
    obs: Observation, entries: Mapping[str, list[dict[str, Any]]], report: _Report
) -> dict[str, float | None]:
    allowed: dict[int, set[str]] = {}
    for injection in obs.injections:
        allowed.setdefault(injection.generation, set()).add(injection.target)
    for held in obs.baseline.values():
        if held is not None:
            allowed.setdefault(held[0], set()).add(held[1])
    newest = max(
        [
            int(e["generation"])
            for es in entries.values()
            for e in es
            if e.get("kind") == "adopt" and isinstance(e.get("generation"), int)
        ]
        + [h[0] for h in obs.baseline.values() if h is not None],
        default=None,
    )
    # The clock starts when the faults stopped, or at the last injection if later.
    since = max([obs.faults_end, *(i.at for i in obs.injections)])
    converged: dict[str, float | None] = {}
    for node in obs.nodes:
        highest: int | None = None
        reached: float | None = None
        held = obs.baseline.get(node)
        if held is not None and held[0] == newest:
            reached = obs.started
        for e in entries.get(node, []):
            if e.get("kind") != "adopt" or not isinstance(e.get("generation"), int):
                continue
            at, generation = float(e["at"]), int(e["generation"])
            if highest is not None and generation < highest:
                report.add(
                    "regression",
                    at,
                    f"{node} adopted generation {generation} after {highest}",
                    node=node,
                )
            highest = generation if highest is None else max(highest, generation)
            if at >= obs.started and str(e.get("target")) not in allowed.get(generation, set()):
                report.add(
                    "phantom",
                    at,
                    f"{node} adopted generation {generation} with target {e.get('target')},"
                    " which was never injected",
                    node=node,
                )
            if generation == newest and reached is None:
                reached = max(at, obs.started)
        converged[node] = None if reached is None else max(0.0, reached - since)
        deadline = since + obs.bounds.converge
        if newest is not None and (reached is None or reached > deadline):
            when = "never" if reached is None else f"{reached - since:.2f} s"
            report.add(
                "not_converged",
                deadline,
                f"{node} held generation {newest} {when} after the faults stopped"
                f" and the last injection (bound {obs.bounds.converge:.2f} s)",
                node=node,
            )
    return converged


def acting_intervals(obs: Observation) -> list[Interval]:
    """Each node's acting intervals from its acquire/release entries (restored
    copies are not used). An interval a process never closed ends when it was
    killed (a `kill` fault of the node), else when the node's next process
    started (its `boot`), else it is open at `ended`. A pause stops a process:
    an interval whose release came only after a pause of its node (the node
    found its lease lapsed when it resumed) ends at the pause's start plus the
    lease, when the lease had run out at the latest."""
    intervals: list[Interval] = []
    for node in obs.nodes:
        intervals.extend(_node_intervals(obs, node))
    intervals.sort(key=lambda i: (i.start, i.node))
    return intervals


def _node_intervals(obs: Observation, node: str) -> list[Interval]:
    entries = unique_entries([e for e in obs.histories.get(node, []) if not e.get("restored")])
    boots = sorted({int(str(e["boot"])) for e in entries if str(e.get("boot", "")).isdigit()})
    kills = sorted(f.start for f in obs.faults if f.kind == "kill" and node in f.nodes)
    pauses = [f for f in obs.faults if f.kind == "pause" and node in f.nodes]
    out: list[Interval] = []

    def close(epoch: tuple[int, int], start: float, boot: str, release: float | None) -> None:
        end = release
        if end is None:  # the process ended without a release: killed, or restarted
            ends = [k for k in kills if k >= start][:1]
            if boot.isdigit():
                ends += [b / 1e9 for b in boots if b > int(boot) and b / 1e9 >= start][:1]
            end = min(ends) if ends else None
        for pause in pauses:
            if start <= pause.start and (end is None or end >= pause.end):
                end = min(obs.ended if end is None else end, pause.start + obs.bounds.lease)
        if end is None:
            out.append(Interval(node, epoch, start, obs.ended, open=True))
        else:
            out.append(Interval(node, epoch, start, max(start, end)))

    current: tuple[tuple[int, int], float, str] | None = None
    for e in entries:
        kind, epoch, at = e.get("kind"), _epoch(e.get("epoch")), float(e["at"])
        boot = str(e.get("boot", ""))
        if current is not None and boot != current[2]:
            close(*current, None)
            current = None
        if kind == "acquire" and epoch is not None:
            if current is not None:
                close(*current, at)
            current = (epoch, at, boot)
        elif kind == "release" and current is not None:
            close(*current, at)
            current = None
    if current is not None:
        close(*current, None)
    return out


def _check_token(obs: Observation, intervals: Sequence[Interval], report: _Report) -> float | None:
    for i, a in enumerate(intervals):
        for b in intervals[i + 1 :]:
            if b.start >= a.end:
                break
            if b.node != a.node and b.start < a.end and a.start < b.end:
                report.add(
                    "two_holders",
                    b.start,
                    f"{a.node} (epoch {list(a.epoch)}) and {b.node} (epoch {list(b.epoch)})"
                    f" both acted from {b.start:.3f} to {min(a.end, b.end):.3f}",
                    nodes=[a.node, b.node],
                )
    highest: tuple[int, int] | None = None
    for interval in sorted(intervals, key=lambda i: i.start):
        if highest is not None and interval.epoch <= highest:
            report.add(
                "epoch_order",
                interval.start,
                f"{interval.node} acquired epoch {list(interval.epoch)}"
                f" after epoch {list(highest)} had been acquired",
                node=interval.node,
            )
        highest = interval.epoch if highest is None else max(highest, interval.epoch)
    moments = sorted(
        {obs.faults_end}
        | {t for i in intervals for t in (i.start, i.end) if obs.faults_end <= t <= obs.ended}
    )
    recovered: float | None = None
    for t in moments:
        if sum(1 for i in intervals if i.start <= t < i.end or (i.open and i.start <= t)) == 1:
            recovered = t
            break
    bound = token_bound(obs)
    deadline = obs.faults_end + bound
    if recovered is None or recovered > deadline:
        report.add(
            "no_holder",
            deadline if recovered is None else recovered,
            "no single acting holder "
            + (
                "after the faults stopped"
                if recovered is None
                else f"until {recovered - obs.faults_end:.2f} s after the faults stopped"
            )
            + f" (bound {bound:.2f} s)",
        )
    return None if recovered is None else recovered - obs.faults_end


def token_bound(obs: Observation) -> float:
    """The `no_holder` bound of a run: issue 10's `lossTimeout + 2·interval`
    after partitions only (the simulation's partition property), the looser
    `Bounds.token` once a node was killed or paused (a restarted node keeps its
    whole guard; docs/node.md, "After a heal")."""
    if all(f.kind == "partition" for f in obs.faults):
        return obs.bounds.token_goal
    return obs.bounds.token


def check(obs: Observation) -> dict[str, Any]:
    """The verdict of a chaos run (the JSON `reactive-loop chaos` prints)."""
    entries = {n: unique_entries(obs.histories.get(n, [])) for n in obs.nodes}
    decisions = sum(
        1
        for es in entries.values()
        for e in es
        if e.get("kind") in ("adopt", "regenerate", "acquire", "release")
    )
    report = _Report()
    verdict: dict[str, Any] = {
        "behavior": obs.behavior,
        "nodes": list(obs.nodes),
        "started": obs.started,
        "faultsEnd": obs.faults_end,
        "ended": obs.ended,
        "bounds": obs.bounds.to_json(),
        "faults": [f.to_json() for f in obs.faults],
        "faultCounts": {
            k: sum(1 for f in obs.faults if f.kind == k) for k in ("kill", "pause", "partition")
        },
        "injections": [i.to_json() for i in obs.injections],
        "decisionsChecked": decisions,
    }
    if obs.behavior == "token":
        intervals = acting_intervals(obs)
        recovered = _check_token(obs, intervals, report)
        verdict["holderAfterFaults"] = recovered
        verdict["holderBound"] = round(token_bound(obs), 3)
        verdict["tokenGoalMet"] = recovered is not None and recovered <= obs.bounds.token_goal
        verdict["acting"] = [i.to_json() for i in intervals]
    else:
        verdict["convergedAfterFaults"] = _check_converge(obs, entries, report)
    verdict["violationCounts"] = dict(report.counts)
    verdict["violations"] = report.listed
    verdict["ok"] = not report.counts
    return verdict
