"""Signed local loops with real processes: the documented key rotation causes no
`unauthorized` wait, `set-target` signs, and replays are refused across a
restart and across nodes (docs/node.md, "Rotating the key").

One `reactive-loop run --auth` (four nodes, mesh, so every node talks to every
other) serves the module; the tests run in order.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from node.test_local_processes import SCRIPT
from node.test_local_processes import eventually as poll
from reactive_node.core import auth, contract
from reactive_node.local.runfile import key_files, read_run_file
from reactive_node.runtime import keyfiles

NODES = 4
T = TypeVar("T")

pytestmark = pytest.mark.processes


def eventually(probe: Callable[[], T | None], what: str, deadline: float = 30.0) -> T:
    return poll(probe, what, deadline)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Loop:
    process: subprocess.Popen[str]
    state_dir: Path

    @property
    def addresses(self) -> list[str]:
        return read_run_file(self.state_dir).addresses

    def states(self) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for address in self.addresses:
            status, text = get(f"http://{address}{contract.STATE_PATH}")
            out.append(json.loads(text) if status == 200 else None)
        return out

    def unauthorized(self) -> dict[str, float]:
        """Per node: `unauthorized` waits plus `unauthorized` answers, from /metrics."""
        pattern = re.compile(
            rf'^(?:{contract.M_WAITS}{{[^}}]*reason="unauthorized"[^}}]*}}'
            rf'|{contract.M_REQUESTS}{{[^}}]*outcome="unauthorized"[^}}]*}}) (\S+)$',
            re.M,
        )
        counts = {}
        for address in self.addresses:
            status, text = get(f"http://{address}{contract.METRICS_PATH}")
            assert status == 200
            values = pattern.findall(text)
            assert len(values) == 2, text  # both series exist, so 0 is a real zero
            counts[address] = sum(float(v) for v in values)
        return counts

    def all_know(self, keyid: str, *, primary: bool = False) -> bool:
        states = self.states()
        return all(
            s is not None
            and s["auth"] is not None
            and (s["auth"]["primary"] == keyid if primary else keyid in s["auth"]["keyIds"])
            for s in states
        )

    def looped_since(self, loops: list[int]) -> bool:
        states = self.states()
        return all(
            s is not None and s["loops"] >= n + 3 for s, n in zip(states, loops, strict=True)
        )

    def loops(self) -> list[int]:
        return [s["loops"] if s is not None else 0 for s in self.states()]

    def set_target(self, target: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, "set-target", json.dumps(target), "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    state_dir = tmp_path_factory.mktemp("signed")
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", str(NODES), "--behavior", "converge", "--auth"),
            *("--topology", "mesh", "--interval", "0.2", "--state-dir", str(state_dir), "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Loop(process, state_dir)
    try:
        eventually(lambda: (state_dir / "run.json").exists(), "run file written", 30)
        eventually(
            lambda: all(s is not None and s["phase"] == "looping" for s in running.states()),
            "all nodes looping",
            60,
        )
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_run_auth_makes_a_private_key_and_every_node_signs(loop: Loop) -> None:
    primary, accepted = key_files(loop.state_dir)
    assert primary.stat().st_mode & 0o077 == 0
    assert accepted.read_text() == ""
    keyid = keyfiles.load_keyring(primary).primary_id
    assert loop.all_know(keyid, primary=True)
    # An unsigned round trip is refused; the loop itself is never.
    address = loop.addresses[0]
    body = json.dumps({"loop": "local", "from": "x", "boot": 1, "seq": 1, "state": {}})
    status, answer = post(f"http://{address}{contract.ROUNDTRIP_PATH}", body.encode(), {})
    assert (status, answer["error"]) == (401, "unauthorized")
    assert sum(loop.unauthorized().values()) == 1  # that one answer, no wait


def test_set_target_signs_with_the_run_key(loop: Loop) -> None:
    result = loop.set_target({"step": 0})
    assert result.returncode == 0, result.stderr
    eventually(
        lambda: all(s and s["state"]["target"] == {"step": 0} for s in loop.states()),
        "target spread",
    )


def test_rotation_causes_no_unauthorized_wait(loop: Loop) -> None:
    """The procedure of docs/node.md, step by step, with the loop and set-target
    running throughout; no node ever waits `unauthorized`, none refuses."""
    primary, accepted = key_files(loop.state_dir)
    before = loop.unauthorized()
    old = primary.read_text().strip()
    new = secrets.token_hex(32)
    old_id, new_id = auth.key_id(old.encode()), auth.key_id(new.encode())

    # 1. Accept the new key everywhere, and wait until every node has it.
    write_atomically(accepted, new + "\n")
    eventually(lambda: loop.all_know(new_id), "every node accepts the new key")
    start = loop.loops()
    eventually(lambda: loop.looped_since(start), "loops after step 1")
    assert loop.set_target({"step": 1}).returncode == 0

    # 2. Sign with the new key (the old one stays accepted: first the accepted
    #    file holds both, then the primary changes), and wait until every node signs with it.
    write_atomically(accepted, f"{new}\n{old}\n")
    write_atomically(primary, new + "\n")
    eventually(lambda: loop.all_know(new_id, primary=True), "every node signs with the new key")
    start = loop.loops()
    eventually(lambda: loop.looped_since(start), "loops after step 2")
    assert loop.set_target({"step": 2}).returncode == 0

    # 3. Drop the old key.
    write_atomically(accepted, "")
    eventually(
        lambda: all(s and s["auth"]["keyIds"] == [new_id] for s in loop.states()),
        "every node has dropped the old key",
    )
    start = loop.loops()
    eventually(lambda: loop.looped_since(start), "loops after step 3")
    assert loop.set_target({"step": 3}).returncode == 0
    eventually(
        lambda: all(s and s["state"]["target"] == {"step": 3} for s in loop.states()),
        "target spread",
    )

    assert loop.unauthorized() == before
    # The old key is refused now.
    address, name = loop.addresses[1], "local-1"
    raw = json.dumps({"loop": "local", "from": "local-0", "boot": 1, "seq": 1, "state": {}})
    stale = auth.sign(
        auth.Keyring.of(old.encode()), sender="local-0", recipient=name, body=raw.encode(),
        now=time.time(),
    )  # fmt: skip
    status, answer = post(
        f"http://{address}{contract.ROUNDTRIP_PATH}",
        raw.encode(),
        {contract.SIGNATURE_HEADER: stale},
    )
    assert status == 401, answer
    assert f"unknown key id {old_id}" in answer["detail"], answer


def test_replays_are_refused_across_nodes_and_restarts(loop: Loop) -> None:
    keys = keyfiles.load_keyring(key_files(loop.state_dir)[0])
    states = loop.states()
    assert states[1] is not None
    generation = states[1]["state"]["generation"]
    raw = json.dumps(
        {
            "loop": "local",
            "from": contract.OPERATOR_SENDER,
            "boot": time.time_ns(),
            "seq": 1,
            "state": {"generation": generation, "target": {"step": 3}},
        }
    ).encode()
    header = {
        contract.SIGNATURE_HEADER: auth.sign(
            keys, sender=contract.OPERATOR_SENDER, recipient="local-1", body=raw, now=time.time()
        )
    }
    one, two = (f"http://{a}{contract.ROUNDTRIP_PATH}" for a in loop.addresses[1:3])
    assert post(one, raw, header)[0] == 200
    status, answer = post(one, raw, header)
    assert status == 401
    assert "replayed" in answer["detail"]
    status, answer = post(two, raw, header)
    assert status == 401
    assert "signed for local-1, this is local-2" in answer["detail"]
    # Restarted, node 1 has forgotten the signature but not its start time.
    pid = read_run_file(loop.state_dir).pids[1]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(
        lambda: (
            read_run_file(loop.state_dir).pids[1] not in (None, pid)
            and get(f"http://{loop.addresses[1]}{contract.READY_PATH}")[0] == 200
        ),
        "node 1 restarted",
    )
    status, answer = post(one, raw, header)
    assert status == 401, answer
    assert "before this node started" in answer["detail"], answer
