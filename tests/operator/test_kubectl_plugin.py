"""`kubectl rloop` (reactive_operator.rloop; docs/chaos.md, "In a cluster").

Without a cluster: the command line, durations and times, the status and
history tables, the plan of faults, the partition's NetworkPolicy, the
checker's bounds from a pod's environment, the reader's fall-back from the
pod proxy to port-forwards, and whole chaos runs against a fake cluster —
clean runs, and runs ended by Ctrl-C, SIGTERM, a failing API or a signal
during the cleanup, after which nothing the run created is left.

On the local control plane (API only, no kubelet): the `kube.Cluster` calls
(the loop, its pods, pod deletion by UID, NetworkPolicies) and the `cleanup`
command as a user runs it. A run against real pods is tests/kind/test_rloop_plugin.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from localcluster import Cluster as LocalCluster
from reactive_node.core import contract as c
from reactive_node.core import history as node_history
from reactive_node.core.behaviors.base import canonical, default_lease
from reactive_node.core.codec import StateDocument, decode_state_document
from reactive_operator.rloop import chaos, cli, kube, view

NOW = 1_800_000_000.0


# ---------------------------------------------------------------- the command line


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def test_kubectl_flags_work_before_and_after_the_command() -> None:
    before = parse("--context", "kind-x", "-n", "ns1", "status", "demo")
    after = parse("status", "demo", "--context", "kind-x", "--namespace", "ns1")
    for args in (before, after):
        assert (args.command, args.name, args.context, args.namespace) == (
            "status",
            "demo",
            "kind-x",
            "ns1",
        )
        assert args.via == "auto"
        assert args.request_timeout == 3.0
    # A flag given before the command is not reset by the command's default.
    assert parse("--via", "port-forward", "history", "demo").via == "port-forward"
    assert parse("history", "demo", "--via", "proxy").via == "proxy"


def test_chaos_flags() -> None:
    args = parse("chaos", "demo", "--duration", "1m30s", "--kill", "--partition", "3")
    assert (args.duration, args.kill, args.partition, args.seed) == (90.0, 1, 3, None)
    args = parse("chaos", "demo", "--duration", "40s", "--seed", "7", "--out", "/tmp/x")
    assert (args.kill, args.partition, args.seed, args.out) == (0, 0, 7, Path("/tmp/x"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chaos", "demo"], "--duration"),
        (["chaos", "demo", "--duration", "soon"], "not a duration"),
        (["chaos", "demo", "--duration", "10s", "--kill", "-1"], "-1"),
        (["status", "demo", "--via", "carrier-pigeon"], "invalid choice"),
        (["status"], "NAME"),
        (["frobnicate", "demo"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_plan_is_refused_before_anything_happens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class NoCluster:
        def loop(self, name: str) -> view.LoopInfo:
            return view.LoopInfo(name, "ns", replicas=1)

    args = parse("chaos", "demo", "--duration", "10s", "--partition")
    assert cli.cmd_chaos(args, NoCluster(), None) == cli.EXIT_USAGE
    assert "a partition needs a loop of at least 2 replicas" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60", 60.0), ("60s", 60.0), ("1.5m", 90.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert view.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "m1", "1m 30s", "-5", "inf", "nan", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        view.parse_duration(text)


def test_since_is_a_time_the_node_reads_as_a_time() -> None:
    assert view.since_query("5m", NOW) == f"{NOW - 300:.3f}"
    assert view.since_query("2026-12-01T05:00:00Z", NOW) == "1796101200.000"
    # Always a fraction: a whole number would be read by the node as a rev.
    assert "." in view.since_query("0s", NOW)
    with pytest.raises(ValueError, match="no time zone"):
        view.since_query("2026-12-01T05:00:00", NOW)
    with pytest.raises(ValueError, match="neither a duration"):
        view.since_query("yesterday", NOW)


# ---------------------------------------------------------------- the tables


METRICS = f"""# HELP {c.M_WAITS} waits
# TYPE {c.M_WAITS} counter
{c.M_WAITS}{{loop="demo",node="demo-0",reason="timeout"}} 3.0
{c.M_WAITS}{{loop="demo",node="demo-0",reason="unreachable"}} 1.0
{c.M_WAITS}_created{{loop="demo",node="demo-0",reason="timeout"}} 1.7e9
{c.M_LOOPS}_total{{loop="demo",node="demo-0"}} 40.0
"""


def test_waits_by_reason_from_metrics() -> None:
    assert view.waits_by_reason(METRICS) == {"timeout": 3, "unreachable": 1}
    assert view.waits_by_reason("not { metrics") == {}


def node_state(
    *,
    generation: int | None = 4,
    holding: bool | None = None,
    held: bool | None = None,
    epoch: list[int] | None = None,
    loops: int = 40,
    waits: int = 4,
    edges: Sequence[Mapping[str, Any]] = (),
    boot: int = 1,
) -> dict[str, Any]:
    summary: dict[str, Any] = {"generation": generation, "holding": holding, "epoch": epoch}
    if held is not None:
        summary["held"] = held
    return {
        "ready": True,
        "phase": "looping",
        "boot": boot,
        "loops": loops,
        "waits": waits,
        "summary": summary,
        "state": {"generation": generation, "target": {"v": generation}},
        "edges": list(edges),
    }


def node_doc(**kw: Any) -> StateDocument:
    return decode_state_document({"node": "demo-0", **node_state(**kw)})


def test_status_table_converge() -> None:
    loop = view.LoopInfo("demo", "ns1", "converge", "ring", 3)
    edges = [
        {"to": "demo-1", "outcome": "ok", "at": NOW - 0.5},
        {"to": "demo-2", "outcome": "timeout", "at": NOW - 9},
    ]
    rows = [
        view.NodeRow(
            0,
            "demo-0",
            True,
            "Running",
            0,
            node_doc(edges=edges),
            {"timeout": 3, "unreachable": 1},
            via="port-forward",
        ),
        view.NodeRow(1, "demo-1", False, "Running", 2, error="port-forward: connection refused"),
        view.NodeRow(2),
    ]
    text = view.render_status(loop, rows, NOW, "port-forward (the pod proxy failed: 503)")
    lines = text.splitlines()
    assert lines[0].startswith("loop demo (namespace ns1): converge/ring, 3 replicas, 2 pods;")
    assert "settled: no" in lines[0]
    assert "read via port-forward (the pod proxy failed" in lines[0]
    assert lines[1].split() == [
        "ORD", "POD", "READY", "PHASE", "GEN", "LOOPS", "WAITS", "LAST", "PEER", "RESTARTS",
    ]  # fmt: skip
    first = lines[2]
    for cell in ("demo-0", "yes", "looping", "gen 4", "40", "4 (timeout=3 unreachable=1)"):
        assert cell in first
    assert "demo-1 ok 0.5s ago" in first  # the newest edge, not the older timeout
    assert "unreachable" in lines[3]
    assert "port-forward: connection refused" in lines[3]
    assert lines[4].split()[:4] == ["2", "-", "no", "no"]  # no pod for ordinal 2
    doc = view.status_document(loop, rows, "proxy")
    assert doc["settled"] is False
    assert [n["phase"] for n in doc["nodes"]] == ["looping", "unreachable", "no pod"]
    assert doc["nodes"][0]["waitsByReason"] == {"timeout": 3, "unreachable": 1}
    json.dumps(doc)  # JSON as it is


def test_status_table_token_and_settled() -> None:
    loop = view.LoopInfo("relay", "ns1", "token", "ring", 3)
    rows = [
        view.NodeRow(0, "relay-0", True, "Running", 0, node_doc(holding=True, epoch=[2, 5])),
        view.NodeRow(
            1, "relay-1", True, "Running", 0, node_doc(holding=False, held=True, epoch=[2, 4])
        ),
        view.NodeRow(2, "relay-2", True, "Running", 0, node_doc(holding=False)),
    ]
    assert view.decision("token", rows[0]) == "holder e=[2,5]"
    assert view.decision("token", rows[1]) == "held e=[2,4] (lease stale)"
    assert view.decision("token", rows[2]) == "-"
    text = view.render_status(loop, rows, NOW, "proxy")
    assert "HOLDER" in text.splitlines()[1]
    assert "settled: yes" in text
    two = [rows[0], replace(rows[1], state=node_doc(holding=True, epoch=[2, 6]))]
    assert not view.settled("token", two)


def test_history_table_merges_nodes_in_time_order() -> None:
    loop = view.LoopInfo("demo", "ns1")
    rt = {"peer": "demo-1", "role": "initiator", "boot": "7", "seq": "3", "at": NOW}
    docs: dict[str, dict[str, Any]] = {
        "demo-0": {
            "entries": [
                {"seq": 2, "at": NOW + 2, "kind": "adopt", "generation": 5, "target": "sha256:ab",
                 "rt": rt},
                {"seq": 1, "at": NOW, "kind": "waits", "counts": {"timeout": 2}, "bucket": NOW},
            ]
        },
        "demo-1": {
            "entries": [
                {"seq": 9, "at": NOW + 1, "kind": "acquire", "epoch": [1, 2], "rt": rt,
                 "restored": True},
                "not an entry",
            ]
        },
    }  # fmt: skip
    rows = view.history_rows(docs)
    assert [(r["node"], r["kind"]) for r in rows] == [
        ("demo-0", "waits"),
        ("demo-1", "acquire"),
        ("demo-0", "adopt"),
    ]
    text = view.render_history(loop, docs, {"demo-2": "port-forward: refused"}, "proxy")
    lines = text.splitlines()
    assert "3 entries from 2 nodes; read via proxy" in lines[0]
    assert "timeout=2" in lines[2]
    assert "acquire (restored)" in lines[3]
    assert "epoch [1,2]" in lines[3]
    assert "gen 5 target sha256:ab" in lines[4]
    assert "demo-1 (initiator 7/3)" in lines[4]
    assert lines[-1] == "demo-2: not read (port-forward: refused)"


# ---------------------------------------------------------------- the plan and the policy


def test_plan_is_reproducible_and_ends_in_time() -> None:
    plan = chaos.make_plan(40, 2, 1, seed=3, replicas=3)
    assert plan == chaos.make_plan(40, 2, 1, seed=3, replicas=3)
    assert plan != chaos.make_plan(40, 2, 1, seed=4, replicas=3)
    assert sorted(f.kind for f in plan.faults) == ["kill", "kill", "partition"]
    for fault in plan.faults:
        assert fault.at > 0
        assert fault.at + fault.seconds <= 0.7 * 40 + 1e-9
        assert 0 <= fault.ordinal < 3
    (cut,) = [f for f in plan.faults if f.kind == "partition"]
    assert cut.seconds == 10.0
    assert plan.to_json()["faults"][0].keys() >= {"kind", "at", "node"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 0, 3), "--duration"),
        ((601, 1, 0, 3), "--duration"),
        ((10, 0, 0, 3), "no fault"),
        ((10, 21, 0, 3), "--kill"),
        ((10, 0, 1, 1), "at least 2 replicas"),
        ((10, 1, 0, 0), "no replicas"),
    ],
)
def test_bad_plans(args: tuple[float, int, int, int], message: str) -> None:
    duration, kills, partitions, replicas = args
    with pytest.raises(ValueError, match=message):
        chaos.make_plan(duration, kills, partitions, 0, replicas)


def test_partition_policy_cuts_exactly_one_pod_both_ways() -> None:
    policy = chaos.partition_policy("demo", 2, "r1", "rloop-cut-r1-0")
    assert policy["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kubectl-rloop",
        chaos.RUN_LABEL: "r1",
        chaos.RUN_LOOP_LABEL: "demo",
    }
    spec = policy["spec"]
    # The pod `demo-2`: the loop's selector labels and its ordinal.
    assert spec["podSelector"] == {
        "matchLabels": {c.LOOP_LABEL: "demo", c.COMPONENT_LABEL: "node", c.ORDINAL_LABEL: "2"}
    }
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    assert spec["egress"] == []


def test_bounds_from_the_pod_environment() -> None:
    env = {
        c.ENV_INTERVAL: "0.5",
        c.ENV_TIMEOUT: "0.25",
        c.ENV_MAX_BACKOFF: "5",
        c.ENV_TOKEN_LOSS_TIMEOUT: "10",
    }
    bounds = chaos.bounds_of(env, 4)
    assert (bounds.interval, bounds.timeout, bounds.max_backoff, bounds.loss_timeout) == (
        0.5,
        0.25,
        5.0,
        10.0,
    )
    assert bounds.lease == default_lease(0.5, 4)
    assert chaos.bounds_of({**env, c.ENV_TOKEN_LEASE: "2"}, 4).lease == 2.0
    defaults = chaos.bounds_of({c.ENV_INTERVAL: "not a number"}, 3)
    assert (defaults.interval, defaults.loss_timeout) == (1.0, 30.0)


# ---------------------------------------------------------------- the reader


class ProxyRefused:
    """A `kube.Cluster` whose pod proxy never reaches a pod."""

    def __init__(self) -> None:
        self.proxy_calls = 0
        self.forwards: list[str] = []

    def proxy_get(self, pod: str, path: str, query: Any, timeout: float) -> bytes:
        self.proxy_calls += 1
        raise kube.NodeReadError("pod proxy: 503 Service Unavailable: i/o timeout")

    def forward(self, pod: str, timeout: float) -> Any:
        self.forwards.append(pod)
        outer = self

        class Forward:
            closed = False

            def get(self, target: str) -> bytes:
                return json.dumps({"pod": pod, "target": target, "n": len(outer.forwards)}).encode()

            def close(self) -> None:
                self.closed = True

        return Forward()


def test_auto_falls_back_to_port_forward_once_and_says_so() -> None:
    fake = ProxyRefused()
    reader = kube.NodeReader(fake, "auto")  # type: ignore[arg-type]
    assert reader.get_json("demo-0", "/v1/history", [("since", "3")]) == {
        "pod": "demo-0",
        "target": "/v1/history?since=3",
        "n": 1,
    }
    reader.get_json("demo-0", "/v1/state")  # the same kept connection
    reader.get_json("demo-1", "/v1/state")
    assert fake.proxy_calls == 1  # the proxy is not tried again
    assert fake.forwards == ["demo-0", "demo-1"]
    assert reader.via.startswith("port-forward (the pod proxy failed: pod proxy: 503")
    assert reader.pod_via == {"demo-0": "port-forward", "demo-1": "port-forward"}
    reader.forget("demo-0")
    reader.get_json("demo-0", "/v1/state")
    assert fake.forwards == ["demo-0", "demo-1", "demo-0"]


def test_proxy_only_reports_the_failure() -> None:
    reader = kube.NodeReader(ProxyRefused(), "proxy")  # type: ignore[arg-type]
    with pytest.raises(kube.NodeReadError, match="503"):
        reader.get("demo-0", "/v1/state")
    with pytest.raises(ValueError, match="via must be one of"):
        kube.NodeReader(ProxyRefused(), "ssh")  # type: ignore[arg-type]


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A kubeconfig whose API server (on 127.0.0.1) answers every pod proxy GET
    with `size["bytes"]` bytes of JSON spaces and `{}`, streamed (no length)."""
    import http.server

    size = {"bytes": 10, "status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self.send_response(size["status"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            chunk = b" " * 65536
            with contextlib.suppress(OSError):
                for _ in range(size["bytes"] // len(chunk)):
                    self.wfile.write(chunk)
                self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "f", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "f", "user": {"token": "t"}}],
                "contexts": [{"name": "f", "context": {"cluster": "f", "user": "f"}}],
                "current-context": "f",
            }
        )
    )
    try:
        yield str(kubeconfig), size
    finally:
        server.shutdown()
        server.server_close()


