"""What `kubectl rloop` shows, pure: durations and times from the command line,
the per-node status table (the table of `reactive-loop run`, for pods) and the
merged decision history. Plain functions over the documents the nodes serve
(`/v1/state`, `/metrics`, `/v1/history`; docs/node.md), tested without a
cluster.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from prometheus_client.parser import text_string_to_metric_families
from reactive_node.core import contract
from reactive_node.core.codec import StateDocument, encode

#: Longest chaos run, seconds (as `reactive-loop chaos`).
MAX_DURATION: Final = 600.0
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
#: Widest cell of the STATE and DETAIL columns.
CELL: Final = 48


def parse_duration(text: str) -> float:
    """Seconds of `60`, `60s`, `1.5m`, `1m30s`, `500ms`, `1h`; ValueError naming the text."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("an empty duration")
    try:
        value = float(raw)
    except ValueError:
        pos, total = 0, 0.0
        for match in _DURATION.finditer(raw):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(raw) or pos == 0:
            raise ValueError(
                f"{text!r} is not a duration (e.g. 60, 60s, 1.5m, 1m30s, 500ms, 1h)"
            ) from None
        value = total
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a duration of zero seconds or more")
    return value


def since_query(text: str, now: float) -> str:
    """The node's `?since=` for `--since`: a duration back from `now` (`5m`), or an
    RFC 3339 time with a zone (`2026-12-01T05:00:00Z`); unix seconds with a
    fraction, which the node reads as a time (a whole number would be a rev)."""
    raw = text.strip()
    try:
        when = now - parse_duration(raw)
    except ValueError:
        try:
            stamp = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--since {text!r} is neither a duration (5m) nor an RFC 3339 time with a zone"
            ) from None
        if stamp.tzinfo is None:
            raise ValueError(f"--since {text!r} has no time zone (add Z or +00:00)") from None
        when = stamp.timestamp()
    return f"{max(0.0, when):.3f}"


def waits_by_reason(metrics: str) -> dict[str, int]:
    """`reactive_loop_waits_total` by `reason` from a node's `/metrics` text."""
    out: dict[str, int] = {}
    try:
        families = list(text_string_to_metric_families(metrics))
    except ValueError:
        return out
    for family in families:
        for sample in family.samples:
            if sample.name == contract.M_WAITS and "reason" in sample.labels:
                reason = sample.labels["reason"]
                out[reason] = out.get(reason, 0) + int(sample.value)
    return out


@dataclass(frozen=True)
class NodeRow:
    """One ordinal of a loop: its pod (if any) and what its node said."""

    ordinal: int
    pod: str | None = None
    """The pod's name; None when the loop has no pod for the ordinal."""
    pod_ready: bool = False
    pod_phase: str | None = None
    restarts: int = 0
    state: StateDocument | None = None
    """The node's last `/v1/state`, None if it could not be read (or was malformed)."""
    waits: Mapping[str, int] | None = None
    """Waits by reason (`/metrics`), None if they could not be read."""
    error: str | None = None
    """Why the node could not be read."""
    via: str | None = None
    """How the node was read: `proxy` or `port-forward`."""


@dataclass(frozen=True)
class LoopInfo:
    """The ReactiveLoop as its spec and status say."""

    name: str
    namespace: str
    behavior: str = "converge"
    topology: str = "ring"
    replicas: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def _as_json(value: Any) -> Any:
    """A struct (or anything encodable) as plain JSON data."""
    return msgspec.json.decode(encode(value))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def decision(behavior: str, row: NodeRow) -> str:
    """The GEN/HOLDER cell: a converge node's generation; a token node's holding and epoch."""
    if row.state is None:
        return "-"
    summary = row.state.summary
    if behavior == "token":
        epoch = summary.epoch
        text = "-" if epoch is None else json.dumps(list(epoch), separators=(",", ":"))
        if summary.holding is True:
            return f"holder e={text}"
        if summary.held is True:
            return f"held e={text} (lease stale)"
        return f"e={text}" if epoch is not None else "-"
    generation = summary.generation
    return "-" if generation is None else f"gen {generation}"


def last_peer(row: NodeRow, now: float) -> str:
    """The newest round trip the node made: peer, outcome and age."""
    edges = [] if row.state is None else row.state.edges
    timed = [(_number(e.at), e) for e in edges]
    newest = max(((at, e) for at, e in timed if at is not None), key=lambda p: p[0], default=None)
    if newest is None:
        return "-"
    at, edge = newest
    return f"{edge.to} {edge.outcome} {max(0.0, now - at):.1f}s ago"


