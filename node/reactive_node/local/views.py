"""What local mode shows of a loop: the live terminal table, the end-of-run
summary (`run --json`), the web view's model and its timeline.

Pure functions over `NodeView` records (what the supervisor last polled),
tested without processes.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from reactive_node.core.codec import StateDocument, encode
from reactive_node.local.runfile import RunOptions

#: The view draws an edge faintly once it is this much older than the node's newest.
STALE_EDGE_SECONDS = 5.0
#: The web view's timeline: seconds kept, points and events kept (per node).
TIMELINE_SECONDS = 300.0
TIMELINE_POINTS = 900
TIMELINE_EVENTS = 300
#: Decision kinds the timeline shows (reactive_node.core.history.DECISIONS).
TIMELINE_DECISIONS = ("adopt", "regenerate", "acquire", "release")


@dataclass
class NodeView:
    """What the supervisor knows of one node: its process and its last `/v1/state`."""

    name: str
    ordinal: int
    address: str
    pid: int | None = None
    running: bool = False
    restarts: int = 0
    state: StateDocument | None = None  # the last good /v1/state document
    error: str | None = None  # why the last poll failed, if it did

    @property
    def reachable(self) -> bool:
        return self.state is not None and self.error is None

    @property
    def phase(self) -> str:
        if not self.running:
            return "down"
        if not self.reachable or self.state is None:
            return "unreachable"
        return self.state.phase

    def counter(self, key: str) -> int:
        """`loops` or `waits` of the last document (0 without one)."""
        if self.state is None:
            return 0
        return self.state.loops if key == "loops" else self.state.waits

    @property
    def last_wait_reason(self) -> str | None:
        return None if self.state is None else self.state.last_wait_reason


def behaviour_state(view: NodeView) -> Any:
    return None if view.state is None else view.state.state


def is_converged(behavior: str, views: Sequence[NodeView]) -> bool:
    """Whether the loop is settled, judged from what the nodes last said.

    converge: every node answered and all hold the same behaviour state.
    token: every node answered and exactly one holds the token.
    """
    if not views or not all(v.reachable for v in views):
        return False
    if behavior == "token":
        holders = [v for v in views if v.state is not None and v.state.summary.holding is True]
        return len(holders) == 1
    first = json.dumps(behaviour_state(views[0]), sort_keys=True)
    return all(json.dumps(behaviour_state(v), sort_keys=True) == first for v in views[1:])


def _summary(view: NodeView) -> dict[str, Any]:
    """The summary as the node sent it (JSON-like), {} without a document."""
    if view.state is None:
        return {}
    summary: dict[str, Any] = msgspec.json.decode(encode(view.state.summary))
    return summary


def build_summary(options: RunOptions, views: Sequence[NodeView], elapsed: float) -> dict[str, Any]:
    """The end-of-run summary (`--json` prints exactly this)."""
    nodes = [
        {
            "name": v.name,
            "address": v.address,
            "phase": v.phase,
            "loops": v.counter("loops"),
            "waits": v.counter("waits"),
            "lastWaitReason": v.last_wait_reason,
            "restarts": v.restarts,
            "state": behaviour_state(v),
            "summary": _summary(v),
        }
        for v in views
    ]
    generations = [v.state.summary.generation for v in views if v.state is not None]
    return {
        "loop": options.loop,
        "behavior": options.behavior,
        "topology": options.topology,
        "seconds": round(elapsed, 3),
        "nodes": nodes,
        "converged": is_converged(options.behavior, views),
        "loops": sum(n["loops"] for n in nodes),
        "waits": sum(n["waits"] for n in nodes),
        "restarts": sum(v.restarts for v in views),
        "maxGeneration": max((g for g in generations if g is not None), default=None),
        "holders": [v.name for v in views if v.state is not None and v.state.summary.holding],
    }


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(options: RunOptions, views: Sequence[NodeView], elapsed: float) -> str:
    """The live terminal table: one line per node."""
    header = (
        f"{'NODE':<14} {'PHASE':<11} {'LOOPS':>7} {'WAITS':>6} {'LAST WAIT':<12} {'RST':>3}  STATE"
    )
    converged = "yes" if is_converged(options.behavior, views) else "no"
    lines = [
        f"loop {options.loop}: {len(views)} nodes, {options.behavior}/{options.topology}"
        f"   {elapsed:6.1f}s   converged: {converged}",
        header,
    ]
    for v in views:
        reason = v.last_wait_reason or "-"
        state = behaviour_state(v) if v.reachable else (v.error or "-")
        lines.append(
            f"{v.name:<14} {v.phase:<11} {v.counter('loops'):>7} {v.counter('waits'):>6} "
            f"{_short(reason, 12):<12} {v.restarts:>3}  {_short(state, 60)}"
        )
    return "\n".join(lines)


def view_model(
    options: RunOptions,
    views: Sequence[NodeView],
    elapsed: float,
    timeline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON the web view polls: nodes with their phase, edges with their last
    outcome, and the timeline (`Timeline.to_json`) when there is one."""
    by_address = {v.address: v.name for v in views}
    names = {v.name for v in views}
    # A node remembers its last few peers; an edge much older than its newest one
    # (a successor it skipped a while ago, say) is drawn faintly.
    stale_after = max(STALE_EDGE_SECONDS, 3 * (options.interval or 1.0))
    nodes = []
    for v in views:
        edges = []
        raw_edges = [] if v.state is None else v.state.edges
        newest = max((e.at for e in raw_edges), default=0.0)
        for edge in raw_edges:
            to = by_address.get(edge.to, edge.to)
            stale = edge.at < newest - stale_after
            if to in names and v.reachable:
                edges.append({"to": to, "outcome": edge.outcome, "at": edge.at, "stale": stale})
        nodes.append(
            {
                "name": v.name,
                "ordinal": v.ordinal,
                "address": v.address,
                "phase": v.phase,
                "loops": v.counter("loops"),
                "waits": v.counter("waits"),
                "lastWaitReason": v.last_wait_reason,
                "restarts": v.restarts,
                "state": behaviour_state(v),
                "summary": _summary(v),
                "edges": edges,
            }
        )
    return {
        "loop": options.loop,
        "behavior": options.behavior,
        "topology": options.topology,
        "seconds": round(elapsed, 1),
        "converged": is_converged(options.behavior, views),
        "nodes": nodes,
        "timeline": None if timeline is None else dict(timeline),
    }


