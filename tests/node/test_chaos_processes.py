"""`reactive-loop chaos` against real local loops (`reactive-loop run --faults`):
five node processes, real kills, pauses and partitions, a clean verdict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from node.test_local_processes import SCRIPT
from node.test_local_processes import eventually as poll
from reactive_node.core import contract
from reactive_node.local.runfile import read_run_file
from reactive_node.local.supervisor import free_ports

NODES = 5
T = TypeVar("T")

pytestmark = pytest.mark.processes


def eventually(probe: Callable[[], T | None], what: str, deadline: float = 60.0) -> T:
    return poll(probe, what, deadline)


def get(address: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def start_loop(
    state_dir: Path, behavior: str, env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", str(NODES), "--behavior", behavior, "--faults"),
            *("--interval", "0.2", "--state-dir", str(state_dir), "--json", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    eventually(lambda: (state_dir / "run.json").exists(), "run file written")
    addresses = read_run_file(state_dir).addresses
    eventually(
        lambda: all((get(a, contract.STATE_PATH) or {}).get("ready") for a in addresses),
        "all nodes ready",
    )
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def converge_loop(tmp_path: Path) -> Iterator[Path]:
    (port,) = free_ports(1)
    (tmp_path / "view-port").write_text(str(port))
    env = {contract.ENV_MAX_BACKOFF: "1"}
    process = start_loop(tmp_path, "converge", env, "--view-port", str(port))
    try:
        yield tmp_path
    finally:
        stop(process)


@pytest.fixture
def token_loop(tmp_path: Path) -> Iterator[Path]:
    env = {
        contract.ENV_MAX_BACKOFF: "1",
        contract.ENV_TOKEN_LOSS_TIMEOUT: "3",
        contract.ENV_TOKEN_HOLD: "1",
    }
    process = start_loop(tmp_path, "token", env)
    try:
        yield tmp_path
    finally:
        stop(process)


def chaos(state_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = state_dir / "verdict.json"
    result = subprocess.run(
        [SCRIPT, "chaos", "--state-dir", str(state_dir), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), result.stderr
    return result, json.loads(out.read_text())


def test_a_converge_ring_keeps_its_invariants_under_kill_pause_and_partition(
    converge_loop: Path,
) -> None:
    scenario = {
        "duration": 12,
        "injectEvery": 2,
        "faults": [
            {"kind": "partition", "at": 1, "sides": [[0], [1, 2, 3, 4]], "seconds": 4},
            {"kind": "pause", "at": 2, "node": 3, "seconds": 3},
            {"kind": "kill", "at": 6, "node": 2},
        ],
    }
    path = converge_loop / "scenario.json"
    path.write_text(json.dumps(scenario))
    html = converge_loop / "timeline.html"
    result, verdict = chaos(converge_loop, "--scenario", str(path), "--html", str(html))
    assert result.returncode == 0, (result.stderr, verdict["violations"])
    assert verdict["ok"] is True
    assert verdict["violations"] == []
    assert verdict["faultCounts"] == {"kill": 1, "pause": 1, "partition": 1}
    assert sum(1 for i in verdict["injections"] if i["ok"]) >= 5
    assert verdict["decisionsChecked"] >= 5 * NODES
    assert all(v is not None for v in verdict["convergedAfterFaults"].values())
    page = html.read_text()
    for i in range(NODES):
        assert f">local-{i}</text>" in page
    # The partition really cut node 0 off: it waited, `unreachable`, and the
    # supervisor restarted the killed node.
    address = read_run_file(converge_loop).addresses[0]
    waits = [e for e in get(address, contract.HISTORY_PATH)["entries"] if e["kind"] == "waits"]
    assert sum(e["counts"].get("unreachable", 0) for e in waits) > 0
    kill = next(f for f in verdict["faults"] if f["kind"] == "kill")
    assert kill["end"] > kill["start"]
    # The web view's timeline (issue 10 §6) saw the same run.
    port = (converge_loop / "view-port").read_text()
    timeline = get(f"127.0.0.1:{port}", "/api/loop")["timeline"]
    kinds = {f["kind"]: f for f in timeline["faults"]}
    assert kinds["exit"]["nodes"] == ["local-2"]
    assert kinds["partition"]["nodes"] == [f"local-{i}" for i in range(NODES)]
    assert kinds["partition"]["end"] is not None
    for i in range(NODES):
        adopts = [d for d in timeline["nodes"][f"local-{i}"]["decisions"] if d["kind"] == "adopt"]
        assert adopts, f"local-{i} shows no decision"
    assert any(r[1] > 0 for r in timeline["rates"])
    assert any(r[2] > 0 for r in timeline["rates"])


def test_a_token_ring_keeps_one_holder_under_kill_pause_and_partition(token_loop: Path) -> None:
    html = token_loop / "timeline.html"
    result, verdict = chaos(
        token_loop,
        *("--duration", "12", "--kill", "1", "--pause", "1", "--partition", "1", "--seed", "4"),
        *("--html", str(html)),
    )
    assert result.returncode == 0, (result.stderr, verdict["violations"])
    assert verdict["ok"] is True
    assert verdict["behavior"] == "token"
    assert verdict["faultCounts"] == {"kill": 1, "pause": 1, "partition": 1}
    assert verdict["holderAfterFaults"] is not None
    assert verdict["holderAfterFaults"] <= verdict["bounds"]["tokenSeconds"]
    assert len(verdict["acting"]) >= 2  # the token moved
    page = html.read_text()
    for i in range(NODES):
        assert f">local-{i}</text>" in page


def test_a_token_ring_acts_again_within_the_issues_bound_after_partitions(
    token_loop: Path,
) -> None:
    """Partitions only, each longer than the loss timeout (3 s), so whichever
    side the holder is on, a majority side may regenerate and a minority
    holder stops acting: after the heal one node acts within `lossTimeout +
    2·interval` (issue 10's bound; the verdict holds partition-only runs to it)."""
    scenario = {
        "duration": 14,
        "faults": [
            {"kind": "partition", "at": 1, "sides": [[0, 1], [2, 3, 4]], "seconds": 5},
            {"kind": "partition", "at": 7, "sides": [[2, 3], [0, 1, 4]], "seconds": 5},
        ],
    }
    path = token_loop / "scenario.json"
    path.write_text(json.dumps(scenario))
    result, verdict = chaos(token_loop, "--scenario", str(path))
    assert result.returncode == 0, (result.stderr, verdict["violations"])
    assert verdict["faultCounts"] == {"kill": 0, "pause": 0, "partition": 2}
    assert verdict["holderBound"] == verdict["bounds"]["tokenGoalSeconds"]
    assert verdict["holderAfterFaults"] is not None
    assert verdict["holderAfterFaults"] <= verdict["holderBound"]


def test_a_partition_needs_the_fault_switch(tmp_path: Path) -> None:
    """Without `run --faults` a partition is refused before anything happens."""
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", "2", "--interval", "0.2"),
            *("--state-dir", str(tmp_path), "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: (tmp_path / "run.json").exists(), "run file written")
        result = subprocess.run(
            [SCRIPT, "chaos", "--state-dir", str(tmp_path), "--duration", "5", "--partition", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "reactive-loop run --faults" in result.stderr
        assert not (tmp_path / "faults.json").exists()
    finally:
        stop(process)
