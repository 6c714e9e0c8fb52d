"""The operator end to end on kind: kubectl flows against real node containers.

The session's operator (`operator`) is a helm release of its own in a fresh
namespace that enforces Pod Security `restricted`, watching only that
namespace, with the images `make deploy` loaded into kind. The quickstart's
operator, which watches every namespace, is fenced out of it (conftest
`fence`), so every change seen there is this operator's doing. Every test
applies its own ReactiveLoop there and removes it afterwards.

The host cannot route to pod IPs on kind: the operator's /readyz and
/metrics are read through the API server's pod proxy, node endpoints from
inside a pod of the loop, and the token webhook listens on the host's address
on the kind docker network, which pods reach.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from kind.conftest import quickstart_operator_user
from kind.e2e import EXAMPLES, Loops, Operator
from kind.kindcluster import Kind


def example(name: str, **spec: Any) -> dict[str, Any]:
    """An example manifest from examples/, with spec fields overridden."""
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(manifest, dict)
    manifest["spec"].update(spec)
    return manifest


def loop(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "reactive-loop.dev/v1alpha1",
        "kind": "ReactiveLoop",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, **spec},
    }


def looping_converged(loops: Loops, name: str, replicas: int, generation: int | None = None) -> Any:
    obj = loops.get(name)
    status = obj.get("status") or {}
    conv = next((c for c in status.get("conditions") or [] if c["type"] == "Converged"), None)
    gen = generation if generation is not None else status.get("targetGeneration")
    return (
        status.get("looping") == replicas
        and status.get("readyReplicas") == replicas
        and conv is not None
        and conv["status"] == "True"
        and status.get("convergedGeneration") == gen
        and obj
    )


def uids(loops: Loops, name: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in loops.pods(name)}


def pod_ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def test_converge_lifecycle(kind: Kind, loops: Loops) -> None:
    name = loops.apply(example("converge.yaml", replicas=3))
    obj = kind.wait_for(
        lambda: looping_converged(loops, name, 3), timeout=180, what="3 nodes looping, Converged"
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # The namespace enforces Pod Security `restricted`: the pods were admitted.
    ns_labels = kind.get("namespace", loops.namespace)["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = loops.pods(name)
    assert [p["metadata"]["name"] for p in pods] == ["demo-0", "demo-1", "demo-2"]
    assert all(p["status"]["phase"] == "Running" for p in pods)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    table = kind.kubectl("get", "rloop", name, "-n", loops.namespace).stdout
    assert "LOOPING" in table
    # What the summary means is on the line itself, and Degraded without -o wide.
    assert "target 1: 3/3 nodes" in table, table
    assert "DEGRADED" in table.splitlines()[0], table

    # A new target becomes a new generation that every node reaches.
    generation = loops.patch(name, {"target": {"version": "v2"}})
    kind.wait_for(
        lambda: looping_converged(loops, name, 3, generation),
        timeout=120,
        what=f"convergence on generation {generation}",
    )
    injected = [e for e in loops.events(name) if e["reason"] == "TargetInjected"]
    assert any(f"generation {generation}" in e["message"] for e in injected)

    # Scale up: new pods only; the old ones keep their identity.
    before = uids(loops, name)
    kind.kubectl("scale", "rloop", name, "-n", loops.namespace, "--replicas=5")
    kind.wait_for(lambda: looping_converged(loops, name, 5), timeout=180, what="5 nodes converged")
    after = uids(loops, name)
    assert {k: after[k] for k in before} == before, "scaling up restarted a pod"
    for pod in loops.pods(name):
        assert pod["metadata"]["annotations"]["reactive-loop.dev/replicas"] == "5"

    # Scale down: highest ordinals go, with their RBAC; the rest stay.
    kind.kubectl("scale", "rloop", name, "-n", loops.namespace, "--replicas=2")
    kind.wait_for(
        lambda: [p["metadata"]["name"] for p in loops.pods(name)] == ["demo-0", "demo-1"],
        timeout=120,
        what="pods demo-2..4 gone",
    )
    assert uids(loops, name) == {k: before[k] for k in ("demo-0", "demo-1")}
    kind.wait_for(
        lambda: (
            kind.find("serviceaccount", "demo-4", loops.namespace) is None
            and kind.find("role", "demo-3", loops.namespace) is None
        ),
        timeout=60,
        what="RBAC of removed nodes deleted",
    )
    kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=120, what="2 converged")

    # A deleted pod is recreated and catches up from its peer.
    old = kind.faults.delete_pod(loops.namespace, "demo-1")
    kind.wait_for(
        lambda: uids(loops, name).get("demo-1") not in (None, old),
        timeout=120,
        what="demo-1 recreated",
    )
    status = kind.wait_for(
        lambda: looping_converged(loops, name, 2, generation),
        timeout=120,
        what="recreated demo-1 caught up",
    )["status"]
    assert "nodes" not in status  # it lists only nodes that need attention


def test_a_partitioned_node_waits_then_catches_up_after_restore(kind: Kind, loops: Loops) -> None:
    name = loops.apply(
        loop(
            "cut",
            3,
            target={"v": 1},
            loop={"interval": 1, "timeout": 0.5, "maxBackoff": 4, "ringSkip": 2},
        )
    )
    kind.wait_for(lambda: looping_converged(loops, name, 3), timeout=180, what="converged")
    ns, cut_pod = loops.namespace, f"{name}-1"
    peers = (f"{name}-0", f"{name}-2")

    def waits() -> int:
        """The peers' own wait counters (the status keeps no per-node counters)."""
        ips = [p["status"]["podIP"] for p in loops.pods(name) if p["metadata"]["name"] in peers]
        return sum(int(s.get("waits") or 0) for s in in_pod(kind, ns, peers[0], "states", ips=ips))

    waits_before = waits()
    with kind.faults.partition(ns, cut_pod):
        # The operator cannot ask the cut node; its pod stays Ready (the
        # kubelet's probes come from its own node, which the cut spares).
        cond = kind.wait_for(
            lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "True" and c,
            timeout=60,
            what="Degraded=True while a node is cut off",
        )
        assert cond["reason"] == "NodesUnreachable"
        assert cut_pod in cond["message"]
        listed = loops.get(name)["status"]["nodes"]
        assert any(n.startswith(f"{cut_pod}: ") and "unreachable" in n for n in listed), listed
        assert pod_ready(kind.get("pod", "-n", ns, cut_pod))
        # Its peers' round trips to it time out: they report waits.
        kind.wait_for(
            lambda: waits() > waits_before,
            timeout=90,
            what="the cut node's peers report waits",
        )
        # A new target reaches the reachable nodes only: not Converged.
        generation = loops.patch(name, {"target": {"v": 2}})

        def others_on_new_generation() -> dict[str, Any] | None:
            status: dict[str, Any] = loops.get(name).get("status") or {}
            # The cut node cannot hold it: the two that do are its peers.
            return status if status.get("summary") == f"target {generation}: 2/3 nodes" else None

        status = kind.wait_for(
            others_on_new_generation, timeout=90, what="the reachable nodes on the new generation"
        )
        converged = next(c for c in status["conditions"] if c["type"] == "Converged")
        assert converged["status"] == "False"
        assert status.get("convergedGeneration") != generation
    # Restored: the cut node catches up from its peers; all looping, Converged.
    obj = kind.wait_for(
        lambda: looping_converged(loops, name, 3, generation),
        timeout=120,
        what="the restored node caught up, Converged",
    )
    assert "nodes" not in obj["status"]  # every node fine again
    kind.wait_for(
        lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "False",
        timeout=60,
        what="Degraded=False after the restore",
    )


