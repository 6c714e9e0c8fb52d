"""Local mode with real processes: `reactive-loop run` and `set-target` end to end.

One supervisor with five node processes (file store, real HTTP on 127.0.0.1)
serves every test of this module; the tests run in order and each leaves the
loop converged for the next.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from reactive_node.core import contract
from reactive_node.local.runfile import read_run_file
from reactive_node.local.supervisor import free_ports

NODES = 5
SCRIPT = str(Path(sys.executable).with_name("reactive-loop"))
T = TypeVar("T")

pytestmark = pytest.mark.processes


def eventually(probe: Callable[[], T | None], what: str, deadline: float = 30.0) -> T:
    """Poll `probe` until it returns something truthy, or fail saying what never happened."""
    end = time.monotonic() + deadline
    last: T | None = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {deadline}s (last: {last!r})")


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def state_of(address: str) -> dict[str, Any] | None:
    try:
        status, body = http("GET", f"http://{address}{contract.STATE_PATH}")
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


@dataclass
class Loop:
    process: subprocess.Popen[str]
    state_dir: Path
    view_url: str

    @property
    def addresses(self) -> list[str]:
        return read_run_file(self.state_dir).addresses

    def pids(self) -> list[int | None]:
        return read_run_file(self.state_dir).pids

    def states(self) -> list[dict[str, Any] | None]:
        return [state_of(a) for a in self.addresses]

    def set_target(self, target: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, "set-target", json.dumps(target), "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    state_dir = tmp_path_factory.mktemp("loop")
    (view_port,) = free_ports(1)
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", str(NODES), "--behavior", "converge"),
            *("--topology", "ring", "--interval", "0.2", "--state-dir", str(state_dir)),
            *("--json", "--view-port", str(view_port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Loop(process, state_dir, f"http://127.0.0.1:{view_port}/")
    try:
        eventually(lambda: (state_dir / "run.json").exists(), "run file written", 30)
        eventually(
            lambda: all(s is not None and s.get("ready") for s in running.states()),
            "all nodes ready",
            60,
        )
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def holds(loop: Loop, generation: int, target: Any) -> list[dict[str, Any]] | None:
    states = loop.states()
    want = {"generation": generation, "target": target}
    if all(s is not None and s["state"] == want for s in states):
        return [s for s in states if s is not None]
    return None


def generation_after(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    match = re.search(r"generation (\d+) injected through", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_five_nodes_converge_on_a_new_target(loop: Loop) -> None:
    before = [s["state"]["generation"] for s in loop.states() if s is not None]
    target = {"image": "demo:v2", "replicas": 3}
    generation = generation_after(loop.set_target(target))
    assert generation == max(before) + 1
    states = eventually(lambda: holds(loop, generation, target), "every node holds the target")
    assert [s["node"] for s in states] == [f"local-{i}" for i in range(NODES)]
    # A state file per node holds the durable state.
    for i in range(NODES):
        stored = json.loads((loop.state_dir / f"local-{i}.json").read_text())
        tail = stored.pop(contract.HISTORY_STATE_KEY)  # the decision history's (docs/node.md)
        assert tail[-1]["kind"] == "adopt"
        assert tail[-1]["generation"] == generation
        assert stored == {"generation": generation, "target": target}


def test_a_replayed_round_trip_gets_409_and_moves_nothing(loop: Loop) -> None:
    address = loop.addresses[3]
    current = state_of(address)
    assert current is not None
    older = {"generation": 0, "target": None}
    body = {"loop": "local", "from": "replayer", "boot": 7, "seq": 1, "state": older}
    status, first = http("POST", f"http://{address}{contract.ROUNDTRIP_PATH}", body)
    assert status == 200, first
    assert first["state"] == current["state"]  # an older state never wins
    status, replay = http("POST", f"http://{address}{contract.ROUNDTRIP_PATH}", body)
    assert status == 409, replay
    assert isinstance(replay, dict)
    # A replay with a newer state is just as stale: it must not move state either.
    newer = {"generation": current["state"]["generation"] + 50, "target": "replayed"}
    status, _ = http("POST", f"http://{address}{contract.ROUNDTRIP_PATH}", {**body, "state": newer})
    assert status == 409
    after = state_of(address)
    assert after is not None
    assert after["state"]["generation"] < newer["generation"]
    status, metrics = http("GET", f"http://{address}{contract.METRICS_PATH}")
    assert status == 200
    stale = re.search(
        rf'^{contract.M_REQUESTS}{{[^}}]*outcome="stale"[^}}]*}} (\S+)$', metrics, re.M
    )
    assert stale, "no stale outcome in /metrics"
    assert float(stale.group(1)) >= 2


def test_a_killed_node_is_restarted_and_catches_up(loop: Loop) -> None:
    victim = 2
    predecessor = victim - 1  # in a ring, node 1 round-trips to node 2

    # Ready is not looping: a predecessor that started before its successor listened
    # skips to the next node for a while. Kill only once its latest round trip was
    # a success with the victim, so that its next one meets the dead node.
    def predecessor_on_victim() -> dict[str, Any] | None:
        s = state_of(loop.addresses[predecessor])
        if not s or not s["edges"]:
            return None
        latest = max(s["edges"], key=lambda e: e["at"])
        return s if latest == {**latest, "to": f"local-{victim}", "outcome": "ok"} else None

    eventually(predecessor_on_victim, "the predecessor round-trips with the victim")
    pid = loop.pids()[victim]
    assert pid is not None
    waits_before = [s["waits"] if s else 0 for s in loop.states()]
    os.kill(pid, signal.SIGKILL)

    # The peers that round-trip to it count waits.
    def predecessor_waits() -> dict[str, Any] | None:
        s = state_of(loop.addresses[predecessor])
        return s if s and s["waits"] > waits_before[predecessor] else None

    seen = eventually(predecessor_waits, "the predecessor counts waits")
    assert seen["lastWaitReason"] in contract.WAIT_REASONS

    # While it is down or restarting, a new target is injected elsewhere.
    target = {"image": "demo:v3"}
    generation = generation_after(loop.set_target(target))

    # The supervisor restarted it (a new process) and it caught up from its peers.
    new_pid = eventually(
        lambda: (p := loop.pids()[victim]) is not None and p != pid and p, "a restarted process"
    )
    assert new_pid != pid
    eventually(lambda: holds(loop, generation, target), "every node, the restarted one too")
    restarted = state_of(loop.addresses[victim])
    assert restarted is not None
    assert restarted["state"] == {"generation": generation, "target": target}


@pytest.mark.browser
def test_web_view_shows_every_node(loop: Loop, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "install Debian's chromium (make system-deps)"
    done = subprocess.run(
        [
            *(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            *("--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}"),
            *("--virtual-time-budget=5000", "--dump-dom", loop.view_url),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = re.findall(r'<g class="node [^"]*" data-name="([^"]+)"', done.stdout)
    assert sorted(names) == [f"local-{i}" for i in range(NODES)]
    assert 'class="edge ok"' in done.stdout  # ring round trips that succeeded


def test_summary_on_stop(loop: Loop) -> None:
    """Last: stopping the supervisor prints the JSON summary and stops every node."""
    pids = [p for p in loop.pids() if p is not None]
    loop.process.send_signal(signal.SIGTERM)
    out, err = loop.process.communicate(timeout=60)
    assert loop.process.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["converged"] is True
    assert [n["name"] for n in summary["nodes"]] == [f"local-{i}" for i in range(NODES)]
    assert all(n["loops"] > 0 for n in summary["nodes"])
    assert summary["nodes"][2]["restarts"] == 1
    assert sum(n["restarts"] for n in summary["nodes"]) == 1
    assert not (loop.state_dir / "run.json").exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
