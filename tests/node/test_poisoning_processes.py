"""Poisoning real node processes (issue 11 §1, §5): after every attempt the node,
restarted by the supervisor, comes back ready and looping.

One `reactive-loop run` of three converge nodes (file stores) serves the
module. Each poisoning attempt goes to a live node (a round trip body, a
forged sender from another address, or a hand edit of its state file); then
the node is killed, and the restarted process must be ready, looping and on
the loop's state. Also here: racing `set-target`s get unique generations,
and a second `run` on a live state dir is refused.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from node.test_local_processes import SCRIPT, state_of
from node.test_local_processes import eventually as poll
from reactive_node.core import contract
from reactive_node.local.inject import GENERATION_FILE
from reactive_node.local.runfile import read_run_file
from reactive_node.local.supervisor import free_ports

NODES = 3
T = TypeVar("T")

pytestmark = pytest.mark.processes


def eventually(probe: Callable[[], T | None], what: str, deadline: float = 40.0) -> T:
    return poll(probe, what, deadline)


def send(
    address: str, payload: bytes, headers: dict[str, bytes], source: str = "127.0.0.1"
) -> tuple[int, str, Any]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.putrequest("POST", contract.ROUNDTRIP_PATH)
        for name, value in {"Content-Length": str(len(payload)).encode(), **headers}.items():
            conn.putheader(name, value)
        conn.endheaders(payload)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), json.loads(r.read())
    finally:
        conn.close()


@dataclass
class Loop:
    process: subprocess.Popen[str]
    state_dir: Path

    @property
    def addresses(self) -> list[str]:
        return read_run_file(self.state_dir).addresses

    def pid(self, i: int) -> int | None:
        return read_run_file(self.state_dir).pids[i]

    def set_target(self, target: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, "set-target", json.dumps(target), "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def states(self) -> list[dict[str, Any] | None]:
        return [state_of(a) for a in self.addresses]

    def restart_and_check(self, i: int, *, caught_up: bool = True) -> dict[str, Any]:
        """Kill node i; its new process must be ready and looping and, if it can
        persist, on the loop's state."""
        pid = self.pid(i)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: (p := self.pid(i)) is not None and p != pid, f"node {i} restarted")

        def back() -> dict[str, Any] | None:
            states = self.states()
            mine = states[i]
            if mine is None or not mine["ready"] or mine["phase"] != "looping":
                return None
            others = [s["state"] for s in states if s is not None and s is not mine]
            on_state = all(o == mine["state"] for o in others) or not caught_up
            return mine if mine["loops"] > 0 and on_state else None

        return eventually(back, f"node {i} ready, looping and caught up")


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    state_dir = tmp_path_factory.mktemp("poison")
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", str(NODES), "--behavior", "converge"),
            *("--topology", "ring", "--interval", "0.2", "--state-dir", str(state_dir), "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Loop(process, state_dir)
    try:
        eventually(lambda: (state_dir / "run.json").exists(), "run file written")
        eventually(lambda: all(s and s["ready"] for s in running.states()), "all nodes ready")
        assert running.set_target({"image": "v1"}).returncode == 0
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def _body(state: Any, **overrides: Any) -> bytes:
    value = {"loop": "local", "from": "poisoner", "boot": time.time_ns(), "seq": 1, "state": state}
    value.update(overrides)
    return json.dumps(value).encode()


JSON = {"Content-Type": b"application/json"}
POISONED_BODIES: dict[str, tuple[bytes, dict[str, bytes]]] = {
    "generation 10^400": (_body({"generation": 10**400, "target": 1}), JSON),
    "generation 2^53": (_body({"generation": 2**53, "target": 1}), JSON),
    "a big integer in the target": (_body({"generation": 1, "target": [2**64]}), JSON),
    "nesting 3000 deep": (
        b'{"loop":"local","from":"p","boot":1,"seq":1,"state":{"generation":1,"target":'
        + b"[" * 3000
        + b"]" * 3000
        + b"}}",
        JSON,
    ),
    "boot 2^63": (_body({"generation": 1, "target": 1}, boot=2**63), JSON),
    "text/plain": (_body({"generation": 1, "target": 1}), {"Content-Type": b"text/plain"}),
    "broken gzip": (b"\x1f\x8b\x08" + os.urandom(30), {**JSON, "Content-Encoding": b"gzip"}),
    "gzip": (
        gzip.compress(_body({"generation": 1, "target": 1})),
        {**JSON, "Content-Encoding": b"gzip"},
    ),
    "odd signature bytes": (
        _body({"generation": 0, "target": None}),
        {**JSON, contract.SIGNATURE_HEADER: b"sha256=\xff\xfe\x80"},
    ),
}


# Victims take turns, so the supervisor's restart backoff stays short.
@pytest.mark.parametrize(("victim", "poison"), list(enumerate(POISONED_BODIES)))
def test_a_poisoned_body_is_refused_and_the_restarted_node_loops(
    loop: Loop, victim: int, poison: str
) -> None:
    victim %= NODES
    payload, headers = POISONED_BODIES[poison]
    target = loop.addresses[victim]
    before = state_of(target)
    assert before is not None
    status, content_type, answer = send(target, payload, headers)
    assert 400 <= status < 500 or (poison == "odd signature bytes" and status == 200), answer
    assert content_type.startswith("application/json")
    stored = json.loads((loop.state_dir / f"local-{victim}.json").read_text())
    stored.pop(contract.HISTORY_STATE_KEY, None)  # the decision history's tail
    assert stored == before["state"]  # nothing stored
    after = loop.restart_and_check(victim)
    assert after["state"] == before["state"]
    assert after["stateError"] is None


def test_a_forged_sender_does_not_lock_out_the_real_one(loop: Loop) -> None:
    # Node 0 round-trips to node 1 (ring). A forger elsewhere claims to be node 0
    # with the latest plausible boot and a huge sequence number.
    forged = _body(
        {"generation": 0, "target": None},
        **{"from": "local-0", "boot": time.time_ns() + 200 * 10**9, "seq": 2**62},
    )
    status, _, answer = send(loop.addresses[1], forged, JSON, source="127.0.0.2")
    assert status == 200, answer
    forged_at = time.time()

    def real_round_trip_ok() -> bool:
        s = state_of(loop.addresses[0])
        edges = [] if s is None else [e for e in s["edges"] if e["to"] == "local-1"]
        return bool(edges) and edges[-1]["outcome"] == "ok" and edges[-1]["at"] > forged_at + 0.5

    eventually(real_round_trip_ok, "node 0's round trips to node 1 still succeed")
    loop.restart_and_check(1)


POISONED_FILES: dict[str, bytes] = {
    "not UTF-8": b'{"generation": 1, "target": "\xff\xfe"}',
    "NaN": b'{"generation": NaN, "target": 1}',
    "generation 10^400": b'{"generation": 1' + b"0" * 400 + b', "target": 1}',
    "a lone surrogate": b'{"generation": 1, "target": "\\ud800"}',
    "nesting 3000 deep": b'{"generation": 1, "target": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "not JSON": b"\x00\x01garbage",
}


def _invalid_count(address: str) -> float:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", contract.METRICS_PATH)
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(rf"^{contract.M_STATE_INVALID}{{[^}}]*}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("victim", "poison"), list(enumerate(POISONED_FILES)))
def test_a_poisoned_state_file_never_stops_the_node(loop: Loop, victim: int, poison: str) -> None:
    victim %= NODES
    address = loop.addresses[victim]
    good = state_of(address)
    assert good is not None
    path = loop.state_dir / f"local-{victim}.json"
    path.write_bytes(POISONED_FILES[poison])
    # The live node notices the hand edit, reports it and keeps its last good state.
    live = eventually(
        lambda: (s := state_of(address)) and s["stateError"] and s,
        "the live node reports stateError",
    )
    assert live["state"] == good["state"]
    # Restarted on the poisoned file, it starts, reports it, and recovers from its peers.
    after = loop.restart_and_check(victim)
    assert after["state"] == good["state"]
    assert _invalid_count(address) >= 1

    def stored_again() -> bool:
        stored = json.loads(path.read_bytes())
        if isinstance(stored, dict):
            stored.pop(contract.HISTORY_STATE_KEY, None)  # the decision history's tail
        return bool(stored == good["state"])

    eventually(stored_again, "the good state stored again")


def test_an_unreadable_state_file_never_stops_the_node(loop: Loop) -> None:
    good = state_of(loop.addresses[2])
    assert good is not None
    path = loop.state_dir / "local-2.json"
    path.unlink()
    path.mkdir()  # a directory where the file should be
    try:
        # It cannot persist, so it stays on its initial state (a 200 means durable)
        # but serves, loops and says why.
        after = loop.restart_and_check(2, caught_up=False)
        assert "cannot read" in after["stateError"]
    finally:
        path.rmdir()
    loop.restart_and_check(2)


def _generation(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    match = re.search(r"generation (\d+) injected through", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_racing_set_targets_get_unique_generations(loop: Loop) -> None:
    targets = [{"race": i} for i in range(4)]
    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(loop.set_target, targets))
    generations = [_generation(r) for r in results]
    assert len(set(generations)) == len(generations)
    newest = max(generations)
    winner = targets[generations.index(newest)]
    assert int((loop.state_dir / GENERATION_FILE).read_text()) == newest
    eventually(
        lambda: all(
            s is not None and s["state"] == {"generation": newest, "target": winner}
            for s in loop.states()
        ),
        "every node on the newest injection's target",
    )


def test_a_second_run_on_a_live_state_dir_is_refused(loop: Loop) -> None:
    (port,) = free_ports(1)
    second = subprocess.run(
        [
            *(SCRIPT, "run", "--nodes", "1", "--state-dir", str(loop.state_dir)),
            *("--duration", "5", "--base-port", str(port), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "already runs" in second.stderr
    assert f"pid {loop.process.pid}" in second.stderr
    # The running loop is untouched.
    assert read_run_file(loop.state_dir).supervisor_pid == loop.process.pid
    assert all(s is not None and s["ready"] for s in loop.states())