class Timeline:
    """What the web view's timeline shows (docs/node.md is not involved: local
    mode only): the loop's loops and waits per second from the nodes' counters,
    each node's phase over time, its decisions (from `/v1/history`), and the
    faults the supervisor sees: a node's process exiting, links cut by the
    fault switch. Bounded: `TIMELINE_SECONDS` of time, and at most
    `TIMELINE_POINTS` samples and `TIMELINE_EVENTS` events per node."""

    def __init__(self, window: float = TIMELINE_SECONDS) -> None:
        self.window = window
        self.rates: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=TIMELINE_POINTS
        )
        self._counters: dict[str, tuple[float, int, int]] = {}
        self.phases: dict[str, collections.deque[list[Any]]] = {}
        self.decisions: dict[str, collections.deque[dict[str, Any]]] = {}
        self.faults: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE_EVENTS)
        self.cursors: dict[str, tuple[int, int]] = {}
        self._links: frozenset[tuple[str, str]] = frozenset()

    def sample(self, now: float, views: Sequence[NodeView]) -> None:
        """Take the nodes' counters and phases as last polled, at `now`."""
        loops = waits = 0
        elapsed: list[float] = []
        for v in views:
            phases = self.phases.setdefault(v.name, collections.deque(maxlen=TIMELINE_POINTS))
            if phases and phases[-1][2] == v.phase:
                phases[-1][1] = now
            else:
                if phases:
                    phases[-1][1] = now
                phases.append([now, now, v.phase])
            if not v.reachable:
                continue
            counts = (v.counter("loops"), v.counter("waits"))
            last = self._counters.get(v.name)
            self._counters[v.name] = (now, *counts)
            if last is None:
                continue
            # A restarted node counts from 0 again: its count is then all new.
            loops += counts[0] - last[1] if counts[0] >= last[1] else counts[0]
            waits += counts[1] - last[2] if counts[1] >= last[2] else counts[1]
            elapsed.append(now - last[0])
        if elapsed and max(elapsed) > 0:
            dt = max(elapsed)
            self.rates.append((now, round(loops / dt, 2), round(waits / dt, 2)))
        self._trim(now)

    def history(self, name: str, doc: Mapping[str, Any]) -> None:
        """Take a `/v1/history` answer of node `name` (asked with `since_for`)."""
        entries = doc.get("entries")
        boot, nxt = doc.get("boot"), doc.get("next")
        if not isinstance(entries, list) or not isinstance(boot, int) or not isinstance(nxt, int):
            return
        known = self.cursors.get(name)
        events = self.decisions.setdefault(name, collections.deque(maxlen=TIMELINE_EVENTS))
        for e in entries:
            if not isinstance(e, Mapping) or e.get("kind") not in TIMELINE_DECISIONS:
                continue
            if e.get("restored") and known is not None:
                continue  # copies of entries already shown
            if not isinstance(e.get("at"), int | float):
                continue
            event = {"at": float(e["at"]), "kind": e["kind"]}
            for key in ("generation", "epoch"):
                if key in e:
                    event[key] = e[key]
            events.append(event)
        self.cursors[name] = (boot, nxt)

    def since_for(self, name: str, boot: int | None) -> int | None:
        """The `since` to ask node `name` with: None for a process not seen yet."""
        known = self.cursors.get(name)
        return known[1] if known is not None and known[0] == boot else None

    def exited(self, name: str, now: float, code: int | None) -> None:
        self.faults.append({"kind": "exit", "nodes": [name], "start": now, "code": code})

    def links(self, now: float, blocked: frozenset[tuple[str, str]]) -> None:
        """The fault switch's blocked links at `now` (a partition while non-empty)."""
        if blocked == self._links:
            return
        for fault in self.faults:
            if fault["kind"] == "partition" and fault.get("end") is None:
                fault["end"] = now
        if blocked:
            nodes = sorted({n for link in blocked for n in link})
            self.faults.append(
                {
                    "kind": "partition",
                    "nodes": nodes,
                    "links": sorted([list(link) for link in blocked]),
                    "start": now,
                    "end": None,
                }
            )
        self._links = blocked

    def _trim(self, now: float) -> None:
        start = now - self.window
        while self.rates and self.rates[0][0] < start:
            self.rates.popleft()
        for phases in self.phases.values():
            while phases and phases[0][1] < start:
                phases.popleft()
        for events in self.decisions.values():
            while events and events[0]["at"] < start:
                events.popleft()
        while self.faults and (self.faults[0].get("end") or self.faults[0]["start"]) < start:
            self.faults.popleft()

    def to_json(self, now: float) -> dict[str, Any]:
        names = sorted(set(self.phases) | set(self.decisions))
        return {
            "now": now,
            "window": self.window,
            "rates": [list(r) for r in self.rates],
            "nodes": {
                n: {
                    "phases": [list(p) for p in self.phases.get(n, ())],
                    "decisions": [dict(d) for d in self.decisions.get(n, ())],
                }
                for n in names
            },
            "faults": [dict(f) for f in self.faults],
        }