def test_bad_annotation_is_reported_and_nothing_is_lost(kind: Kind, loops: Loops) -> None:
    name = loops.apply(loop("scribble", 2, target={"keep": "me"}))
    obj = kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=180, what="converged")
    generation = obj["status"]["convergedGeneration"]
    kind.kubectl(
        "annotate", "pod", f"{name}-0", "-n", loops.namespace, "--overwrite",
        "reactive-loop.dev/state={not json",
    )  # fmt: skip
    cond = kind.wait_for(
        lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "True" and c,
        timeout=60,
        what="Degraded=True",
    )
    assert cond["reason"] == "InvalidNodeState"
    assert f"{name}-0" in cond["message"]
    kind.wait_for(
        lambda: any(e["reason"] == "InvalidNodeState" for e in loops.events(name)),
        timeout=60,
        what="an InvalidNodeState event",
    )
    status = loops.get(name)["status"]
    assert status["summary"] == f"target {generation}: 2/2 nodes", "a node lost its last good state"
    assert any(n.startswith(f"{name}-0: invalid state") for n in status["nodes"]), status
    # The loop keeps working: a new target still converges everywhere.
    new = loops.patch(name, {"target": {"keep": "me too"}})
    kind.wait_for(
        lambda: looping_converged(loops, name, 2, new), timeout=120, what="still converges"
    )


