"""The pure parts of local mode: summary, table, view model, environment, injection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_node.core import contract
from reactive_node.core.codec import decode_state_document
from reactive_node.local.inject import injected_state
from reactive_node.local.runfile import RunFile, RunFileError, RunOptions, read_run_file
from reactive_node.local.supervisor import free_ports, node_environment
from reactive_node.local.views import (
    NodeView,
    build_summary,
    is_converged,
    render_table,
    view_model,
)


def options(nodes: int = 3, behavior: str = "converge", **kw: Any) -> RunOptions:
    return RunOptions(
        nodes=nodes,
        behavior=behavior,
        topology=kw.pop("topology", "ring"),
        interval=kw.pop("interval", None),
        duration=None,
        state_dir=kw.pop("state_dir", Path("/tmp/rl-test")),
        view_port=None,
        json_summary=True,
        base_port=None,
        **kw,
    )


def node_state(
    ordinal: int, state: dict[str, Any], *, phase: str = "looping", **extra: Any
) -> dict[str, Any]:
    summary = {"generation": state.get("generation"), "target": state.get("target")}
    summary.update(extra.pop("summary", {}))
    return {
        "loop": "local",
        "node": f"local-{ordinal}",
        "ordinal": ordinal,
        "phase": phase,
        "loops": 10 + ordinal,
        "waits": ordinal,
        "lastWaitReason": "timeout" if ordinal else None,
        "state": state,
        "summary": summary,
        "edges": extra.pop("edges", []),
        **extra,
    }


def view(ordinal: int, body: dict[str, Any] | None, *, running: bool = True) -> NodeView:
    return NodeView(
        name=f"local-{ordinal}",
        ordinal=ordinal,
        address=f"127.0.0.1:{9000 + ordinal}",
        running=running,
        state=None if body is None else decode_state_document(body),
        error=None if body is not None else "ClientConnectorError",
    )


GEN2 = {"generation": 2, "target": {"v": 2}}
GEN1 = {"generation": 1, "target": {"v": 1}}


def test_converged_when_all_hold_the_same_state() -> None:
    views = [view(i, node_state(i, GEN2)) for i in range(3)]
    assert is_converged("converge", views)
    views[1] = view(1, node_state(1, GEN1))
    assert not is_converged("converge", views)


def test_not_converged_when_a_node_is_unreachable() -> None:
    views = [view(0, node_state(0, GEN2)), view(1, None)]
    assert not is_converged("converge", views)


def test_token_converged_means_exactly_one_holder() -> None:
    def tok(i: int, holding: bool) -> NodeView:
        return view(i, node_state(i, {}, summary={"holding": holding}))

    assert is_converged("token", [tok(0, False), tok(1, True), tok(2, False)])
    assert not is_converged("token", [tok(0, True), tok(1, True), tok(2, False)])
    assert not is_converged("token", [tok(0, False), tok(1, False)])


def test_summary_has_the_promised_shape() -> None:
    views = [view(i, node_state(i, GEN2)) for i in range(3)]
    views[2].restarts = 1
    summary = build_summary(options(), views, 12.3456)
    assert summary["converged"] is True
    assert [n["name"] for n in summary["nodes"]] == ["local-0", "local-1", "local-2"]
    assert [n["loops"] for n in summary["nodes"]] == [10, 11, 12]
    assert [n["waits"] for n in summary["nodes"]] == [0, 1, 2]
    assert all(n["state"] == GEN2 for n in summary["nodes"])
    assert summary["loops"] == 33
    assert summary["waits"] == 3
    assert summary["restarts"] == 1
    assert summary["maxGeneration"] == 2
    json.dumps(summary)  # serialisable as is


def test_summary_of_a_dead_node() -> None:
    views = [view(0, node_state(0, GEN1)), view(1, None, running=False)]
    summary = build_summary(options(nodes=2), views, 1.0)
    assert summary["converged"] is False
    assert summary["nodes"][1]["phase"] == "down"
    assert summary["nodes"][1]["state"] is None


def test_table_has_a_line_per_node_with_counters() -> None:
    views = [view(i, node_state(i, GEN2)) for i in range(3)]
    views[1] = view(1, None)
    lines = render_table(options(), views, 3.0).splitlines()
    assert len(lines) == 2 + 3
    assert "converged: no" in lines[0]
    assert lines[2].split()[:4] == ["local-0", "looping", "10", "0"]
    assert lines[3].split()[:2] == ["local-1", "unreachable"]
    assert '{"generation":2' in lines[4]


def test_view_model_maps_edges_to_node_names() -> None:
    edges = [
        {"to": "127.0.0.1:9001", "outcome": "ok", "at": 100.0},
        {"to": "local-2", "outcome": "timeout", "at": 102.0},
        {"to": "elsewhere:1", "outcome": "ok", "at": 103.0},
        {"to": "local-1", "outcome": "ok", "at": 90.0},
    ]
    views = [view(0, node_state(0, GEN2, edges=edges)), view(1, None), view(2, None)]
    model = view_model(options(interval=1.0), views, 1.0)
    assert [n["name"] for n in model["nodes"]] == ["local-0", "local-1", "local-2"]
    assert model["nodes"][0]["edges"] == [
        {"to": "local-1", "outcome": "ok", "at": 100.0, "stale": False},
        {"to": "local-2", "outcome": "timeout", "at": 102.0, "stale": False},
        {"to": "local-1", "outcome": "ok", "at": 90.0, "stale": True},  # 13 s older
    ]
    assert model["nodes"][1]["phase"] == "unreachable"


def test_node_environment_uses_the_contract_names(tmp_path: Path) -> None:
    addresses = ["127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9102"]
    env = node_environment(options(state_dir=tmp_path, interval=0.25), 1, addresses)
    assert env[contract.ENV_NODE] == "local-1"
    assert env[contract.ENV_ORDINAL] == "1"
    assert env[contract.ENV_REPLICAS] == "3"
    assert env[contract.ENV_PEERS] == ",".join(addresses)
    assert env[contract.ENV_PORT] == "9101"
    assert env[contract.ENV_STORE] == "file"
    assert env[contract.ENV_STATE_DIR] == str(tmp_path.resolve())
    assert float(env[contract.ENV_INTERVAL]) == 0.25
    assert all(k.startswith("RL_") for k in env)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(0 < p < 65536 for p in ports)


@given(st.lists(st.one_of(st.none(), st.integers(0, 2**40)), max_size=20), st.integers())
def test_injected_generation_is_above_every_seen(gens: list[int | None], target: int) -> None:
    state = injected_state(gens, target)
    assert state["target"] == target
    assert all(state["generation"] > g for g in gens if g is not None)
    assert state["generation"] == max([g for g in gens if g is not None], default=0) + 1


def test_run_file_round_trip(tmp_path: Path) -> None:
    run = RunFile("local", 123, ["127.0.0.1:1", "127.0.0.1:2"], [11, None], None)
    (tmp_path / "run.json").write_text(json.dumps(run.to_json()))
    assert read_run_file(tmp_path) == run


def test_run_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match="no running loop"):
        read_run_file(tmp_path)
    (tmp_path / "run.json").write_text('{"loop": "x"}')
    with pytest.raises(RunFileError, match="cannot read"):
        read_run_file(tmp_path)
