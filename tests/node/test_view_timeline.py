"""The web view's timeline (issue 10 §6): the supervisor's pure recorder, and
the page drawing it in headless Chromium next to the ring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node.test_view import dump_dom, model, serve
from reactive_node.core.codec import decode_state_document
from reactive_node.local.views import TIMELINE_EVENTS, NodeView, Timeline
from reactive_node.local.web import create_view_app


def view(i: int, loops: int, waits: int, phase: str = "looping") -> NodeView:
    v = NodeView(name=f"local-{i}", ordinal=i, address=f"127.0.0.1:{9000 + i}")
    v.running = phase != "down"
    if phase not in ("down", "unreachable"):
        v.state = decode_state_document(
            {"node": v.name, "phase": phase, "loops": loops, "waits": waits}
        )
    else:
        v.error = "timeout"
    return v


def test_rates_are_loops_and_waits_per_second_across_restarts() -> None:
    t = Timeline()
    t.sample(100.0, [view(0, 10, 1), view(1, 20, 0)])
    assert not t.rates  # a rate needs two samples
    t.sample(102.0, [view(0, 14, 3), view(1, 26, 0)])
    assert list(t.rates) == [(102.0, 5.0, 1.0)]
    # local-1 restarted: its counters start again from 0, and count as new.
    t.sample(104.0, [view(0, 18, 3), view(1, 2, 0)])
    assert list(t.rates)[-1] == (104.0, 3.0, 0.0)


def test_phases_are_segments_over_time() -> None:
    t = Timeline()
    t.sample(1.0, [view(0, 0, 0)])
    t.sample(2.0, [view(0, 1, 0)])
    t.sample(3.0, [view(0, 1, 0, "unreachable")])
    t.sample(4.0, [view(0, 1, 0, "unreachable")])
    t.sample(5.0, [view(0, 2, 0)])
    assert [list(p) for p in t.phases["local-0"]] == [
        [1.0, 3.0, "looping"],
        [3.0, 5.0, "unreachable"],
        [5.0, 5.0, "looping"],
    ]


def test_history_decisions_cursor_and_bounds() -> None:
    t = Timeline()
    assert t.since_for("local-0", 7) is None
    entries: list[dict[str, Any]] = [
        {"at": 1.0, "kind": "adopt", "generation": 2, "seq": 1},
        {"at": 1.5, "kind": "waits", "counts": {"timeout": 2}, "seq": 2},
        {"at": 2.0, "kind": "acquire", "epoch": [1, 0], "seq": 3},
    ]
    t.history("local-0", {"boot": 7, "next": 3, "entries": entries})
    assert t.since_for("local-0", 7) == 3
    assert t.since_for("local-0", 8) is None  # a new process is read whole
    assert [d["kind"] for d in t.decisions["local-0"]] == ["adopt", "acquire"]
    restored = [{"at": 1.0, "kind": "adopt", "generation": 2, "restored": True}]
    t.history("local-0", {"boot": 8, "next": 1, "entries": restored})
    assert len(t.decisions["local-0"]) == 2  # a restored copy is not shown twice
    many = [{"at": 3.0 + i, "kind": "adopt", "generation": i} for i in range(1000)]
    t.history("local-0", {"boot": 8, "next": 1001, "entries": many})
    assert len(t.decisions["local-0"]) == TIMELINE_EVENTS


def test_faults_exits_and_partitions() -> None:
    t = Timeline()
    t.exited("local-2", 5.0, -9)
    t.links(6.0, frozenset({("local-0", "local-1"), ("local-1", "local-0")}))
    t.links(6.5, frozenset({("local-0", "local-1"), ("local-1", "local-0")}))  # unchanged
    t.links(9.0, frozenset())
    doc = t.to_json(10.0)
    assert doc["faults"] == [
        {"kind": "exit", "nodes": ["local-2"], "start": 5.0, "code": -9},
        {
            "kind": "partition",
            "nodes": ["local-0", "local-1"],
            "links": [["local-0", "local-1"], ["local-1", "local-0"]],
            "start": 6.0,
            "end": 9.0,
        },
    ]


def test_old_points_leave_the_window() -> None:
    t = Timeline(window=10.0)
    for second in range(30):
        t.sample(float(second), [view(0, second, 0)])
    assert min(r[0] for r in t.rates) >= 19.0
    assert t.phases["local-0"][0][1] >= 19.0


@pytest.mark.browser
async def test_chromium_draws_the_timeline_below_the_ring(tmp_path: Path) -> None:
    m = model(3)
    t = Timeline()
    views = [view(i, 0, 0) for i in range(3)]
    t.sample(100.0, views)
    t.sample(101.0, [view(0, 5, 0), view(1, 5, 1, "waiting"), view(2, 5, 0)])
    t.history(
        "local-1",
        {"boot": 1, "next": 1, "entries": [{"at": 100.5, "kind": "adopt", "generation": 3}]},
    )
    t.exited("local-2", 100.2, -9)
    t.links(100.3, frozenset({("local-0", "local-1")}))
    m["timeline"] = t.to_json(101.0)
    runner, url = await serve(create_view_app(lambda: m))
    try:
        dom = await dump_dom(url + "/", tmp_path)
    finally:
        await runner.cleanup()
    assert dom.count('<g class="node ') == 3  # the ring stays
    for i in range(3):
        assert f'<g class="lane" data-name="local-{i}">' in dom
    assert 'class="rate loops"' in dom
    assert 'class="decision adopt"' in dom
    assert 'class="fault partition"' in dom
    assert 'class="fault exit"' in dom