def test_invalid_spec_gets_a_condition_not_a_crash(
    kind: Kind, loops: Loops, operator: Operator
) -> None:
    big = {"blob": "x" * 9000}  # schema-valid (one key) but above the operator's 8 KiB bound
    name = loops.apply(loop("toobig", 2, target=big))
    cond = kind.wait_for(
        lambda: (c := loops.condition(name, "Degraded")) and c["status"] == "True" and c,
        timeout=60,
        what="Degraded=True for an invalid spec",
    )
    assert cond["reason"] == "InvalidSpec"
    assert "8192" in cond["message"]
    assert any(e["reason"] == "InvalidSpec" for e in loops.events(name))
    assert loops.pods(name) == []
    # Fixing it recovers without restarting anything.
    loops.patch(name, {"target": {"blob": "small"}})
    kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=180, what="recovered")
    metrics = operator.metrics()
    assert "reactive_loop_operator_reconciles_total" in metrics
    assert operator.reconciles("invalid") >= 1


def test_rbac_matrix(kind: Kind, loops: Loops, operator: Operator) -> None:
    name = loops.apply(loop("rbac", 2, target={"a": 1}))
    ns = loops.namespace
    kind.wait_for(lambda: kind.find("rolebinding", f"{name}-1", ns), timeout=60, what="node RBAC")

    def can(verb: str, resource: str, *, as_node: int = 0, namespace: str = ns) -> bool:
        proc = kind.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace,
            "--as", f"system:serviceaccount:{ns}:{name}-{as_node}",
            check=False,
        )  # fmt: skip
        return proc.stdout.strip() == "yes"

    own = f"pods/{name}-0"
    other = f"pods/{name}-1"
    assert can("get", own)
    assert can("patch", own)
    assert can("watch", own)
    for verb in ("update", "delete"):
        assert not can(verb, own), verb
    for verb in ("get", "patch", "watch"):
        assert not can(verb, other), f"{verb} another node's pod"
    assert can("get", other, as_node=1)
    assert not can("list", "pods")
    assert not can("create", "pods")
    assert not can("get", "secrets")
    assert not can("get", "reactiveloops.reactive-loop.dev")
    assert not can("create", "events")
    assert not can("get", own, namespace="default")
    # Only the operator writes targets into a node pod (its inject annotation); a
    # node may patch its own pod, but its admission policy keeps it to its state
    # annotation (tests/chart/test_node_policies.py judges that on a real API server).

    def operator_can(user: str, verb: str, resource: str, namespace: str) -> bool:
        proc = kind.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, "--as", user, check=False
        )
        return proc.stdout.strip() == "yes"

    # The operators read no Secret (issue 11 §4): create only, in namespaced mode
    # (this session's operator) as in cluster-wide mode (the quickstart's).
    session = f"system:serviceaccount:{operator.namespace}:{operator.name}"
    for user, places in ((session, [ns]), (quickstart_operator_user(kind), [ns, "kube-system"])):
        for place in places:
            assert operator_can(user, "create", "secrets", place), (user, place)
            assert operator_can(user, "patch", "pods", place), (user, place)
            for verb in ("get", "list", "watch", "patch", "update", "delete"):
                assert not operator_can(user, verb, "secrets", place), (user, verb, place)
    assert not operator_can(session, "create", "secrets", "kube-system")


