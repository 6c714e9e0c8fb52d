"""`reactive-loop chaos` without processes: the invariant checker on synthetic
histories (each violation kind must be found; clean histories must pass), the
scenario's validation, the timeline page, and the nodes' fault switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from node.nodesupport import LOOP, MakeNode, eventually
from reactive_node import cli
from reactive_node.core import contract, history, timeline
from reactive_node.core.behaviors.base import canonical
from reactive_node.core.verdict import Bounds, Fault, Injection, Observation, check
from reactive_node.local import chaos
from reactive_node.runtime import faults
from reactive_node.runtime.app import FAULTS_KEY
from reactive_node.runtime.config import ConfigError, make_config
from reactive_node.runtime.node import Outcome

NODES = ["n-0", "n-1", "n-2"]
BOUNDS = Bounds(nodes=3, interval=0.2, timeout=0.5, max_backoff=1.0, loss_timeout=3.0, lease=1.0)
T0 = 1_000.0


def digest(target: Any) -> str:
    return history.digest(canonical(target))


def adopt(at: float, generation: int, target: Any, boot: int = 1) -> dict[str, Any]:
    return {
        "at": at,
        "kind": "adopt",
        "generation": generation,
        "target": digest(target),
        "boot": str(boot),
    }


def token(kind: str, at: float, epoch: tuple[int, int], boot: int = 1) -> dict[str, Any]:
    return {"at": at, "kind": kind, "epoch": list(epoch), "boot": str(boot)}


def converge_obs(histories: dict[str, list[dict[str, Any]]], **kw: Any) -> Observation:
    injections = [Injection(T0 + g, g, digest(f"t{g}"), True) for g in (1, 2, 3)]
    args: dict[str, Any] = {
        "behavior": "converge",
        "nodes": NODES,
        "started": T0,
        "faults_end": T0 + 5,
        "ended": T0 + 20,
        "bounds": BOUNDS,
        "histories": histories,
        "injections": injections,
        "baseline": dict.fromkeys(NODES, (0, digest(None))),
    }
    args.update(kw)
    return Observation(**args)


def token_obs(histories: dict[str, list[dict[str, Any]]], **kw: Any) -> Observation:
    args: dict[str, Any] = {
        "behavior": "token",
        "nodes": NODES,
        "started": T0,
        "faults_end": T0 + 5,
        "ended": T0 + 20,
        "bounds": BOUNDS,
        "histories": histories,
    }
    args.update(kw)
    return Observation(**args)


def kinds(verdict: dict[str, Any]) -> set[str]:
    return set(verdict["violationCounts"])


def clean_converge() -> dict[str, list[dict[str, Any]]]:
    return {
        n: [adopt(T0 + g + 0.1 * i, g, f"t{g}") for g in (1, 2, 3)] for i, n in enumerate(NODES)
    }


# ---------------------------------------------------------------- converge


def test_a_clean_converge_history_passes() -> None:
    verdict = check(converge_obs(clean_converge()))
    assert verdict["ok"], verdict["violations"]
    assert verdict["decisionsChecked"] == 9
    assert set(verdict["convergedAfterFaults"]) == set(NODES)


def test_a_regression_is_found() -> None:
    histories = clean_converge()
    histories["n-1"].append(adopt(T0 + 4.5, 2, "t2"))
    verdict = check(converge_obs(histories))
    assert kinds(verdict) == {"regression"}
    assert verdict["violations"][0]["node"] == "n-1"


def test_a_phantom_target_is_found() -> None:
    histories = clean_converge()
    histories["n-2"].append(adopt(T0 + 4.5, 3, "never injected"))  # right generation, wrong target
    histories["n-0"].append(adopt(T0 + 4.6, 4, "t4"))  # a generation nobody injected
    verdict = check(converge_obs(histories))
    assert kinds(verdict) >= {"phantom"}
    assert verdict["violationCounts"]["phantom"] == 2


def test_a_node_that_never_converges_is_found() -> None:
    histories = clean_converge()
    histories["n-2"] = histories["n-2"][:2]  # never adopted generation 3
    verdict = check(converge_obs(histories))
    assert kinds(verdict) == {"not_converged"}
    late = clean_converge()
    late["n-2"][2] = adopt(T0 + 5 + BOUNDS.converge + 1, 3, "t3")  # after the bound
    assert kinds(check(converge_obs(late))) == {"not_converged"}


def test_restored_copies_and_baseline_count_as_known() -> None:
    histories = clean_converge()
    histories["n-0"].append({**histories["n-0"][-1], "restored": True, "boot": "2"})
    baseline = {"n-0": (3, digest("t3")), "n-1": None, "n-2": (0, digest(None))}
    verdict = check(converge_obs(histories, baseline=baseline))
    assert verdict["ok"], verdict["violations"]
    assert verdict["decisionsChecked"] == 9  # the restored copy is not counted twice


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=8), min_size=3, max_size=3),
    st.integers(0, 2),
    st.data(),
)
def test_property_generations_only_grow(
    generations: list[list[int]], victim: int, data: st.DataObject
) -> None:
    """Sorted generations from injected targets pass; one step down anywhere fails."""
    injections = [Injection(T0 + g * 0.1, g, digest(f"t{g}"), True) for g in range(1, 7)]
    histories = {
        n: [adopt(T0 + 0.5 + i * 0.1, g, f"t{g}") for i, g in enumerate([*sorted(gens), 6])]
        for n, gens in zip(NODES, generations, strict=True)
    }
    obs = converge_obs(histories, injections=injections)
    assert check(obs)["ok"]
    own = histories[NODES[victim]]
    place = data.draw(st.integers(1, len(own) - 1))
    lower = data.draw(st.integers(1, max(1, own[place - 1]["generation"] - 1)))
    if lower >= own[place - 1]["generation"]:
        return  # generation 1 has nothing below it
    own.insert(place, adopt((own[place - 1]["at"] + own[place]["at"]) / 2, lower, f"t{lower}"))
    assert "regression" in kinds(check(obs))


# ---------------------------------------------------------------- token


def clean_token() -> dict[str, list[dict[str, Any]]]:
    return {
        "n-0": [token("acquire", T0 + 1, (1, 0)), token("release", T0 + 2, (1, 0))],
        "n-1": [token("acquire", T0 + 2.5, (2, 1)), token("release", T0 + 3.5, (2, 1))],
        "n-2": [token("acquire", T0 + 4, (3, 2)), token("release", T0 + 7, (3, 2))],
    }


def test_a_clean_token_history_passes() -> None:
    verdict = check(token_obs(clean_token()))
    assert verdict["ok"], verdict["violations"]
    assert verdict["holderAfterFaults"] == 0.0
    assert len(verdict["acting"]) == 3


def test_two_holders_are_found() -> None:
    histories = clean_token()
    histories["n-1"][0] = token("acquire", T0 + 1.5, (2, 1))  # while n-0 still acts
    verdict = check(token_obs(histories))
    assert kinds(verdict) == {"two_holders"}
    assert verdict["violations"][0]["nodes"] == ["n-0", "n-1"]


def test_an_epoch_that_does_not_increase_is_found() -> None:
    histories = clean_token()
    histories["n-2"] = [token("acquire", T0 + 4, (1, 2)), token("release", T0 + 7, (1, 2))]
    assert kinds(check(token_obs(histories))) == {"epoch_order"}


def test_no_holder_after_the_faults_is_found() -> None:
    histories = clean_token()
    histories["n-2"] = histories["n-2"][:0]
    assert kinds(check(token_obs(histories))) == {"no_holder"}
    late = clean_token()
    late["n-2"] = [token("acquire", T0 + 5 + BOUNDS.token + 0.5, (3, 2))]
    verdict = check(token_obs(late))
    assert kinds(verdict) == {"no_holder"}


def test_after_partitions_only_the_holder_bound_is_the_issues() -> None:
    """`lossTimeout + 2·interval` once partitions heal; the looser bound once a
    node was killed or paused (docs/chaos.md)."""
    at = T0 + 5 + (BOUNDS.token_goal + BOUNDS.token) / 2  # between the two bounds
    histories = {"n-0": [token("acquire", at, (7, 0))], "n-1": [], "n-2": []}
    cut = Fault("partition", T0 + 1, T0 + 5, ("n-0",), ("n-1", "n-2"))
    kill = Fault("kill", T0 + 2, T0 + 3, ("n-1",))
    partitioned = check(token_obs(histories, faults=[cut]))
    assert kinds(partitioned) == {"no_holder"}
    assert partitioned["holderBound"] == round(BOUNDS.token_goal, 3)
    mixed = check(token_obs(histories, faults=[cut, kill]))
    assert mixed["ok"], mixed["violations"]
    assert mixed["holderBound"] == round(BOUNDS.token, 3)
    assert check(token_obs(histories, faults=[kill]))["ok"]


def test_a_killed_or_paused_holder_stops_acting() -> None:
    """A holder killed without a release stops at the kill; a paused one whose
    release came on resuming stops at the pause plus the lease."""
    histories = {
        "n-0": [token("acquire", T0 + 1, (1, 0), boot=1)],  # killed at T0 + 2
        "n-1": [token("acquire", T0 + 2.5, (2, 1)), token("release", T0 + 9, (2, 1))],
        "n-2": [token("acquire", T0 + 5, (3, 2))],
    }
    stops = [
        Fault("kill", T0 + 2, T0 + 3, ("n-0",)),
        Fault("pause", T0 + 3, T0 + 8.9, ("n-1",)),  # lease 1 s: acting ends by T0 + 4
    ]
    verdict = check(token_obs(histories, faults=stops, faults_end=T0 + 9))
    assert verdict["ok"], verdict["violations"]
    # Without the faults those are overlaps.
    assert "two_holders" in kinds(check(token_obs(histories, faults_end=T0 + 9)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 2.0), min_size=2, max_size=10), st.data())
def test_property_handoffs_pass_and_an_overlap_fails(
    lengths: list[float], data: st.DataObject
) -> None:
    histories: dict[str, list[dict[str, Any]]] = {n: [] for n in NODES}
    at = T0 + 1
    spans = []
    for term, length in enumerate(lengths, start=1):
        node = NODES[term % 3]
        histories[node] += [
            token("acquire", at, (term, term % 3)),
            token("release", at + length, (term, term % 3)),
        ]
        spans.append((node, at, at + length))
        at += length + 0.05
    end = at + 1
    obs = token_obs(histories, faults_end=T0 + 1, ended=end)
    verdict = check(obs)
    assert not {"two_holders", "epoch_order"} & kinds(verdict), verdict["violations"]
    # Stretch one acting interval into the next holder's.
    i = data.draw(st.integers(0, len(spans) - 2))
    node, _start, stop = spans[i]
    nxt = spans[i + 1]
    entries = histories[node]
    for e in entries:
        if e["kind"] == "release" and e["at"] == stop:
            e["at"] = nxt[1] + (nxt[2] - nxt[1]) / 2
    if nxt[0] != node:
        assert "two_holders" in kinds(check(obs))


# ---------------------------------------------------------------- the page


def test_the_timeline_names_every_node_and_is_self_contained() -> None:
    histories = clean_converge()
    histories["n-0"].append(
        {"at": T0 + 2, "kind": "waits", "counts": {"unreachable": 3}, "last": T0 + 3, "boot": "1"}
    )
    obs = converge_obs(
        histories,
        faults=[
            Fault("kill", T0 + 1, T0 + 2, ("n-1",)),
            Fault("pause", T0 + 2, T0 + 3, ("n-2",)),
            Fault("partition", T0 + 3, T0 + 4, ("n-0",), ("n-1", "n-2")),
        ],
    )
    page = timeline.render(obs, check(obs))
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    for name in NODES:
        assert f">{name}</text>" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in page
    assert "partition" in page
    assert "paused" in page
    assert "killed" in page


# ---------------------------------------------------------------- scenarios


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_scenario_file_is_read_and_checked(tmp_path: Path) -> None:
    good = {
        "duration": 10,
        "injectEvery": 2,
        "faults": [
            {"kind": "kill", "at": 1, "node": 0},
            {"kind": "pause", "at": 2, "node": 1, "seconds": 2},
            {"kind": "partition", "at": 3, "sides": [[0], [1, 2]], "seconds": 3},
        ],
    }
    scenario = chaos.load_scenario(write(tmp_path, "s.json", json.dumps(good)))
    chaos.validate(scenario, 3)
    assert [type(f).__name__ for f in scenario.faults] == ["Kill", "Pause", "Partition"]
    yaml_text = "duration: 5\nfaults:\n  - {kind: kill, at: 1, node: 2}\n"
    assert chaos.load_scenario(write(tmp_path, "s.yaml", yaml_text)).duration == 5


@pytest.mark.parametrize(
    ("scenario", "nodes", "message"),
    [
        ({"duration": 601}, 3, "duration"),
        ({"duration": 0}, 3, "duration"),
        ({"duration": 5, "faults": [{"kind": "kill", "at": 6, "node": 0}]}, 3, "ends at 6"),
        ({"duration": 5, "faults": [{"kind": "kill", "at": 1, "node": 3}]}, 3, "node 3"),
        ({"duration": 5, "faults": [{"kind": "nuke", "at": 1}]}, 3, "nuke"),
        ({"duration": 5, "faults": [{"kind": "pause", "at": 1, "node": 0}]}, 3, "seconds"),
        ({"duration": 5, "colour": "red"}, 3, "colour"),
        (
            {"duration": 9, "faults": [{"kind": "pause", "at": 1, "node": 0, "seconds": 9}]},
            3,
            "after the duration",
        ),
        (
            {
                "duration": 9,
                "faults": [{"kind": "partition", "at": 1, "sides": [[0, 1], [1]], "seconds": 2}],
            },
            3,
            "both sides",
        ),
        (
            {
                "duration": 9,
                "faults": [{"kind": "partition", "at": 1, "sides": [[0]], "seconds": 2}],
            },
            3,
            "sides",
        ),
    ],
)
def test_bad_scenarios_are_refused_clearly(
    tmp_path: Path, scenario: dict[str, Any], nodes: int, message: str
) -> None:
    path = write(tmp_path, "bad.json", json.dumps(scenario))
    with pytest.raises(chaos.ScenarioError, match=message):
        chaos.validate(chaos.load_scenario(path), nodes)


def test_flags_make_a_reproducible_bounded_scenario() -> None:
    one = chaos.scenario_from_flags(20, 2, 1, 1, seed=7, nodes=5)
    assert one == chaos.scenario_from_flags(20, 2, 1, 1, seed=7, nodes=5)
    chaos.validate(one, 5)
    assert sorted(type(f).__name__ for f in one.faults) == ["Kill", "Kill", "Partition", "Pause"]
    with pytest.raises(chaos.ScenarioError, match="duration"):
        chaos.scenario_from_flags(601, 1, 0, 0, seed=0, nodes=5)
    with pytest.raises(chaos.ScenarioError, match="2 nodes"):
        chaos.scenario_from_flags(10, 0, 0, 1, seed=0, nodes=1)


def test_the_cli_refuses_bad_chaos_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["chaos", "--state-dir", str(tmp_path)]) == 2
    assert "give --scenario FILE or --duration S" in capsys.readouterr().err
    assert cli.main(["chaos", "--state-dir", str(tmp_path), "--duration", "5"]) == 2
    assert "no running loop found" in capsys.readouterr().err
    assert cli.main(["chaos", "--duration", "5", "--kill", "-1"]) == 2
    assert "between 0 and 100" in capsys.readouterr().err
    scenario = write(tmp_path, "s.json", '{"duration": 5}')
    assert cli.main(["chaos", "--scenario", str(scenario), "--kill", "1"]) == 2
    assert "either --scenario" in capsys.readouterr().err


# ---------------------------------------------------------------- the switch


def test_the_faults_file_is_parsed_strictly() -> None:
    links = faults.parse_faults(faults.encode_faults([("a", "b"), ("b", "a")]))
    assert links == {("a", "b"), ("b", "a")}
    for bad in (b"[]", b'{"blocked": [["a"]]}', b'{"blocked": [], "x": 1}', b"{"):
        with pytest.raises(ValueError, match="not a faults file"):
            faults.parse_faults(bad)


def test_the_switch_is_refused_with_the_pod_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="faults_file"):
        make_config(
            {"store": "pod", "namespace": "ns", "node": "x-0", "faults_file": tmp_path / "f"}
        )


async def test_a_node_refuses_a_blocked_sender_and_does_not_send_to_a_blocked_peer(
    make_node: MakeNode, tmp_path: Path
) -> None:
    path = tmp_path / "faults.json"
    path.write_bytes(faults.encode_faults([("test-0", "test-1"), ("test-1", "test-2")]))
    n = await make_node(faults_file=path, interval=0.05)
    switch = n.client.app[FAULTS_KEY] if n.client.app is not None else None
    assert switch is not None
    await eventually(lambda: bool(switch.blocked), what="the switch read")
    body = {
        "loop": LOOP,
        "from": "test-0",
        "boot": 1,
        "seq": 1,
        "state": {"generation": 1, "target": 1},
    }
    headers = {"Content-Type": "application/json"}
    r = await n.client.post(contract.ROUNDTRIP_PATH, data=json.dumps(body), headers=headers)
    assert r.status == 503
    assert (await r.json())["error"] == "partitioned"
    assert n.node.state == {"generation": 0, "target": None}
    r = await n.client.post(
        contract.ROUNDTRIP_PATH, data=json.dumps({**body, "from": "test-2"}), headers=headers
    )
    assert r.status == 200  # only the blocked direction is cut

    sent: list[str] = []

    async def transport(url: str, data: bytes, h: dict[str, str]) -> Outcome:
        sent.append(url)
        return Outcome(status=200, body=b"{}")

    guarded = switch.guard(transport, {"http://b/": "test-2", "http://c/": "test-0"})
    assert (await guarded("http://b/", b"", {})).failure == "unreachable"
    assert (await guarded("http://c/", b"", {})).status == 200
    assert sent == ["http://c/"]
    # Healed: the file rewritten with no links; the node reads it again.
    path.write_bytes(faults.encode_faults([]))
    await eventually(lambda: not switch.blocked, what="the switch re-read")
    r = await n.client.post(
        contract.ROUNDTRIP_PATH, data=json.dumps({**body, "seq": 2}), headers=headers
    )
    assert r.status == 200