def waits_cell(row: NodeRow) -> str:
    """Total waits, then the reasons with counts (most first)."""
    if row.state is None:
        return "-"
    total = row.state.waits
    if not row.waits:
        return str(total)
    reasons = sorted(row.waits.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{total} (" + " ".join(f"{k}={v}" for k, v in reasons if v) + ")"


def phase(row: NodeRow) -> str:
    if row.pod is None:
        return "no pod"
    if row.state is None:
        return "unreachable" if row.pod_phase == "Running" else (row.pod_phase or "unknown").lower()
    return row.state.phase


def settled(behavior: str, rows: Sequence[NodeRow]) -> bool:
    """Every node answered and: converge — all hold one behaviour state; token —
    exactly one acts as the holder (as `reactive-loop run` judges it)."""
    if not rows or any(r.state is None for r in rows):
        return False
    if behavior == "token":
        return sum(1 for r in rows if r.state is not None and r.state.summary.holding is True) == 1
    states = {json.dumps(None if r.state is None else r.state.state, sort_keys=True) for r in rows}
    return len(states) == 1


def _cell(text: str, width: int = CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = []
    for cells in (header, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def render_status(loop: LoopInfo, rows: Sequence[NodeRow], now: float, via: str) -> str:
    """The status table: a summary line, then one line per ordinal."""
    converged = "yes" if settled(loop.behavior, rows) else "no"
    gen = "HOLDER" if loop.behavior == "token" else "GEN"
    lines = [
        f"loop {loop.name} (namespace {loop.namespace}): {loop.behavior}/{loop.topology},"
        f" {loop.replicas} replicas, {sum(1 for r in rows if r.pod)} pods;"
        f" settled: {converged}; read via {via}"
    ]
    cells = []
    for r in rows:
        loops = "-" if r.state is None else str(r.state.loops)
        cells.append(
            [
                str(r.ordinal),
                r.pod or "-",
                "yes" if r.pod_ready else "no",
                phase(r),
                _cell(decision(loop.behavior, r)),
                loops,
                _cell(waits_cell(r)),
                _cell(last_peer(r, now) if r.error is None else r.error),
                str(r.restarts),
            ]
        )
    header = ["ORD", "POD", "READY", "PHASE", gen, "LOOPS", "WAITS", "LAST PEER", "RESTARTS"]
    lines += _table(header, cells)
    return "\n".join(lines)


def status_document(loop: LoopInfo, rows: Sequence[NodeRow], via: str) -> dict[str, Any]:
    """`status -o json`: the loop and, per ordinal, the pod and the node's documents."""
    return {
        "loop": loop.name,
        "namespace": loop.namespace,
        "behavior": loop.behavior,
        "topology": loop.topology,
        "replicas": loop.replicas,
        "settled": settled(loop.behavior, rows),
        "via": via,
        "nodes": [
            {
                "ordinal": r.ordinal,
                "pod": r.pod,
                "podReady": r.pod_ready,
                "podPhase": r.pod_phase,
                "restarts": r.restarts,
                "phase": phase(r),
                "via": r.via,
                "error": r.error,
                "waitsByReason": None if r.waits is None else dict(r.waits),
                "state": None if r.state is None else _as_json(r.state),
            }
            for r in rows
        ],
    }


def _utc(at: float) -> str:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def entry_detail(entry: Mapping[str, Any]) -> str:
    """What one history entry says, in a few words."""
    kind = entry.get("kind")
    if kind == "adopt":
        return f"gen {entry.get('generation')} target {entry.get('target')}"
    if kind in ("acquire", "release", "regenerate"):
        return f"epoch {json.dumps(entry.get('epoch'), separators=(',', ':'))}"
    if kind == "waits":
        counts = entry.get("counts")
        if isinstance(counts, Mapping):
            return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return "-"
    if kind == "edit":
        rest = {k: v for k, v in entry.items() if k not in ("seq", "rev", "at", "kind", "boot")}
        return json.dumps(rest, separators=(",", ":"), sort_keys=True)
    return "-"


def entry_peer(entry: Mapping[str, Any]) -> str:
    rt = entry.get("rt")
    if not isinstance(rt, Mapping):
        return "-"
    return (
        f"{rt.get('peer', '?')} ({rt.get('role', '?')} {rt.get('boot', '?')}/{rt.get('seq', '?')})"
    )


def history_rows(docs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every node's entries, each with its `node`, merged in time order."""
    rows: list[dict[str, Any]] = []
    for node, doc in docs.items():
        entries = doc.get("entries")
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, Mapping) and _number(entry.get("at")) is not None:
                rows.append({**entry, "node": node})
    rows.sort(key=lambda e: (float(e["at"]), str(e["node"]), int(e.get("seq", 0) or 0)))
    return rows


def render_history(
    loop: LoopInfo, docs: Mapping[str, Mapping[str, Any]], errors: Mapping[str, str], via: str
) -> str:
    """The merged history table (times in UTC), then the nodes that could not be read."""
    rows = history_rows(docs)
    lines = [
        f"loop {loop.name} (namespace {loop.namespace}): {len(rows)} entries"
        f" from {len(docs)} nodes; read via {via}"
    ]
    cells = [
        [
            _utc(float(e["at"])),
            str(e["node"]),
            str(e.get("kind", "?")) + (" (restored)" if e.get("restored") else ""),
            _cell(entry_detail(e), 60),
            _cell(entry_peer(e), 60),
        ]
        for e in rows
    ]
    lines += _table(["TIME (UTC)", "NODE", "KIND", "DETAIL", "ROUND TRIP"], cells)
    lines += [f"{node}: not read ({why})" for node, why in sorted(errors.items())]
    return "\n".join(lines)