class Fence:
    """A webhook receiver: records every {node, epoch, event} the nodes post."""

    def __init__(self, host: str) -> None:
        calls: list[dict[str, Any]] = []
        self.calls = calls
        lock = threading.Lock()
        self.lock = lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    calls.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/fence"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acquires(self) -> list[tuple[str, tuple[int, int]]]:
        with self.lock:
            return [
                (c["node"], (int(c["epoch"][0]), int(c["epoch"][1])))
                for c in self.calls
                if c.get("event") == "acquire"
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fence_webhook(kind: Kind) -> Iterator[Fence]:
    f = Fence(kind.gateway())  # the host's address on the kind network, which pods reach
    try:
        yield f
    finally:
        f.close()


def test_token_one_holder_and_increasing_epochs(
    kind: Kind, loops: Loops, fence_webhook: Fence
) -> None:
    fence = fence_webhook
    manifest = example(
        "token.yaml",
        replicas=3,
        token={"holdSeconds": 1, "lossTimeoutSeconds": 6, "webhook": fence.url},
    )
    name = loops.apply(manifest)

    def healthy() -> Any:
        cond = loops.condition(name, "TokenHealthy")
        return cond is not None and cond["status"] == "True" and loops.get(name)

    kind.wait_for(healthy, timeout=180, what="TokenHealthy=True")
    kind.wait_for(lambda: len(fence.acquires()) >= 4, timeout=90, what="the token circulates")

    # Steady state: exactly one holder, seen repeatedly.
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 5 and time.monotonic() < deadline:
        token = loops.get(name)["status"].get("token") or {}
        if token.get("holders") == 1:
            seen += 1
        time.sleep(0.5)
    assert seen >= 5, "never saw a single holder five times"

    # Delete the holder's pod: a new token appears with a higher epoch.
    holder = loops.get(name)["status"]["token"]["holder"]
    before = len(fence.acquires())
    kind.faults.delete_pod(loops.namespace, holder)
    kind.wait_for(
        lambda: len(fence.acquires()) >= before + 3, timeout=180, what="circulation after loss"
    )
    kind.wait_for(healthy, timeout=120, what="TokenHealthy again")

    epochs = [epoch for _, epoch in fence.acquires()]
    assert len(set(epochs)) == len(epochs), f"an epoch was acquired twice: {epochs}"
    assert epochs == sorted(epochs), f"epochs at the fence went backwards: {epochs}"


def test_timing_change_rolls_pods_one_at_a_time(kind: Kind, loops: Loops) -> None:
    name = loops.apply(loop("roll", 3, target={"r": 1}))
    kind.wait_for(lambda: looping_converged(loops, name, 3), timeout=180, what="converged")
    before = uids(loops, name)
    hashes = {p["metadata"]["annotations"]["reactive-loop.dev/spec-hash"] for p in loops.pods(name)}
    loops.patch(name, {"loop": {"interval": 0.8, "timeout": 0.4}})
    worst = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pods = loops.pods(name)
        not_ready = 3 - sum(1 for p in pods if pod_ready(p))
        worst = max(worst, not_ready)
        now = uids(loops, name)
        if len(now) == 3 and not set(now.values()) & set(before.values()) and not_ready == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"pods were not all rolled: {uids(loops, name)}")
    assert worst <= 1, f"{worst} nodes were down at once during the roll"
    new_hashes = {
        p["metadata"]["annotations"]["reactive-loop.dev/spec-hash"] for p in loops.pods(name)
    }
    assert len(new_hashes) == 1
    assert new_hashes != hashes
    env = loops.pods(name)[0]["spec"]["containers"][0]["env"]
    assert {"name": "RL_INTERVAL", "value": "0.8"} in env


