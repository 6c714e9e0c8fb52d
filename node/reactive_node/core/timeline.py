"""The timeline picture of a chaos run: one self-contained HTML page with an
inline SVG of nodes by time (no scripts, no external assets). Pure: a string
from an `Observation` and its verdict (docs/chaos.md, "Output").

Lanes are nodes; across them: faults (a kill as a red cross and the time the
node was down, a pause as a grey band, a partition as an orange band on both
sides), wait buckets (yellow, darker for more waits), decisions (an adopt as a
blue dot with its generation, a regeneration as a purple diamond, acting as
the token holder as a green bar), injections on the top axis and violations
as red marks under it. Every mark has a `<title>` (a tooltip).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .verdict import Observation, acting_intervals, unique_entries

LANE: Final = 44
LEFT: Final = 150
TOP: Final = 70
WIDTH: Final = 1100
RIGHT: Final = 30


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(span: float) -> float:
    raw = span / 10 if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return float(step * power)
    return float(10 * power)


def render(obs: Observation, verdict: Mapping[str, Any]) -> str:
    """The HTML page of the timeline."""
    t0 = min([obs.started, *(f.start for f in obs.faults)])
    t1 = max(obs.ended, t0 + 1.0)
    plot = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return round(LEFT + (min(max(t, t0), t1) - t0) / (t1 - t0) * plot, 1)

    lane = {name: i for i, name in enumerate(obs.nodes)}

    def y(node: str) -> float:
        return TOP + lane[node] * LANE

    height = TOP + len(obs.nodes) * LANE + 60
    out: list[str] = []
    add = out.append
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"'
        f' viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">'
    )
    add(f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fff"/>')
    # axis and grid
    step = _ticks(t1 - t0)
    k = 0
    while k * step <= t1 - t0 + 1e-9 and k < 200:
        tx = x(t0 + k * step)
        add(
            f'<line x1="{tx}" y1="{TOP - 8}" x2="{tx}" y2="{height - 50}" stroke="#eee"/>'
            f'<text x="{tx}" y="{height - 36}" text-anchor="middle" fill="#555">'
            f"{k * step:g}s</text>"
        )
        k += 1
    fx = x(obs.faults_end)
    add(
        f'<line x1="{fx}" y1="{TOP - 20}" x2="{fx}" y2="{height - 50}" stroke="#333"'
        ' stroke-dasharray="4 3"><title>faults stopped</title></line>'
        f'<text x="{fx + 3}" y="{TOP - 22}" fill="#333">faults stopped</text>'
    )
    for name in obs.nodes:
        ly = y(name)
        add(
            f'<rect x="{LEFT}" y="{ly}" width="{plot}" height="{LANE - 6}" fill="#fafafa"'
            ' stroke="#ddd"/>'
            f'<text class="node" x="{LEFT - 8}" y="{ly + LANE / 2}" text-anchor="end"'
            f' fill="#222">{_esc(name)}</text>'
        )
    # faults
    for f in obs.faults:
        for name in (*f.nodes, *f.other):
            if name not in lane:
                continue
            ly = y(name)
            x0, x1 = x(f.start), max(x(f.end), x(f.start) + 2)
            if f.kind == "partition":
                tip = f"partition {list(f.nodes)} | {list(f.other)}"
                color = "#f5a623"
            elif f.kind == "pause":
                tip, color = f"paused (SIGSTOP) {f.end - f.start:.1f} s", "#888"
            else:
                tip, color = f"killed (SIGKILL); back after {f.end - f.start:.1f} s", "#d0021b"
            add(
                f'<rect x="{x0}" y="{ly + 2}" width="{x1 - x0}" height="{LANE - 10}"'
                f' fill="{color}" fill-opacity="0.25"><title>{_esc(tip)}</title></rect>'
            )
            if f.kind == "kill":
                add(
                    f'<text x="{x0}" y="{ly + LANE / 2 + 4}" text-anchor="middle"'
                    f' fill="#d0021b" font-size="16" font-weight="bold">X<title>{_esc(tip)}'
                    "</title></text>"
                )
    # waits and decisions
    for name in obs.nodes:
        ly = y(name)
        for e in unique_entries(obs.histories.get(name, [])):
            kind, at = e.get("kind"), float(e["at"])
            if kind == "waits":
                raw = e.get("counts")
                counts: dict[str, int] = (
                    {str(k): v for k, v in raw.items() if isinstance(v, int)}
                    if isinstance(raw, Mapping)
                    else {}
                )
                total = sum(counts.values())
                last = float(e.get("last", at))
                opacity = min(0.9, 0.15 + total / 40)
                add(
                    f'<rect x="{x(at)}" y="{ly + LANE - 12}" width="{max(1.5, x(last) - x(at))}"'
                    f' height="5" fill="#e6b800" fill-opacity="{opacity:.2f}"><title>'
                    f"{total} waits {_esc(counts)}</title></rect>"
                )
            elif kind == "adopt":
                tip = f"adopt generation {e.get('generation')} at {at - t0:.2f}s"
                add(
                    f'<circle cx="{x(at)}" cy="{ly + 12}" r="4" fill="#1f6fd1"><title>'
                    f"{_esc(tip)}</title></circle>"
                    f'<text x="{x(at) + 5}" y="{ly + 10}" fill="#1f6fd1" font-size="9">'
                    f"{_esc(e.get('generation'))}</text>"
                )
            elif kind == "regenerate":
                cx, cy = x(at), ly + 12
                add(
                    f'<path d="M{cx} {cy - 6} L{cx + 6} {cy} L{cx} {cy + 6} L{cx - 6} {cy} Z"'
                    f' fill="#8b3fd1"><title>regenerate epoch {_esc(e.get("epoch"))}'
                    "</title></path>"
                )
    if obs.behavior == "token":
        for interval in acting_intervals(obs):
            if interval.node not in lane:
                continue
            ly = y(interval.node)
            x0 = x(interval.start)
            add(
                f'<rect x="{x0}" y="{ly + 20}" width="{max(1.5, x(interval.end) - x0)}"'
                f' height="8" fill="#2a9d3a"><title>acting, epoch {list(interval.epoch)},'
                f" {interval.end - interval.start:.2f} s</title></rect>"
            )
    for injection in obs.injections:
        ix = x(injection.at)
        add(
            f'<path d="M{ix - 5} {TOP - 40} L{ix + 5} {TOP - 40} L{ix} {TOP - 32} Z"'
            f' fill="{"#1f6fd1" if injection.ok else "#9bb"}"><title>injected generation'
            f" {injection.generation}{'' if injection.ok else ' (unconfirmed)'}</title></path>"
        )
    for v in verdict.get("violations", []):
        at = v.get("at")
        if isinstance(at, int | float):
            vx = x(float(at))
            add(
                f'<line x1="{vx}" y1="{TOP - 12}" x2="{vx}" y2="{height - 50}" stroke="#d0021b"'
                f' stroke-width="2"><title>{_esc(v.get("kind"))}: {_esc(v.get("detail"))}'
                "</title></line>"
            )
    add(
        f'<text x="{LEFT}" y="{TOP - 48}" fill="#222">injections ▼</text>'
        f'<text x="10" y="{height - 14}" fill="#555">'
        "X kill (red band: down) · grey: paused · orange: partitioned · yellow: waits ·"
        " blue dot: adopt (generation) · purple: regenerate · green: acting holder ·"
        " red line: violation</text>"
    )
    add("</svg>")
    ok = bool(verdict.get("ok"))
    counts = verdict.get("violationCounts") or {}
    title = f"reactive-loop chaos: {obs.behavior}, {len(obs.nodes)} nodes"
    status = (
        "no violations"
        if ok
        else "violations: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    )
    faults = verdict.get("faultCounts") or {}
    summary = ", ".join(f"{n} {k}" for k, n in faults.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_esc(title)}</title></head>\n<body style="font-family:sans-serif">'
        f'<h1 style="font-size:18px">{_esc(title)}</h1>'
        f'<p style="color:{"#2a7a2a" if ok else "#d0021b"}"><b>{_esc(status)}</b>;'
        f" faults: {_esc(summary or 'none')}; decisions checked:"
        f" {_esc(verdict.get('decisionsChecked'))}</p>\n"
        + "".join(out)
        + "\n"
        + _violations_table(verdict.get("violations", []))
        + "</body></html>\n"
    )


def _violations_table(violations: Sequence[Mapping[str, Any]]) -> str:
    if not violations:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(v.get('kind'))}</td><td>{_esc(v.get('detail'))}</td></tr>"
        for v in violations
    )
    head = "<tr><th>kind</th><th>detail</th></tr>"
    return f'<table border="1" cellpadding="3">{head}{rows}</table>\n'