def test_a_pod_proxy_answer_is_read_up_to_a_cap(fake_api: tuple[str, dict[str, int]]) -> None:
    """A node (or anything posing as one behind the proxy) cannot fill the
    plugin's memory: past `MAX_ANSWER_BYTES` the read stops with a clear error."""
    kubeconfig, size = fake_api
    cluster = kube.Cluster(kubeconfig=kubeconfig, namespace="ns", timeout=5.0)
    assert json.loads(cluster.proxy_get("p-0", "/v1/state", (), 5.0)) == {}
    for status in (200, 503):
        size.update(bytes=kube.MAX_ANSWER_BYTES + 2 * 65536, status=status)
        with pytest.raises(kube.NodeReadError, match="exceeds"):
            cluster.proxy_get("p-0", "/v1/state", (), 5.0)


class FakePortForward:
    """The client's PortForward: one end of a socket pair per port; on the other
    end an HTTP/1.1 server (as the node, with keep-alive)."""

    def __init__(self, answers: dict[str, tuple[int, bytes]], *, close_after: int = 0) -> None:
        import http.server
        import socket

        ours, theirs = socket.socketpair()
        self.ours = ours
        self.requests: list[str] = []
        self.closed = False
        fake = self

        class Node(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                status, body = answers.get(self.path, (404, b'{"error": "not_found"}'))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if close_after and len(fake.requests) >= close_after:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        def serve() -> None:
            with contextlib.suppress(OSError):
                Node(theirs, ("pod", 8080), None)  # type: ignore[arg-type]
            theirs.close()

        threading.Thread(target=serve, daemon=True).start()

    def socket(self, port: int) -> Any:
        assert port == c.DEFAULT_PORT
        return self.ours

    def error(self, port: int) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True
        self.ours.close()


def test_http_over_a_port_forward_keeps_its_connection() -> None:
    answers = {
        "/v1/state": (200, b'{"ready": true}'),
        "/v1/history?since=4": (200, b'{"entries": []}'),
    }
    pf = FakePortForward(answers)
    forward = kube._Forward(pf, c.DEFAULT_PORT, timeout=5.0)
    assert json.loads(forward.get("/v1/state")) == {"ready": True}
    assert json.loads(forward.get("/v1/history?since=4")) == {"entries": []}
    with pytest.raises(kube.NodeReadError, match="port-forward: 404"):
        forward.get("/nope")
    assert pf.requests == ["/v1/state", "/v1/history?since=4", "/nope"]  # one connection
    assert not forward.closed
    forward.close()
    assert pf.closed


def test_a_port_forward_the_node_closes_is_not_reopened_elsewhere() -> None:
    pf = FakePortForward({"/v1/state": (200, b"{}")}, close_after=1)
    forward = kube._Forward(pf, c.DEFAULT_PORT, timeout=5.0)
    assert forward.get("/v1/state") == b"{}"
    assert forward.closed  # "Connection: close": done with this port-forward
    # Never a connection of its own (to whatever listens on localhost:8080).
    with pytest.raises(kube.NodeReadError, match="port-forward"):
        forward.get("/v1/state")


def test_api_errors_are_one_short_line() -> None:
    from kubernetes.client.exceptions import ApiException

    status = json.dumps({"kind": "Status", "message": 'pods "demo-0" is forbidden: no'})
    refused = ApiException(status=403, reason="Forbidden")
    refused.body = status
    assert kube._message(refused) == ('403 Forbidden: pods "demo-0" is forbidden: no')
    handshake = ApiException(
        status=0,
        reason="Handshake status 400 Bad Request -+-+- {'audit-id': 'x'} -+-+- " + status,
    )
    assert kube._message(handshake) == (
        'Handshake status 400 Bad Request: pods "demo-0" is forbidden: no'
    )


def test_pod_ref_reads_labels_readiness_and_env() -> None:
    ref = kube.pod_ref(
        {
            "metadata": {"name": "demo-1", "uid": "u1", "labels": {c.ORDINAL_LABEL: "1"}},
            "spec": {
                "containers": [
                    {
                        "env": [
                            {"name": c.ENV_INTERVAL, "value": "0.5"},
                            {"name": c.ENV_NAMESPACE, "valueFrom": {"fieldRef": {}}},
                        ]
                    }
                ]
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"restartCount": 2}],
            },
        }
    )
    assert ref == kube.PodRef("demo-1", "u1", 1, True, "Running", 2, False, {c.ENV_INTERVAL: "0.5"})
    assert kube.pod_ref({"metadata": {"name": "x", "labels": {}}}) is None