def test_standby_takes_over_and_the_loop_keeps_healing(
    kind: Kind, loops: Loops, operator: Operator
) -> None:
    """Two replicas: the leader freezes (SIGSTOP, as a hung process or a paused
    VM would), the standby takes the Lease once it expires and heals the loop;
    the old leader, resumed, finds the Lease taken and stands down. Then a
    clean shutdown: the leader's pod is deleted, it hands the Lease back, and
    another replica leads (the standby or the Deployment's replacement,
    whichever asks first)."""
    ns = loops.namespace
    operator.scale(2)
    frozen: tuple[str, int] | None = None
    try:
        leader = operator.settle(2)
        standby = next(p for p in operator.pods() if p != leader)
        name = loops.apply(loop("ha", 2, target={"ha": 1}))
        kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=180, what="converged")
        assert operator.phases() == {leader: "leading", standby: "standby"}, "two replicas led"
        lease = kind.get("lease", "-n", ns, operator.name)
        assert lease["spec"]["holderIdentity"] == leader

        # The leader hangs: it neither renews nor hands back the Lease.
        frozen = kind.container_pid(ns, leader)
        kind.node_exec(frozen[0], "kill", "-STOP", str(frozen[1]))
        kind.wait_for(
            lambda: operator.phase(standby) == "leading",
            timeout=90,
            what="the standby leads once the frozen leader's Lease expires",
        )
        assert kind.get("lease", "-n", ns, operator.name)["spec"]["holderIdentity"] == standby

        # The new leader heals the loop.
        old = kind.faults.delete_pod(ns, f"{name}-1")
        kind.wait_for(
            lambda: uids(loops, name).get(f"{name}-1") not in (None, old),
            timeout=120,
            what="the new leader recreates the pod",
        )
        kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=120, what="converged")

        # The old leader resumes, finds the Lease taken and stops leading
        # (its process ends and the kubelet restarts it as a standby).
        kind.node_exec(frozen[0], "kill", "-CONT", str(frozen[1]))
        frozen = None
        assert operator.settle(2) == standby
        assert kind.get("lease", "-n", ns, operator.name)["spec"]["holderIdentity"] == standby

        # A clean shutdown hands the Lease back: another replica leads at once.
        kind.faults.delete_pod(ns, standby)
        successor = kind.wait_for(
            lambda: (
                (h := kind.get("lease", "-n", ns, operator.name)["spec"].get("holderIdentity"))
                not in (None, "", standby)
                and h
            ),
            timeout=60,
            what="another replica holds the Lease after a clean shutdown",
        )
        assert operator.settle(2) == successor
    finally:
        if frozen is not None:
            kind.node_exec(frozen[0], "kill", "-CONT", str(frozen[1]))
        operator.scale(1)  # back to the session's single operator for the other tests
        operator.settle(1)


# Run inside a node pod of the loop (the image's own python and package): the
# NetworkPolicy admits peers, and the pod holds the loop's key files.
IN_POD = """
import json, sys, time, urllib.error, urllib.request
from pathlib import Path
from reactive_node.core import auth
from reactive_node.runtime import keyfiles

def call(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

cmd, args = sys.argv[1], json.loads(sys.argv[2])
if cmd == "states":
    print(json.dumps([call(f"http://{ip}:8080/v1/state")[1] for ip in args["ips"]]))
elif cmd == "metrics":
    out = []
    for ip in args["ips"]:
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as r:
            out.append(r.read().decode())
    print(json.dumps(out))
else:  # roundtrips: [{ip, to, sign, body, repeat}] -> statuses and details
    keys = None
    if args.get("key_text"):
        keys = auth.Keyring.of(args["key_text"].encode())
    elif args.get("key"):
        keys = keyfiles.load_keyring(Path(args["key"]))
    out = []
    for rt in args["roundtrips"]:
        data = json.dumps(rt["body"]).encode()
        headers = {}
        if rt.get("sign") and keys is not None:
            headers[auth.contract.SIGNATURE_HEADER] = auth.sign(
                keys, sender=rt["body"]["from"], recipient=rt["to"], body=data, now=time.time())
        for _ in range(rt.get("repeat", 1)):
            status, answer = call(f"http://{rt['ip']}:8080/v1/roundtrip", data, headers)
            out.append([status, (answer or {}).get("detail", "")])
    print(json.dumps(out))
"""
KEY_FILE = "/var/run/reactive-loop/hmac/primary"
#: A converge state that adopts nothing (generation 0 is below every target).
NO_TARGET: dict[str, Any] = {"generation": 0, "target": None}


