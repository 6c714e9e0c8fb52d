"""A rolling update of a real loop from protocol version 1 to 2 and back (issue 10 §3),
and the decision history of real processes (§4).

The version 1 nodes run the code of the last version 1 commit itself
(2be2cff, frozen as `fixtures/wire_v1/node-v1.tar.gz`: history may be
rewritten) and started as `reactive-loop node` processes with PYTHONPATH on
it; the version 2 nodes run this checkout. A converge ring of three is upgraded
one node at a time (as the operator rolls pods), then one node is rolled back;
a new target is injected after every step and must reach every node. A token
ring of three is upgraded the same way, and the token must be acted on again
once every node speaks version 2. In both, no node may answer 400 or count a
`rejected` wait on the way (a restart's `refused` waits are not the version's):
the version 1 token nodes refuse a state with fields they do not know, so a
version 2 node sends them, and answers them, only the fields of version 1. And
no two version 2 nodes act as the token holder at once (their decision
histories say when each acted; the version 1 nodes keep no history).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node.test_local_processes import SCRIPT, eventually, http, state_of
from reactive_node.core import contract, history
from reactive_node.core.behaviors.base import canonical
from reactive_node.local.supervisor import free_ports

V1_ARCHIVE = Path(__file__).parent / "fixtures" / "wire_v1" / "node-v1.tar.gz"
"""`git archive 2be2cff node | gzip -9n`: the node code of the last version 1
commit that landed (its wire format is d29e2e1's)."""
ROOT = Path(__file__).resolve().parents[2]
LOOP = "roll"
NODES = 3

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def v1_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `node/` folder of the last version 1 commit, from the frozen archive
    (`fixtures/wire_v1/node-v1.tar.gz`: git history may not hold the commit)."""
    folder = tmp_path_factory.mktemp("wire-v1")
    with tarfile.open(V1_ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    node = folder / "node"
    assert "PROTOCOL_VERSION" not in (node / "reactive_node" / "codec.py").read_text()
    return node


#: A token loop that hands the token on within a second or two, with room for a
#: slow machine: a lease of 3 intervals (0.6 s), a loss timeout both versions accept.
TOKEN_ENV = {
    contract.ENV_INTERVAL: "0.2",
    contract.ENV_TOKEN_HOLD: "1.0",
    contract.ENV_TOKEN_LOSS_TIMEOUT: "4.0",
}


@dataclass
class Ring:
    ports: list[int]
    state_dir: Path
    v1_code: Path
    behavior: str = "converge"
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    acted: list[tuple[str, float, float]] = field(default_factory=list)
    """(node, from, to): when a version 2 node acted as the token holder."""
    env: dict[str, str] = field(default_factory=dict)
    """Settings over the ring's own."""

    def address(self, ordinal: int) -> str:
        return f"127.0.0.1:{self.ports[ordinal]}"

    def start(self, ordinal: int, version: int) -> None:
        env = {
            **os.environ,
            contract.ENV_LOOP: LOOP,
            contract.ENV_NODE: f"{LOOP}-{ordinal}",
            contract.ENV_ORDINAL: str(ordinal),
            contract.ENV_REPLICAS: str(NODES),
            contract.ENV_BEHAVIOR: self.behavior,
            contract.ENV_TOPOLOGY: "ring",
            contract.ENV_PEERS: ",".join(self.address(i) for i in range(NODES)),
            contract.ENV_BIND: "127.0.0.1",
            contract.ENV_PORT: str(self.ports[ordinal]),
            contract.ENV_STORE: "file",
            contract.ENV_STATE_DIR: str(self.state_dir),
            contract.ENV_INTERVAL: "0.1",
            **(TOKEN_ENV if self.behavior == "token" else {}),
            **self.env,
        }
        if version == 1:
            env["PYTHONPATH"] = str(self.v1_code)
            command = [sys.executable, "-c", "import sys; from reactive_node.cli import main; "
                       "sys.exit(main())", "node"]  # fmt: skip
        else:
            env.pop("PYTHONPATH", None)
            command = [SCRIPT, "node"]
        log = (self.state_dir / f"{LOOP}-{ordinal}.v{version}.log").open("ab")
        self.processes[ordinal] = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.versions[ordinal] = version

        def ready() -> bool:
            s = state_of(self.address(ordinal))
            return bool(s and s.get("ready") and s.get("boot"))

        eventually(ready, f"node {ordinal} (version {version}) ready", 30)
        got = state_of(self.address(ordinal))
        assert got is not None
        # The version 1 code has no "protocol" in /v1/state: it is the old code indeed.
        assert ("protocol" in got) == (version == 2), got

    def stop(self, ordinal: int) -> None:
        if self.behavior == "token" and self.versions[ordinal] == 2:
            self.record_acting(ordinal)
        process = self.processes.pop(ordinal)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    def metric(self, ordinal: int, name: str, label: str) -> float:
        status, text = http("GET", f"http://{self.address(ordinal)}{contract.METRICS_PATH}")
        assert status == 200
        values = re.findall(rf"^{name}{{[^}}]*{label}[^}}]*}} (\S+)$", text, re.M)
        return sum(float(v) for v in values)

    def version_faults(self, ordinal: int) -> tuple[float, float]:
        """(400 answers served, `rejected` waits) of a running node."""
        return (
            self.metric(ordinal, contract.M_REQUESTS, 'outcome="bad_request"'),
            self.metric(ordinal, contract.M_WAITS, 'reason="rejected"'),
        )

    def inject(self, ordinal: int, generation: int, target: Any) -> None:
        result = subprocess.run(
            [SCRIPT, "set-target", json.dumps(target), "--peer", self.address(ordinal)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert f"generation {generation} " in result.stdout, result.stdout

    def record_acting(self, ordinal: int) -> None:
        """Note when the running version 2 node `ordinal` acted as the holder,
        from its decision history (an interval still open ends now)."""
        status, doc = http("GET", f"http://{self.address(ordinal)}{contract.HISTORY_PATH}?since=0")
        assert status == 200, doc
        now = time.time()
        start: float | None = None
        for entry in doc["entries"]:
            if entry["kind"] == "acquire":
                start = float(entry["at"])
            elif entry["kind"] == "release" and start is not None:
                self.acted.append((doc["node"], start, float(entry["at"])))
                start = None
        if start is not None:
            self.acted.append((doc["node"], start, now))

    def acting(self) -> list[str]:
        """The nodes whose `/v1/state` says they act as the holder now."""
        return [
            s["node"]
            for i in range(NODES)
            if (s := state_of(self.address(i))) is not None and s["summary"].get("holding")
        ]

    def all_hold(self, generation: int, target: Any) -> bool:
        want = {"generation": generation, "target": target}
        return all(
            (s := state_of(self.address(i))) is not None and s["state"] == want
            for i in range(NODES)
        )


@pytest.fixture
def ring(v1_code: Path, tmp_path: Path) -> Iterator[Ring]:
    running = Ring(free_ports(NODES), tmp_path, v1_code)
    try:
        yield running
    finally:
        for process in running.processes.values():
            process.kill()
            process.wait()


def test_a_rolling_update_from_version_1_to_2_and_back_needs_no_400_and_no_wait(
    ring: Ring,
) -> None:
    for i in range(NODES):
        ring.start(i, 1)
    generation = 1
    ring.inject(0, generation, {"step": "all v1"})
    eventually(lambda: ring.all_hold(1, {"step": "all v1"}), "the v1 loop converges", 30)
    faults: dict[str, tuple[float, float]] = {}
    # Upgrade one node at a time, highest ordinal first (as the operator rolls pods).
    steps = [(2, 2), (1, 2), (0, 2), (1, 1)]  # ... and roll node 1 back to version 1
    for ordinal, version in steps:
        # Before a node goes, its counts are read.
        faults[f"{ordinal}@v{ring.versions[ordinal]}"] = ring.version_faults(ordinal)
        ring.stop(ordinal)
        ring.start(ordinal, version)
        generation += 1
        target = {"step": f"node {ordinal} now v{version}"}
        ring.inject((ordinal + 1) % NODES, generation, target)

        def converged(g: int = generation, t: dict[str, str] = target) -> bool:
            return ring.all_hold(g, t)

        eventually(
            converged,
            f"every node holds generation {generation} after node {ordinal} became v{version}",
            30,
        )
        for i in range(NODES):
            faults[f"{i}@v{ring.versions[i]}"] = ring.version_faults(i)
        if version == 2 and ordinal == 0:
            # All on version 2: they speak it to each other.
            def speak_2() -> bool:
                peers = [state_of(ring.address(i)) for i in range(NODES)]
                return all(
                    p is not None and set(p["protocol"]["peers"].values()) == {2} for p in peers
                )

            eventually(speak_2, "every node talks version 2 to its successor", 10)

    # Converge also pulls: node 1 can hold the last target from its own round trip to
    # node 2 before node 0 (which last spoke 2 to it) has sent it anything. Wait until
    # node 0 has had its answer from the rolled-back node, then read that node's counts.
    def zero_speaks_1_to_1() -> bool:
        s = state_of(ring.address(0))
        return s is not None and s["protocol"]["peers"].get(f"{LOOP}-1") == 1

    eventually(zero_speaks_1_to_1, "node 0 talks version 1 to the rolled-back node 1", 10)
    faults["1@v1"] = ring.version_faults(1)
    rolled_back = faults.pop("1@v1")
    assert all(f == (0.0, 0.0) for f in faults.values()), faults
    # The node rolled back saw version 2 bodies from the nodes that had talked 2 to it
    # (its predecessor, and with ring skips another): each sent one, then spoke 1.
    assert rolled_back[1] == 0.0
    assert 1.0 <= rolled_back[0] <= 2.0, rolled_back
    for i in (0, 2):  # the version 2 nodes never waited for the version
        assert ring.version_faults(i) == (0.0, 0.0)


@pytest.fixture
def token_ring(v1_code: Path, tmp_path: Path) -> Iterator[Ring]:
    running = Ring(free_ports(NODES), tmp_path, v1_code, behavior="token")
    try:
        yield running
    finally:
        for process in running.processes.values():
            process.kill()
            process.wait()


def test_a_rolling_update_of_a_token_ring_needs_no_400_and_no_wait(token_ring: Ring) -> None:
    ring = token_ring
    for i in range(NODES):
        ring.start(i, 1)
    eventually(lambda: ring.acting(), "the version 1 ring holds a token", 30)
    for ordinal in (2, 1, 0):  # highest ordinal first, as the operator rolls pods
        before = ring.version_faults(ordinal)
        assert before == (0.0, 0.0), (ordinal, before)
        ring.stop(ordinal)
        ring.start(ordinal, 2)

        def went_round(since: float = time.time()) -> bool:
            # Every node looped since the step (the mixed ring runs a while).
            return all(
                (s := state_of(ring.address(i))) is not None
                and (s.get("lastLoopAt") or 0) > since + 2.0
                for i in range(NODES)
            )

        eventually(went_round, f"the ring loops with node {ordinal} on version 2", 30)
        for i in range(NODES):
            assert ring.version_faults(i) == (0.0, 0.0), (i, ring.versions)

    def speak_2() -> bool:
        peers = [state_of(ring.address(i)) for i in range(NODES)]
        return all(p is not None and set(p["protocol"]["peers"].values()) == {2} for p in peers)

    eventually(speak_2, "every node talks version 2", 15)
    # The token is acted on again: by one node (the others' summaries say no).
    eventually(lambda: len(ring.acting()) == 1, "one node acts as the holder", 60)
    for i in range(NODES):
        assert ring.version_faults(i) == (0.0, 0.0), i
        ring.record_acting(i)
    assert any(node for node, _, _ in ring.acted)
    overlaps = [
        (a, b)
        for a in ring.acted
        for b in ring.acted
        if a[0] < b[0] and a[1] < b[2] and b[1] < a[2]
    ]
    assert not overlaps, overlaps


def test_a_stopping_holder_hands_the_token_on(v1_code: Path, tmp_path: Path) -> None:
    """SIGTERM to the acting holder (a pod deleted): in its last round trip it
    offers the token to its peer without waiting out its hold, and the peer
    acts once a majority vouched. The loss timeout (60 s) is far longer than
    the test waits, so the new holder cannot be a regeneration."""
    env = {contract.ENV_TOKEN_LOSS_TIMEOUT: "60", contract.ENV_TOKEN_HOLD: "30"}
    ring = Ring(free_ports(NODES), tmp_path, v1_code, behavior="token", env=env)
    try:
        for i in range(NODES):
            ring.start(i, 2)
        eventually(lambda: len(ring.acting()) == 1, "one node acts as the holder", 30)
        (holder,) = ring.acting()
        ordinal = int(holder.rsplit("-", 1)[1])
        ring.stop(ordinal)  # SIGTERM; the hold (30 s) has not run out

        def successor() -> str | None:
            acting = ring.acting()
            return acting[0] if len(acting) == 1 and acting[0] != holder else None

        new = eventually(successor, "another node acts after the holder stopped", 20)
        assert new is not None
        status, doc = http(
            "GET", f"http://{ring.address(int(new.rsplit('-', 1)[1]))}{contract.HISTORY_PATH}"
        )
        assert status == 200, doc
        kinds = [e["kind"] for e in doc["entries"]]
        assert "acquire" in kinds, kinds
        assert "regenerate" not in kinds, kinds
        stopped = json.loads((tmp_path / f"{holder}.json").read_text())
        assert stopped["offer"] is not None or not stopped["holding"], stopped
    finally:
        for process in ring.processes.values():
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def local_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("history-loop")
    process = subprocess.Popen(
        [
            *(SCRIPT, "run", "--nodes", "4", "--behavior", "converge", "--topology", "ring"),
            *("--interval", "0.2", "--state-dir", str(state_dir), "--json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually(lambda: (state_dir / "run.json").exists(), "run file written", 30)
        yield state_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def test_every_node_records_the_adoption_of_an_injected_target(local_loop: Path) -> None:
    from reactive_node.local.runfile import read_run_file

    addresses = read_run_file(local_loop).addresses
    eventually(lambda: all((s := state_of(a)) and s.get("ready") for a in addresses), "ready", 60)
    target = {"image": "history:v1"}
    result = subprocess.run(
        [SCRIPT, "set-target", json.dumps(target), "--state-dir", str(local_loop)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"generation (\d+) injected through (\S+)", result.stdout)
    assert match, result.stdout
    generation = int(match.group(1))
    want = history.digest(canonical(target))

    def adoption(address: str) -> dict[str, Any] | None:
        status, doc = http("GET", f"http://{address}{contract.HISTORY_PATH}?since=0")
        assert status == 200, doc
        for entry in doc["entries"]:
            if entry["kind"] == "adopt" and entry["generation"] == generation:
                return dict(entry)
        return None

    entries: dict[str, dict[str, Any]] = {}
    for address in addresses:

        def adopted(a: str = address) -> dict[str, Any] | None:
            return adoption(a)

        entries[address] = eventually(adopted, f"{address} records generation {generation}")
    injected = [e for e in entries.values() if e["rt"]["peer"] == contract.OPERATOR_SENDER]
    assert len(injected) == 1, entries  # one node took it from set-target, the others from peers
    names = {f"local-{i}" for i in range(len(addresses))}
    for address, entry in entries.items():
        assert entry["target"] == want
        rt = entry["rt"]
        assert rt["answer"].startswith("sha256:")
        assert len(rt["answer"]) == 23
        assert rt["peer"] in names | {contract.OPERATOR_SENDER}
        assert int(rt["boot"]) > 0
        assert int(rt["seq"]) >= 1
        # The state file holds the tail with the adoption in it.
        node = state_of(address)
        assert node is not None
        stored = json.loads((local_loop / f"{node['node']}.json").read_text())
        assert any(
            e["kind"] == "adopt" and e["generation"] == generation
            for e in stored[contract.HISTORY_STATE_KEY]
        )
    status, bad = http("GET", f"http://{addresses[0]}{contract.HISTORY_PATH}?since=yesterday")
    assert status == 400
    assert bad["error"] == "bad_request"