# ---------------------------------------------------------------- chaos against a fake cluster


@dataclass
class FakeNode:
    boot: int
    loops: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)


class FakeWorld:
    """A converge loop of fake pods and nodes on a fake clock. NetworkPolicies are
    enforced when `enforce` is set: a selected pod's node makes no round trips."""

    def __init__(self, replicas: int = 3, *, enforce: bool = True) -> None:
        self.namespace = "ns1"
        self.now = 0.0
        self.enforce = enforce
        self.replicas = replicas
        self.policies: dict[str, Mapping[str, Any]] = {}
        self.labels: dict[str, str] = {}
        """Pod name -> the run whose partition label it carries."""
        self.pods: dict[int, kube.PodRef] = {}
        self.nodes: dict[int, FakeNode] = {}
        self.back_at: dict[int, float] = {}
        self.uids = 0
        self.deleted: list[str] = []
        self.lock = threading.Lock()
        self.on_sleep: list[Any] = []
        self.fail_delete = 0
        self.lose_create_answer = False
        self.on_delete_policy: Any = None
        for i in range(replicas):
            self._new_pod(i, ready=True)

    # the clocks
    def clock(self) -> float:
        return NOW + self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in list(self.on_sleep):
            hook(self)
        for ordinal, at in list(self.back_at.items()):
            if self.now >= at:
                self.pods[ordinal] = replace(self.pods[ordinal], ready=True)
                del self.back_at[ordinal]
        for ordinal, node in self.nodes.items():
            if not self.cut(ordinal) and self.pods[ordinal].ready:
                node.loops += 1

    def _new_pod(self, ordinal: int, *, ready: bool) -> None:
        self.uids += 1
        env = {c.ENV_INTERVAL: "0.5", c.ENV_TIMEOUT: "0.25", c.ENV_MAX_BACKOFF: "2"}
        self.pods[ordinal] = kube.PodRef(
            f"demo-{ordinal}", f"uid-{self.uids}", ordinal, ready, "Running", 0, False, env
        )
        self.nodes[ordinal] = FakeNode(boot=self.uids)

    def cut(self, ordinal: int) -> bool:
        """A deny-all for the pod cuts it only once the pod carries the label that
        takes it out of the loop's own policy (NetworkPolicies only add)."""
        return (
            self.enforce
            and f"demo-{ordinal}" in self.labels
            and any(
                p["spec"]["podSelector"]["matchLabels"][c.ORDINAL_LABEL] == str(ordinal)
                for p in self.policies.values()
            )
        )

    # the ClusterApi
    def loop(self, name: str) -> view.LoopInfo:
        return view.LoopInfo(name, self.namespace, "converge", "ring", self.replicas)

    def pods_of(self, loop: str) -> list[kube.PodRef]:
        return [self.pods[i] for i in sorted(self.pods)]

    def delete_pod(self, name: str, uid: str) -> None:
        ordinal = int(name.rsplit("-", 1)[1])
        assert self.pods[ordinal].uid == uid
        self.deleted.append(name)
        self._new_pod(ordinal, ready=False)
        self.back_at[ordinal] = self.now + 3.0

    def create_policy(self, body: Mapping[str, Any]) -> None:
        assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-rloop"
        self.policies[body["metadata"]["name"]] = body
        if self.lose_create_answer:
            raise kube.KubeError("the answer was lost")

    def delete_policy(self, name: str) -> bool:
        if self.on_delete_policy is not None:
            hook, self.on_delete_policy = self.on_delete_policy, None
            hook()
        if self.fail_delete:
            self.fail_delete -= 1
            raise kube.KubeError("503 the API server is busy")
        return self.policies.pop(name, None) is not None

    def set_partitioned(self, name: str, run: str | None) -> bool:
        if run is None:
            self.labels.pop(name, None)
        else:
            self.labels[name] = run
        return True

    def partitioned(self, loop: str, run: str | None = None) -> list[str]:
        return sorted(n for n, r in self.labels.items() if run is None or r == run)

    def policies_of(self, selector: str) -> list[str]:
        wanted = dict(kv.split("=", 1) for kv in selector.split(","))
        return sorted(
            n
            for n, p in self.policies.items()
            if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        )

    # the NodesApi
    @property
    def via(self) -> str:
        return "port-forward (fake)"

    def get_json(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        ordinal = int(pod.rsplit("-", 1)[1])
        with self.lock:
            if not self.pods[ordinal].ready:
                raise kube.NodeReadError("port-forward: pod not ready")
            node = self.nodes[ordinal]
            if path == c.STATE_PATH:
                return {
                    "node": pod,
                    **node_state(generation=1, loops=node.loops, waits=0, boot=node.boot),
                    "state": {"generation": 1, "target": {"t": 1}},
                }
            if path == c.HISTORY_PATH:
                return {"boot": node.boot, "next": len(node.entries), "entries": node.entries}
        raise kube.NodeReadError(f"404 {path}")

    def forget(self, pod: str) -> None:
        pass


class FakeApi:
    """The ClusterApi face of a FakeWorld (its `pods` and `policies` are data there)."""

    def __init__(self, world: FakeWorld) -> None:
        self.world = world
        self.namespace = world.namespace

    def pods(self, loop: str) -> list[kube.PodRef]:
        return self.world.pods_of(loop)

    def delete_pod(self, name: str, uid: str) -> None:
        self.world.delete_pod(name, uid)

    def create_policy(self, body: Mapping[str, Any]) -> None:
        self.world.create_policy(body)

    def delete_policy(self, name: str) -> bool:
        return self.world.delete_policy(name)

    def policies(self, selector: str) -> list[str]:
        return self.world.policies_of(selector)

    def set_partitioned(self, name: str, run: str | None) -> bool:
        return self.world.set_partitioned(name, run)

    def partitioned(self, loop: str, run: str | None = None) -> list[str]:
        return self.world.partitioned(loop, run)


def make_run(world: FakeWorld, tmp_path: Path, plan: chaos.Plan) -> chaos.ClusterChaos:
    return chaos.ClusterChaos(
        FakeApi(world),
        world,
        world.loop("demo"),
        plan,
        tmp_path / "out",
        run="r1",
        clock=world.clock,
        monotonic=world.monotonic,
        sleep=world.sleep,
        say=lambda text: None,
    )


PLAN = chaos.Plan(
    20.0,
    0,
    (chaos.Fault("kill", 2.0, 1), chaos.Fault("partition", 5.0, 2, 6.0)),
)


def test_a_clean_run_gives_the_verdict_and_leaves_nothing(tmp_path: Path) -> None:
    world = FakeWorld()
    run = make_run(world, tmp_path, PLAN)
    result = run.run()
    assert result["ok"] is True, result["violations"]
    assert result["faultCounts"] == {"kill": 1, "pause": 0, "partition": 1}
    assert world.deleted == ["demo-1"]
    assert world.policies == {}
    assert world.labels == {}
    assert world.labels == {}
    cleanup = run.cleanup.to_json()
    assert cleanup["labelled"] == ["demo-2"] == cleanup["unlabelled"]
    (kill,) = [f for f in result["faults"] if f["kind"] == "kill"]
    assert kill["end"] - kill["start"] == pytest.approx(3.0, abs=0.2)  # the new pod answered
    (cut,) = result["partitions"]
    assert cut["node"] == "demo-2"
    assert cut["policy"] == "rloop-cut-r1-1"
    assert cut["cut"] is True
    assert cut["loopsWhileCut"] == 0
    assert result["via"] == "port-forward (fake)"
    assert result["run"] == "r1"
    page = Path(result["timeline"])
    assert page == tmp_path / "out" / "timeline.html"
    assert "<svg" in page.read_text()
    assert "demo-2" in page.read_text()


def test_a_partition_that_does_not_cut_is_reported(tmp_path: Path) -> None:
    world = FakeWorld(enforce=False)  # as where another policy allows the pod's peers
    result = make_run(world, tmp_path, PLAN).run()
    (cut,) = result["partitions"]
    assert cut["cut"] is False
    assert cut["loopsWhileCut"] > 0
    assert world.policies == {}
    assert world.labels == {}


def interrupt_when_cut(exc: BaseException | int) -> Any:
    """A sleep hook: once a partition's policy exists, raise `exc` (or send the signal)."""

    def hook(world: FakeWorld) -> None:
        if world.policies:
            world.on_sleep.clear()
            if isinstance(exc, int):
                signal.raise_signal(exc)
            else:
                raise exc

    return hook


def test_ctrl_c_during_a_partition_removes_its_policy(tmp_path: Path) -> None:
    world = FakeWorld()
    world.on_sleep.append(interrupt_when_cut(KeyboardInterrupt()))
    run = make_run(world, tmp_path, PLAN)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert world.policies == {}
    assert world.labels == {}
    assert run.cleanup.created == run.cleanup.removed == ["rloop-cut-r1-1"]
    assert run.cleanup.left == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_partition_removes_its_policy(
    tmp_path: Path, signum: signal.Signals
) -> None:
    world = FakeWorld()
    world.on_sleep.append(interrupt_when_cut(signum))
    run = make_run(world, tmp_path, PLAN)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    expected = KeyboardInterrupt if signum == signal.SIGINT else chaos.Interrupted
    with pytest.raises(expected), chaos.signals_raise():
        run.run()
    assert world.policies == {}
    assert world.labels == {}
    assert run.cleanup.created == run.cleanup.removed == ["rloop-cut-r1-1"]
    assert run.cleanup.left == []
    # The handlers are put back afterwards.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_signal_during_the_cleanup_does_not_cut_it_short(tmp_path: Path) -> None:
    world = FakeWorld()
    plan = chaos.Plan(
        20.0,
        0,
        (chaos.Fault("partition", 1.0, 0, 8.0), chaos.Fault("partition", 2.0, 1, 8.0)),
    )
    run = make_run(world, tmp_path, plan)

    # Ctrl-C once both policies exist, and again during the cleanup's first delete.
    def both_then_interrupt(w: FakeWorld) -> None:
        if len(w.policies) == 2:
            w.on_sleep.clear()
            w.on_delete_policy = lambda: signal.raise_signal(signal.SIGINT)
            raise KeyboardInterrupt

    world.on_sleep.append(both_then_interrupt)
    with pytest.raises(KeyboardInterrupt), chaos.signals_raise():
        run.run()
    assert world.policies == {}
    assert world.labels == {}
    assert sorted(run.cleanup.removed) == ["rloop-cut-r1-0", "rloop-cut-r1-1"]


def test_the_cleanup_retries_and_sweeps_by_label(tmp_path: Path) -> None:
    world = FakeWorld()
    world.lose_create_answer = True  # created, but the run hears an error
    world.fail_delete = 2  # and the API refuses the first deletes
    run = make_run(world, tmp_path, PLAN)
    with pytest.raises(kube.KubeError, match="lost"):
        run.run()
    assert world.policies == {}
    assert world.labels == {}
    assert run.cleanup.left == []


def test_what_cannot_be_deleted_is_listed_and_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = FakeWorld()
    world.fail_delete = 10_000
    api = FakeApi(world)

    class Run(chaos.ClusterChaos):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(
                api,
                world,
                world.loop("demo"),
                PLAN,
                tmp_path / "out",
                run="r9",
                clock=world.clock,
                monotonic=world.monotonic,
                sleep=world.sleep,
                say=lambda text: None,
            )

    monkeypatch.setattr(chaos, "ClusterChaos", Run)

    class Cluster:
        namespace = "ns1"

        def loop(self, name: str) -> view.LoopInfo:
            return world.loop(name)

    args = parse("chaos", "demo", "--duration", "20s", "--kill", "--out", str(tmp_path / "o"))
    assert cli.cmd_chaos(args, Cluster(), world) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)
    assert verdict["ok"] is True
    assert verdict["cleanup"]["left"] == ["rloop-cut-r9-1"]
    assert "objects left: rloop-cut-r9-1" in captured.err
    assert json.loads((tmp_path / "o" / "verdict.json").read_text()) == verdict