def in_pod(kind: Kind, ns: str, pod: str, cmd: str, **args: Any) -> Any:
    return json.loads(kind.pod_exec(ns, pod, "python", "-c", IN_POD, cmd, json.dumps(args)).stdout)


def test_hmac_loop_signs_round_trips(kind: Kind, loops: Loops) -> None:
    manifest = example("converge-hmac.yaml", replicas=2)
    name = loops.apply(manifest)
    ns = loops.namespace
    kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=180, what="converged")
    secret = kind.find("secret", f"{name}-hmac", ns)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["name"] == name
    assert sorted(secret["data"]) == ["accepted", "primary"]
    # The operator knows it as its own by the uid its create returned (it cannot read it).
    assert loops.get(name)["status"]["hmacSecretUID"] == secret["metadata"]["uid"]
    # The key reaches the node as a file of the mounted Secret, never in its environment.
    pod0 = loops.pods(name)[0]
    env = {e["name"]: e for e in pod0["spec"]["containers"][0]["env"]}
    assert env["RL_HMAC_KEY_FILE"]["value"] == KEY_FILE
    assert "RL_HMAC_KEY" not in env
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values()), env
    volumes = {v["name"]: v for v in pod0["spec"]["volumes"]}
    assert volumes["hmac-keys"]["secret"]["secretName"] == f"{name}-hmac"
    # From a peer pod of the same loop (which the NetworkPolicy admits): unsigned
    # is refused; signed with the loop's key is accepted once, its replay is
    # refused, and a request signed for another node is refused.
    ip = pod0["status"]["podIP"]

    def body(seq: int) -> dict[str, Any]:
        return {"loop": name, "from": "probe", "boot": 1, "seq": seq, "state": NO_TARGET}

    answers = in_pod(
        kind,
        ns,
        f"{name}-1",
        "roundtrips",
        key=KEY_FILE,
        roundtrips=[
            {"ip": ip, "to": f"{name}-0", "sign": False, "body": body(1)},
            {"ip": ip, "to": f"{name}-0", "sign": True, "body": body(2), "repeat": 2},
            {"ip": ip, "to": f"{name}-1", "sign": True, "body": body(3)},
        ],
    )
    statuses = [status for status, _ in answers]
    assert statuses == [401, 200, 401, 401], answers
    assert "replayed" in answers[2][1], answers
    assert f"signed for {name}-1" in answers[3][1], answers
    assert any(e["reason"] == "TargetInjected" for e in loops.events(name))