def test_a_run_against_an_unready_loop_fails_and_creates_nothing(tmp_path: Path) -> None:
    world = FakeWorld()
    world.pods[1] = replace(world.pods[1], ready=False)
    run = make_run(world, tmp_path, PLAN)
    run.ready_deadline = 5.0
    with pytest.raises(kube.KubeError, match="not ready within 5 s"):
        run.run()
    assert run.cleanup.created == []
    assert world.policies == {}
    assert world.labels == {}
    assert world.deleted == []


def test_history_in_the_verdict_counts_decisions(tmp_path: Path) -> None:
    world = FakeWorld()
    target = node_history.digest(canonical({"t": 1}))
    for ordinal, node in world.nodes.items():
        node.entries.append(
            {"seq": 1, "rev": 1, "at": NOW + 1.0, "kind": "adopt", "generation": 1,
             "target": target, "rt": None}
        )  # fmt: skip
        del ordinal
    result = make_run(world, tmp_path, PLAN).run()
    assert result["ok"] is True
    assert result["decisionsChecked"] >= 2  # the killed pod's new process has none


# ---------------------------------------------------------------- on the local control plane


@pytest.fixture
def api_cluster(local_cluster: LocalCluster, namespace: str) -> Iterator[kube.Cluster]:
    cluster = kube.Cluster(kubeconfig=str(local_cluster.kubeconfig), namespace=namespace)
    yield cluster
    cluster.close()