def _waits(texts: list[str], reason: str) -> float:
    total = 0.0
    for text in texts:
        for line in text.splitlines():
            if line.startswith("reactive_loop_waits_total{") and f'reason="{reason}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_hmac_key_rotation_causes_no_unauthorized_wait(kind: Kind, loops: Loops) -> None:
    """docs/node.md "Rotating the key", on the kubelet's updates of the mounted Secret."""
    name = loops.apply(example("converge-hmac.yaml", replicas=3))
    ns = loops.namespace
    kind.wait_for(lambda: looping_converged(loops, name, 3), timeout=180, what="converged")
    secret = kind.find("secret", f"{name}-hmac", ns)
    assert secret is not None
    old = base64.b64decode(secret["data"]["primary"]).decode()
    new = secrets.token_hex(32)
    old_id, new_id = (hashlib.sha256(k.encode()).hexdigest()[:8] for k in (old, new))
    ips = [p["status"]["podIP"] for p in loops.pods(name)]
    probe = f"{name}-0"

    def set_keys(primary: str, accepted: str) -> None:
        data = {
            "primary": base64.b64encode(primary.encode()).decode(),
            "accepted": base64.b64encode(accepted.encode()).decode(),
        }
        kind.kubectl(
            "patch", "secret", f"{name}-hmac", "-n", ns, "--type=merge",
            "-p", json.dumps({"data": data}),
        )  # fmt: skip

    def every_node(check: Any, what: str) -> None:
        def holds() -> bool:
            states = in_pod(kind, ns, probe, "states", ips=ips)
            return all(s and s.get("auth") and check(s["auth"]) for s in states)

        # The kubelet rewrites a mounted Secret at its next sync of the pod.
        kind.wait_for(holds, timeout=180, what=what)

    every_node(lambda a: a["primary"] == old_id, "every node signs with the loop's key")
    before = _waits(in_pod(kind, ns, probe, "metrics", ips=ips), "unauthorized")
    set_keys(old, new)  # 1. accept the new key everywhere
    every_node(lambda a: new_id in a["keyIds"], "every node accepts the new key")
    set_keys(new, old)  # 2. sign with it, the old one still accepted
    every_node(lambda a: a["primary"] == new_id, "every node signs with the new key")
    set_keys(new, "")  # 3. drop the old key
    every_node(lambda a: a["keyIds"] == [new_id], "no node accepts the old key")
    # A new target still enters (through the pod's inject annotation: the operator
    # holds no key) and spreads under the new key.
    generation = loops.patch(name, {"target": {"rotated": True}})
    kind.wait_for(
        lambda: looping_converged(loops, name, 3, generation),
        timeout=120,
        what="the new target converged after the rotation",
    )
    after = _waits(in_pod(kind, ns, probe, "metrics", ips=ips), "unauthorized")
    assert after == before == 0, (before, after)
    # A request signed with the dropped key is refused now.
    answers = in_pod(
        kind, ns, probe, "roundtrips", key_text=old,
        roundtrips=[{"ip": ips[1], "to": f"{name}-1", "sign": True,
                     "body": {"loop": name, "from": "probe", "boot": 1, "seq": 1,
                              "state": NO_TARGET}}],
    )  # fmt: skip
    assert answers[0][0] == 401, answers
    assert f"unknown key id {old_id}" in answers[0][1], answers


def test_a_reconciled_loop_carries_no_finalizer(
    kind: Kind, loops: Loops, operator: Operator
) -> None:
    name = loops.apply(loop("nofin", 2, target={"f": 1}))
    obj = kind.wait_for(lambda: looping_converged(loops, name, 2), timeout=180, what="converged")
    assert not obj["metadata"].get("finalizers"), obj["metadata"].get("finalizers")
    # The periodic resync keeps the status current, still without a finalizer.
    passes = operator.reconciles()
    kind.wait_for(
        lambda: operator.reconciles() >= passes + 2, timeout=60, what="two more resync passes"
    )
    assert not loops.get(name)["metadata"].get("finalizers")
    # A loop still carrying the finalizer of an older operator (which ran a
    # kopf timer) loses it once this operator sees it.
    legacy_manifest = loop("legacy", 2, target={"f": 2})
    legacy_manifest["metadata"]["finalizers"] = ["kopf.reactive-loop.dev/finalizer"]
    legacy = loops.apply(legacy_manifest)
    kind.wait_for(
        lambda: not loops.get(legacy)["metadata"].get("finalizers"),
        timeout=60,
        what="the old kopf finalizer removed",
    )
    # Deleting it is immediate; its children go by garbage collection.
    kind.kubectl("delete", "rloop", name, "-n", loops.namespace, "--wait=true", "--timeout=20s")
    kind.wait_for(lambda: not loops.pods(name), timeout=120, what="node pods collected")