def node_pod(name: str, loop: str, ordinal: int) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    c.LOOP_LABEL: loop,
                    c.COMPONENT_LABEL: c.NODE_COMPONENT,
                    c.ORDINAL_LABEL: str(ordinal),
                },
            },
            "spec": {
                "containers": [
                    {
                        "name": "node",
                        "image": "reactive-loop-node:test",
                        "env": [{"name": c.ENV_INTERVAL, "value": "0.5"}],
                    }
                ]
            },
        }
    )


def test_cluster_calls_on_a_real_api_server(
    api_cluster: kube.Cluster, local_cluster: LocalCluster, namespace: str, crd: str
) -> None:
    assert api_cluster.namespace == namespace
    with pytest.raises(
        kube.KubeError, match=f"reactiveloop 'demo' not found in namespace '{namespace}'"
    ):
        api_cluster.loop("demo")
    local_cluster.apply(
        "apiVersion: reactive-loop.dev/v1alpha1\nkind: ReactiveLoop\n"
        "metadata: {name: demo}\nspec: {replicas: 2, behavior: token}\n",
        namespace,
    )
    loop = api_cluster.loop("demo")
    assert (loop.name, loop.behavior, loop.replicas, loop.namespace) == (
        "demo",
        "token",
        2,
        namespace,
    )
    local_cluster.apply(node_pod("demo-0", "demo", 0), namespace)
    local_cluster.apply(node_pod("other-0", "other", 0), namespace)
    (pod,) = api_cluster.pods("demo")
    assert (pod.name, pod.ordinal, pod.ready, pod.env) == (
        "demo-0",
        0,
        False,
        {c.ENV_INTERVAL: "0.5"},
    )
    # No kubelet: the pod never runs, so neither path reaches it.
    reader = kube.NodeReader(api_cluster, "proxy", timeout=2.0)
    with pytest.raises(kube.NodeReadError, match="pod proxy"):
        reader.get("demo-0", c.STATE_PATH)
    # The partition label: set, found by run, removed; a missing pod is False.
    assert api_cluster.partitioned("demo") == []
    assert api_cluster.set_partitioned("demo-0", "r7") is True
    assert api_cluster.partitioned("demo") == ["demo-0"] == api_cluster.partitioned("demo", "r7")
    assert api_cluster.partitioned("demo", "r8") == []
    assert api_cluster.partitioned("other") == []
    assert api_cluster.set_partitioned("demo-0", None) is True
    assert api_cluster.partitioned("demo") == []
    assert api_cluster.set_partitioned("demo-9", "r7") is False
    # A deletion names the UID: another pod of the same name is not touched.
    api_cluster.delete_pod("demo-0", "not-its-uid")
    assert api_cluster.pods("demo")[0].uid == pod.uid
    api_cluster.delete_pod("demo-0", pod.uid)
    local_cluster.wait_for(lambda: not api_cluster.pods("demo"), timeout=30, what="demo-0 gone")
    # The partition's policy as the API server takes it.
    policy = chaos.partition_policy("demo", 1, "r7", "rloop-cut-r7-0")
    api_cluster.create_policy(policy)
    stored = local_cluster.get("networkpolicy", "rloop-cut-r7-0", namespace)
    assert stored is not None
    assert stored["spec"]["podSelector"] == policy["spec"]["podSelector"]
    assert stored["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert api_cluster.policies(chaos.run_selector("r7")) == ["rloop-cut-r7-0"]
    assert api_cluster.policies(chaos.run_selector("r8")) == []
    with pytest.raises(kube.KubeError, match="already exists"):
        api_cluster.create_policy(policy)
    assert api_cluster.delete_policy("rloop-cut-r7-0") is True
    assert api_cluster.delete_policy("rloop-cut-r7-0") is False


def test_cleanup_command_removes_only_what_runs_made(
    local_cluster: LocalCluster, namespace: str, api_cluster: kube.Cluster
) -> None:
    for run, loop in (("r1", "demo"), ("r2", "demo"), ("r3", "other")):
        api_cluster.create_policy(chaos.partition_policy(loop, 0, run, f"rloop-cut-{run}-0"))
    local_cluster.apply(node_pod("demo-0", "demo", 0), namespace)
    local_cluster.apply(node_pod("other-0", "other", 0), namespace)
    api_cluster.set_partitioned("demo-0", "r1")
    api_cluster.set_partitioned("other-0", "r3")
    local_cluster.apply(
        json.dumps(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "users-own", "labels": {chaos.RUN_LOOP_LABEL: "demo"}},
                "spec": {"podSelector": {}},
            }
        ),
        namespace,
    )
    command = [
        sys.executable, "-m", "reactive_operator.rloop.cli",
        "--kubeconfig", str(local_cluster.kubeconfig), "cleanup", "demo", "-n", namespace,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(
        [
            "networkpolicy/rloop-cut-r1-0 deleted",
            "networkpolicy/rloop-cut-r2-0 deleted",
            f"pod/demo-0 unlabelled ({c.PARTITIONED_LABEL})",
        ]
    )
    assert api_cluster.partitioned("demo") == []
    assert api_cluster.partitioned("other") == ["other-0"]
    left = local_cluster.get("networkpolicies", namespace=namespace)
    assert sorted(p["metadata"]["name"] for p in (left or {})["items"]) == [
        "rloop-cut-r3-0",
        "users-own",
    ]
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0
    assert "nothing of kubectl-rloop left for demo" in again.stdout


def test_a_missing_context_or_loop_is_one_clear_line(
    local_cluster: LocalCluster, namespace: str, crd: str
) -> None:
    base = [sys.executable, "-m", "reactive_operator.rloop.cli",
            "--kubeconfig", str(local_cluster.kubeconfig)]  # fmt: skip
    done = subprocess.run(
        [*base, "--context", "nope", "status", "demo"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "kubectl rloop: no context 'nope' in the kubeconfig"
    done = subprocess.run(
        [*base, "-n", namespace, "status", "demo"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"kubectl rloop status: reactiveloop 'demo' not found in namespace '{namespace}'"
    )


def test_port_forwards_never_take_over_other_threads_calls(
    api_cluster: kube.Cluster, local_cluster: LocalCluster, namespace: str
) -> None:
    """The library's `portforward` swaps `call_api` on the client it is given
    while it connects; forwards opened by the reader's threads must not send
    another thread's API call over a websocket (`Missing required parameter
    ports`, seen in a CI run of the plugin)."""
    local_cluster.apply(node_pod("race-0", "race", 0), namespace)
    failures: list[BaseException] = []

    def forward_forever(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(kube.NodeReadError):  # no kubelet: never connects
                api_cluster.forward("race-0", 2.0).close()

    stop = threading.Event()
    openers = [threading.Thread(target=forward_forever, args=(stop,)) for _ in range(3)]
    for t in openers:
        t.start()
    try:
        for _ in range(60):
            try:
                assert [p.name for p in api_cluster.pods("race")] == ["race-0"]
            except Exception as e:  # any failure is the finding
                failures.append(e)
    finally:
        stop.set()
        for t in openers:
            t.join(10)
    assert failures == []


class _OnePage:
    """A NodesApi whose every node answers `doc` to `/v1/history`."""

    via = "proxy"

    def __init__(self, doc: Any) -> None:
        self.doc = doc

    def get_json(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        return self.doc

    def forget(self, pod: str) -> None:
        return None


def test_chaos_collector_reports_a_bad_history_page_once_and_keeps_going() -> None:
    said: list[str] = []
    collector = chaos._Collector(["demo-0"], said.append)
    bad = _OnePage({"boot": "not a number", "next": 1, "entries": [{"seq": 1}]})
    collector.poll_one(bad, "demo-0")
    collector.poll_one(bad, "demo-0")
    assert said == ["demo-0: history page: 'boot' is 'not a number', not an integer 0..2^63-1"]
    assert collector.histories() == {"demo-0": []}
    collector.poll_one(_OnePage({"boot": 7, "next": 1, "entries": [{"seq": 1}]}), "demo-0")
    assert collector.histories() == {"demo-0": [{"seq": 1, "boot": "7"}]}


@dataclass
class _Pod:
    name: str
    ordinal: int
    ready: bool = True
    phase: str = "Running"
    restarts: int = 0
    deleting: bool = False


class _Cluster:
    def pods(self, loop: str) -> list[_Pod]:
        return [_Pod(f"{loop}-{i}", i) for i in range(3)]


class _Reader:
    """demo-0 answers a good document, demo-1 a malformed one, demo-2 not JSON."""

    def __init__(self) -> None:
        self.pod_via: dict[str, str] = {}

    def get_json(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        if pod == "demo-0":
            return {"node": pod, **node_state()}
        if pod == "demo-1":
            return {"node": pod, "loops": "many"}
        raise kube.NodeReadError(f"{pod}: {path} answered 200 but not JSON")

    def get(self, pod: str, path: str) -> bytes:
        return b""


def test_a_malformed_state_document_is_the_nodes_error() -> None:
    loop = view.LoopInfo("demo", "ns1", "converge", "ring", 3)
    rows = cli.collect_rows(_Cluster(), _Reader(), loop)
    assert rows[0].state is not None
    assert rows[0].state.loops == 40
    assert rows[0].error is None
    assert rows[1].state is None
    assert rows[1].error == (
        "/v1/state: not a state document: Expected `int`, got `str` - at `$.loops`"
    )
    text = view.render_status(loop, rows, NOW, "proxy")
    assert "/v1/state: not a state document" in text.splitlines()[3]
    assert rows[2].error == "demo-2: /v1/state answered 200 but not JSON"
