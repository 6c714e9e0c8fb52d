"""Operator at scale (issue 12, section 5): the real operator process against
stand-in nodes, on the local API-only control plane (no kubelet, no scheduler).

The rig:

* `reactive-loop-operator` runs as a local process (admin kubeconfig, one
  watched namespace, its default resync), so its CPU and memory can be read
  from /proc.
* `--loops` converge ReactiveLoops of `--nodes-per-loop` nodes each. The
  operator creates their pods; nothing runs them, so this process plays the
  kubelet: it patches each pod's status (phase Running, Ready, a podIP) and
  serves that node. Pod IPs are loopback addresses 127.100+.x.y (all of
  127.0.0.0/8 is local on Linux), one per node, and this one asyncio process
  binds each of them at the node port the operator asks (contract
  DEFAULT_PORT).
* Each stand-in is a real node in memory mode: the node's own HTTP app
  (`reactive_node.runtime.app.create_app`, served by `NodeRunner`) around a `Node`
  whose memory store holds the loop's target at generation 1, looping with
  its peers at their stand-in addresses (every `--node-interval` seconds, so
  that a thousand of them leave CPU for the rest). So every `/v1/state`
  answer is the node's own document (phase, counters, edges...), encoded by
  the node's own handler.

The phases, each measured over a window of `--resyncs` resync periods:

1. **idle**: the operator and no loop.
2. **unpolled**: every loop and pod created, no pod Running: the operator
   reconciles every loop on every resync but asks no node.
3. **polled**: every node Running and answering, all loops converged and
   looping: the steady state the goal is about. Besides CPU and memory, the
   `/v1/state` requests the stand-ins served, the connections they came on,
   and the resync passes (bursts of requests separated by the resync sleep).
4. **staleness**: in `--probes` loops, one node changes four ways in turn,
   each at a random point of the resync cycle: its store holds a state it
   refuses, a valid state again, it stops answering, it answers again. Time
   until the loop's Degraded condition shows each, in resync periods
   (`RLO_RESYNC_SECONDS`).

CPU is utime + stime of the operator process (/proc/<pid>/stat, all its
threads), over the window; memory its VmRSS at the end of the window. The goal
(issue 12): 1,000 nodes in 100 loops, status correct within 2 resyncs, at most
25 % of one core.

    make cluster-up   # or a private instance: RL_CLUSTER_CONFIG=... python -m localcluster up
    .venv/bin/python bench/operator_scale.py --loops 100 --nodes-per-loop 10 --json \
        --out bench/results/operator_scale.json

Everything it creates (namespace, loops, pods, the CRD if it was absent, the
operator process, the listeners) is removed at the end, also on failure or
after `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client, config
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from reactive_node.core import contract as c
from reactive_node.core.codec import encode_state
from reactive_node.runtime.app import NodeRunner, create_app
from reactive_node.runtime.config import make_config
from reactive_node.runtime.server import event_loop_factory
from reactive_node.runtime.store import MemoryStore

if TYPE_CHECKING:
    from localcluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"
CRD_NAME = f"{c.PLURAL}.{c.API_GROUP}"
TICKS = os.sysconf("SC_CLK_TCK")
#: The operator's default resync period (`RLO_RESYNC_SECONDS`), which the goal is about.
RESYNC_SECONDS = 2.0
#: The loops' round-trip interval (the spec's default): each stand-in records one per interval.
INTERVAL = 1.0
#: API requests the bench makes at once (pod status patches).
API_CONCURRENCY = 16
CPU_GOAL = 0.25
#: The changes made to a probed node, in order (`Bench.probe`).
PROBES = ("invalid", "valid", "down", "up")
STALENESS_GOAL = 2.0
T = TypeVar("T")


# --- small helpers -------------------------------------------------------------
def local_cluster() -> Cluster:
    """The local cluster (`RL_CLUSTER_CONFIG`, else the checkout's), from tests/localcluster."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from localcluster import Cluster

    return Cluster()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_ip(loop_index: int, ordinal: int) -> str:
    """The stand-in address of a node: 127.(100 + i // 200).(i % 200).(ordinal + 1)."""
    return f"127.{100 + loop_index // 200}.{loop_index % 200}.{ordinal + 1}"


def loop_name(index: int) -> str:
    return f"scale-{index:03d}"


def loop_target(name: str) -> dict[str, str]:
    return {"bench": name}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition of type `kind` in a status ({} if absent)."""
    return next((x for x in status.get("conditions") or [] if x.get("type") == kind), {})


async def until(
    probe: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = 0.25
) -> T:
    """Poll `probe` until it returns something truthy; TimeoutError after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(every)


async def run_tool(*argv: str, env: dict[str, str], check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}...: {err.decode().strip()[:500]}")
    return out.decode()


# --- the Kubernetes API ----------------------------------------------------------
class Api:
    """The few API calls of the bench (kubernetes_asyncio, raw JSON answers)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(cls, kubeconfig: Path) -> Api:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        return cls(client.ApiClient(configuration=cfg))

    @staticmethod
    async def json(call: Awaitable[Any], *, missing_ok: bool = False) -> Any:
        resp = await asyncio.wait_for(call, 60)
        try:
            raw = await resp.read()
            if missing_ok and resp.status == 404:
                return None
            if not 200 <= resp.status <= 299:
                raise RuntimeError(f"API {resp.status}: {raw[:300].decode(errors='replace')}")
            return json.loads(raw) if raw else None
        finally:
            resp.release()

    async def create_namespace(self, ns: str) -> None:
        body = {"metadata": {"name": ns, "labels": {"reactive-loop.dev/bench": "operator-scale"}}}
        await self.json(self.core.create_namespace(body, _preload_content=False))  # type: ignore[arg-type]

    async def namespace_exists(self, ns: str) -> bool:
        got = await self.json(self.core.read_namespace(ns, _preload_content=False), missing_ok=True)
        return got is not None

    async def delete_namespace(self, ns: str) -> None:
        await self.json(self.core.delete_namespace(ns, _preload_content=False), missing_ok=True)

    async def create_loop(self, ns: str, body: dict[str, Any]) -> None:
        await self.json(
            self.custom.create_namespaced_custom_object(
                c.API_GROUP, c.API_VERSION, ns, c.PLURAL, body, _preload_content=False
            )
        )

    async def loops(self, ns: str) -> list[dict[str, Any]]:
        got = await self.json(
            self.custom.list_namespaced_custom_object(
                c.API_GROUP, c.API_VERSION, ns, c.PLURAL, _preload_content=False
            )
        )
        return list(got["items"])

    async def loop_status(self, ns: str, name: str) -> dict[str, Any]:
        got = await self.json(
            self.custom.get_namespaced_custom_object(
                c.API_GROUP, c.API_VERSION, ns, c.PLURAL, name, _preload_content=False
            )
        )
        return dict(got.get("status") or {})

    async def pods(self, ns: str) -> list[dict[str, Any]]:
        selector = f"{c.COMPONENT_LABEL}={c.NODE_COMPONENT}"
        got = await self.json(
            self.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False)
        )
        return list(got["items"])

    async def set_pod_running(self, ns: str, name: str, ip: str) -> None:
        """What a kubelet would report for a started, ready node container."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        body = {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": conditions,
            }
        }
        await self.json(
            self.core.patch_namespaced_pod_status(
                name,
                ns,
                body,
                _content_type="application/merge-patch+json",  # type: ignore[call-arg]
                _preload_content=False,
            )
        )

    async def close(self) -> None:
        await self.api.close()


# --- stand-in nodes ----------------------------------------------------------------
@dataclass
class StandIn:
    """One node: its own app and `Node`, listening at its own address."""

    runner: NodeRunner
    store: MemoryStore
    ip: str
    site: web.TCPSite | None = None

    async def listen(self) -> None:
        site = web.TCPSite(self.runner, self.ip, c.DEFAULT_PORT)
        try:
            await site.start()
        except OSError as e:
            raise RuntimeError(
                f"cannot listen on {self.ip}:{c.DEFAULT_PORT} ({e}); is something"
                f" listening on 0.0.0.0:{c.DEFAULT_PORT}?"
            ) from e
        self.site = site

    async def go_away(self) -> None:
        """Stop answering while the node keeps running: no listener (new connections
        are refused) and the open keep-alive connections closed."""
        if self.site is not None:
            await self.site.stop()
            self.site = None
        if self.runner.server is not None:
            for connection in self.runner.server.connections:
                connection.force_close()


@dataclass
class Served:
    """The operator's `/v1/state` requests the stand-ins served: when, and on how
    many new connections (peers never ask `/v1/state`)."""

    recording: bool = False
    times: list[float] = field(default_factory=list)
    connections: set[tuple[Any, Any]] = field(default_factory=set)
    new_connections: int = 0

    def clear(self) -> None:
        self.times.clear()
        self.new_connections = 0


class StandIns:
    """Every stand-in node, all in this one process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.nodes: dict[str, StandIn] = {}
        self.served = Served()

    async def _seen(self, request: web.Request, _response: web.StreamResponse) -> None:
        if request.path != c.STATE_PATH:
            return
        served = self.served
        transport = request.transport
        if transport is not None:
            key = (transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
            if key not in served.connections:
                served.connections.add(key)
                served.new_connections += served.recording
        if served.recording:
            served.times.append(time.monotonic())

    async def add(self, *, loop: str, pod: str, ordinal: int, addresses: list[str]) -> None:
        """Start the node `pod` of `loop`, holding the loop's target at generation 1,
        looping with its peers at `addresses` (one per ordinal)."""
        settings = {
            "loop": loop,
            "node": pod,
            "ordinal": ordinal,
            "replicas": len(addresses),
            "topology": "mesh",
            "peers": [f"{ip}:{c.DEFAULT_PORT}" for ip in addresses],
            "interval": self.interval,
            "timeout": min(2.0, self.interval / 2),
            "max_backoff": 2 * self.interval,
        }
        store = MemoryStore(raw=encode_state({"generation": 1, "target": loop_target(loop)}))
        app = create_app(make_config(settings), store, CollectorRegistry())
        app.on_response_prepare.append(self._seen)
        runner = NodeRunner(app, handle_signals=False, access_log=None)
        await runner.setup()  # loads the stored state and starts the node's loop
        standin = StandIn(runner, store, addresses[ordinal])
        self.nodes[pod] = standin
        await standin.listen()

    async def close(self) -> None:
        nodes, self.nodes = list(self.nodes.values()), {}
        for standin in nodes:
            await standin.runner.cleanup()


# --- the operator process ----------------------------------------------------------
class Operator:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @classmethod
    async def start(cls, env: dict[str, str], ns: str, log: Path, resync: float) -> Operator:
        port = free_port()
        env = {
            **env,
            "RLO_NAMESPACES": ns,
            "RLO_PORT": str(port),
            "RLO_BIND": "127.0.0.1",
            "RLO_RESYNC_SECONDS": str(resync),
            "RLO_LEASE_NAMESPACE": ns,
            "RLO_IDENTITY": f"bench-{ns}",
            "RLO_LOG_LEVEL": "WARNING",
        }
        exe = Path(sys.executable).with_name("reactive-loop-operator")
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(exe), env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        operator = cls(proc, port, log)
        async with aiohttp.ClientSession() as session:

            async def leading() -> bool:
                if proc.returncode is not None:
                    raise RuntimeError(f"the operator exited {proc.returncode}: see {log}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    url = f"http://127.0.0.1:{port}{c.READY_PATH}"
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                        return bool((await r.json()).get("ready"))
                return False

            await until(leading, 60, "operator ready")
        return operator

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def reconciles(self, session: aiohttp.ClientSession) -> float:
        """reconciles_total of the operator, every result summed."""
        url = f"http://127.0.0.1:{self.port}{c.METRICS_PATH}"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == c.M_OP_RECONCILES:
                    total += sample.value
        return total

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- measuring -----------------------------------------------------------------------
def passes(times: list[float], resync: float) -> list[tuple[float, float]]:
    """(start, end) of each resync pass seen in request times: a pass asks every
    node at once; passes are separated by the resync sleep."""
    out: list[tuple[float, float]] = []
    for t in sorted(times):
        if out and t - out[-1][1] < 0.75 * resync:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: Cluster
    api: Api
    ns: str
    standins: StandIns
    operator: Operator | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.args.loops * self.args.nodes_per_loop)

    @property
    def resync(self) -> float:
        return float(self.args.resync_seconds)

    async def window(self, phase: str) -> dict[str, Any]:
        """CPU, memory and (when nodes answer) requests over `--resyncs` periods."""
        assert self.operator is not None
        pid = self.operator.pid
        seconds = self.args.resyncs * self.resync
        served = self.standins.served
        async with aiohttp.ClientSession() as session:
            rec0 = await self.operator.reconciles(session)
            served.clear()
            served.recording = True
            cpu0, me0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)  # the measured window itself
            cpu1, me1, t1 = cpu_seconds(pid), time.process_time(), time.monotonic()
            served.recording = False
            rec1 = await self.operator.reconciles(session)
        elapsed = t1 - t0
        cpu = cpu1 - cpu0
        out: dict[str, Any] = {
            "window_s": round(elapsed, 2),
            "cpu_s": round(cpu, 2),
            "cpu_share_of_one_core": round(cpu / elapsed, 4),
            **{f"{k}_mb": v for k, v in memory_mb(pid).items()},
            "reconciles": int(rec1 - rec0),
            "bench_process_cpu_s": round(me1 - me0, 2),
            "bench_process_rss_mb": memory_mb(os.getpid())["VmRSS"],
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        if self.args.loops and rec1 > rec0 and phase != "idle":
            out["passes"] = round((rec1 - rec0) / self.args.loops, 1)
        if served.times:
            seen = passes(served.times, self.resync)
            whole = seen[1:-1] or seen  # the first and last may be cut by the window
            spans = [b - a for a, b in whole]
            out.update(
                state_requests=len(served.times),
                new_connections=served.new_connections,
                request_bursts=len(seen),
                requests_per_burst=round(len(served.times) / len(seen), 1),
                burst_span_s_mean=round(statistics.fmean(spans), 3),
                burst_span_s_max=round(max(spans), 3),
                burst_period_s=round((seen[-1][0] - seen[0][0]) / max(1, len(seen) - 1), 3),
            )
        print(f"[{phase}] {json.dumps(out)}", file=sys.stderr, flush=True)
        return out

    async def create_loops(self) -> None:
        for i in range(self.args.loops):
            body = {
                "apiVersion": f"{c.API_GROUP}/{c.API_VERSION}",
                "kind": "ReactiveLoop",
                "metadata": {"name": loop_name(i)},
                "spec": {
                    "replicas": self.args.nodes_per_loop,
                    "topology": "mesh",
                    "target": loop_target(loop_name(i)),
                },
            }
            await self.api.create_loop(self.ns, body)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return {
            str(x["metadata"]["name"]): dict(x.get("status") or {})
            for x in await self.api.loops(self.ns)
        }

    async def all_pods_reported(self) -> bool:
        """Every pod exists and every loop's status counts them (none Running yet)."""
        pods = await self.api.pods(self.ns)
        if len(pods) < self.n:
            return False
        wanted = self.args.nodes_per_loop
        return all(s.get("replicas") == wanted for s in (await self.statuses()).values())

    async def all_converged_and_looping(self) -> bool:
        wanted = self.args.nodes_per_loop
        statuses = await self.statuses()
        if len(statuses) < self.args.loops:
            return False
        for s in statuses.values():
            conds = {x.get("type"): x.get("status") for x in s.get("conditions") or []}
            if s.get("looping") != wanted or conds.get("Converged") != "True":
                return False
        return True

    async def start_nodes(self) -> None:
        """Start every pod's node at its address, then report the pod Running."""
        gate = asyncio.Semaphore(API_CONCURRENCY)
        wanted = self.args.nodes_per_loop

        async def one(pod: dict[str, Any]) -> None:
            meta = pod["metadata"]
            loop = meta["labels"][c.LOOP_LABEL]
            ordinal = int(meta["labels"][c.ORDINAL_LABEL])
            addresses = [node_ip(int(loop.rsplit("-", 1)[1]), o) for o in range(wanted)]
            async with gate:
                await self.standins.add(
                    loop=loop, pod=meta["name"], ordinal=ordinal, addresses=addresses
                )
                await self.api.set_pod_running(self.ns, meta["name"], addresses[ordinal])

        await asyncio.gather(*(one(p) for p in await self.api.pods(self.ns)))

    async def probe(self, name: str, rng: random.Random) -> dict[str, float]:
        """Change one node of loop `name` four ways, in turn; seconds until the
        loop's Degraded condition shows each change (the aggregate a user waits
        on, whatever the status lists per node):

        * `invalid`: its store holds a state the node refuses (the store's own
          edit, as if someone else wrote it): the node reports a `stateError`,
          Degraded `InvalidNodeState` naming it;
        * `valid`: a valid state again: Degraded False;
        * `down`: it stops answering (listener closed, open connections
          dropped): Degraded `NodesUnreachable` naming it;
        * `up`: it answers again: Degraded False.
        """
        pod = f"{name}-{rng.randrange(self.args.nodes_per_loop)}"
        standin = self.standins.nodes[pod]

        async def invalid() -> None:
            standin.store.edit(encode_state({"generation": 1}))  # converge needs a target

        async def valid() -> None:
            standin.store.edit(encode_state({"generation": 1, "target": loop_target(name)}))

        def names_it(reason: str) -> Callable[[dict[str, Any]], bool]:
            return lambda d: d.get("reason") == reason and pod in str(d.get("message"))

        def fine(d: dict[str, Any]) -> bool:
            return d.get("status") == "False"

        changes: list[tuple[str, Callable[[], Awaitable[None]], Callable[[dict[str, Any]], bool]]]
        changes = [
            ("invalid", invalid, names_it("InvalidNodeState")),
            ("valid", valid, fine),
            ("down", standin.go_away, names_it("NodesUnreachable")),
            ("up", standin.listen, fine),
        ]
        out: dict[str, float] = {}
        for what, change, shows in changes:
            # Start at a random point of the resync cycle, not in step with it.
            await asyncio.sleep(rng.uniform(0, self.resync))
            started = time.monotonic()
            await change()

            async def shown(shows: Callable[[dict[str, Any]], bool] = shows) -> bool:
                status = await self.api.loop_status(self.ns, name)
                return shows(condition(status, "Degraded"))

            await until(shown, 20 * self.resync, f"{pod}: {what}", every=0.05)
            out[what] = time.monotonic() - started
        return out

    async def profile(self, out: Path) -> None:
        """py-spy samples the operator for one more window (after the measured one:
        sampling pauses the process), as collapsed stacks in `out`."""
        assert self.operator is not None
        seconds = max(1, round(self.args.resyncs * self.resync))
        spy = await asyncio.create_subprocess_exec(
            self.args.py_spy,
            "record",
            "--pid",
            str(self.operator.pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(spy.communicate(), seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy exited {spy.returncode}: {err.decode()[-500:]}")
        self.results["profile"] = str(out)

    async def run(self, log: Path) -> None:
        args = self.args
        res = self.results
        self.operator = await Operator.start(self.cluster.env, self.ns, log, self.resync)
        res["phases"] = phases = {}
        phases["idle"] = await self.window("idle")

        started = time.monotonic()
        await self.create_loops()
        await until(self.all_pods_reported, 60 + self.n * 0.5, "all pods created", every=3.0)
        res["apply_to_all_pods_reported_s"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(2 * self.resync)  # let the last status writes land
        phases["unpolled"] = await self.window("unpolled")

        started = time.monotonic()
        await self.start_nodes()
        res["pods_running_s"] = round(time.monotonic() - started, 1)
        await until(self.all_converged_and_looping, 60 + self.n * 0.5, "all looping", every=2.0)
        res["running_to_all_looping_s"] = round(time.monotonic() - started, 1)
        await asyncio.sleep(2 * self.resync)
        phases["polled"] = await self.window("polled")
        if args.profile is not None:
            await self.profile(args.profile)

        rng = random.Random(args.seed)
        names = rng.sample([loop_name(i) for i in range(args.loops)], args.probes)
        probes = [await self.probe(name, rng) for name in names]
        staleness: dict[str, Any] = {"probed_loops": len(probes)}
        for what in PROBES:
            periods = [p[what] / self.resync for p in probes]
            staleness[what] = {
                "resyncs": [round(x, 2) for x in periods],
                "median": round(statistics.median(periods), 2) if periods else None,
                "max": round(max(periods), 2) if periods else None,
            }
        every = [p[k] / self.resync for p in probes for k in p]
        staleness["resyncs_max"] = round(max(every), 2) if every else None
        res["staleness"] = staleness


def summarize(res: dict[str, Any], n: int) -> None:
    """The headline figures, the ratios between phases and the goals."""
    phases = res["phases"]
    idle, unpolled, polled = phases["idle"], phases["unpolled"], phases["polled"]
    per_s = {k: v["cpu_s"] / v["window_s"] for k, v in phases.items()}
    passes = polled.get("passes") or 1.0
    polling_cpu_s = (per_s["polled"] - per_s["unpolled"]) * polled["window_s"]
    stale = res["staleness"]["resyncs_max"]
    res["figures"] = {
        "cpu_share_of_one_core": polled["cpu_share_of_one_core"],
        "cpu_ms_per_resync": round(1000 * polled["cpu_s"] / passes, 1),
        "cpu_ms_per_node_per_resync": round(1000 * polled["cpu_s"] / (passes * n), 3),
        "cpu_ms_per_node_per_resync_asking_nodes": round(1000 * polling_cpu_s / (passes * n), 3),
        "cpu_ms_per_loop_per_resync_not_asking": round(
            1000 * unpolled["cpu_s"] / ((unpolled.get("passes") or 1.0) * res["loops"]), 3
        ),
        "rss_mb": polled["VmRSS_mb"],
        "rss_kb_per_node_over_idle": round(1024 * (polled["VmRSS_mb"] - idle["VmRSS_mb"]) / n, 1),
        "state_requests_per_resync": round(polled.get("state_requests", 0) / passes, 1),
        "new_connections_per_resync": round(polled.get("new_connections", 0) / passes, 1),
        "staleness_resyncs_max": stale,
    }
    res["ratios"] = {
        "cpu_polled_vs_unpolled": round(per_s["polled"] / max(per_s["unpolled"], 1e-9), 2),
        "cpu_polled_vs_idle": round(per_s["polled"] / max(per_s["idle"], 1e-9), 2),
        "cpu_unpolled_vs_idle": round(per_s["unpolled"] / max(per_s["idle"], 1e-9), 2),
    }
    res["goals"] = {
        f"cpu_share_of_one_core<={CPU_GOAL}": polled["cpu_share_of_one_core"] <= CPU_GOAL,
        f"staleness_resyncs_max<={STALENESS_GOAL:g}": stale is not None and stale <= STALENESS_GOAL,
        "at_the_goal_scale (>= 1,000 nodes)": n >= 1000,
    }


def print_log_tail(log: Path) -> None:
    if log.exists():
        tail = log.read_text(errors="replace")[-3000:]
        print(f"--- end of the operator's log ---\n{tail}", file=sys.stderr)


def source() -> dict[str, Any]:
    """Which operator and node code ran (PYTHONPATH may name a snapshot), and the commit."""
    found: dict[str, Any] = {}
    for name in ("reactive_operator", "reactive_node"):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        found[name] = str(Path(origin).parent) if origin else None
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["checkout_head"] = head.stdout.strip() or None
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "node", "operator"],
        capture_output=True,
        text=True,
        check=False,
    )
    found["checkout_node_or_operator_modified"] = bool(changed.stdout.strip())
    return found


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cluster = local_cluster()
    if not cluster.kubeconfig.exists():
        raise SystemExit(f"no local cluster: {cluster.kubeconfig} is missing (make cluster-up)")
    env = cluster.env
    kubectl = str(cluster.cfg.binary("kubectl"))
    api = await Api.connect(cluster.kubeconfig)
    ns = f"opscale-{secrets.token_hex(3)}"
    standins = StandIns(args.node_interval)
    bench = Bench(args, cluster, api, ns, standins)
    res = bench.results
    res.update(
        loops=args.loops,
        nodes_per_loop=args.nodes_per_loop,
        nodes=bench.n,
        resync_seconds=bench.resync,
        window_resyncs=args.resyncs,
        cpus=os.cpu_count(),
        python=sys.version.split()[0],
        load_average_1m_start=round(os.getloadavg()[0], 2),
        source=source(),
    )
    log_dir = Path(tempfile.mkdtemp(prefix="rl-operator-scale-"))
    found = await run_tool(kubectl, "get", "crd", CRD_NAME, "--ignore-not-found", env=env)
    had_crd = bool(found.strip())
    created_ns = False
    try:
        await run_tool(
            kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(args.crd), env=env
        )
        await run_tool(kubectl, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", env=env)
        await api.create_namespace(ns)
        created_ns = True
        async with asyncio.timeout(args.timeout):
            await bench.run(log_dir / "operator.log")
    except BaseException:
        print_log_tail(log_dir / "operator.log")
        raise
    finally:
        # Undo in reverse: the operator first (it would recreate what goes), then the
        # listeners, the namespace (every loop, pod and child in it) and the CRD.
        if bench.operator is not None:
            await bench.operator.stop()
        await standins.close()
        if created_ns:
            await api.delete_namespace(ns)

            async def gone() -> bool:
                return not await api.namespace_exists(ns)

            await until(gone, 180, f"namespace {ns} deleted", every=1.0)
        if not had_crd:
            await run_tool(kubectl, "delete", "crd", CRD_NAME, "--ignore-not-found", env=env)
        await api.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    res["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    summarize(res, bench.n)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=10, help="ReactiveLoops (default 10)")
    parser.add_argument("--nodes-per-loop", type=int, default=10, help="replicas of each loop")
    parser.add_argument(
        "--resyncs", type=int, default=15, help="resync periods per measured window (default 15)"
    )
    parser.add_argument("--probes", type=int, default=5, help="loops probed for staleness")
    parser.add_argument(
        "--resync-seconds", type=float, default=RESYNC_SECONDS, help="RLO_RESYNC_SECONDS"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="whole run, seconds")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--node-interval",
        type=float,
        default=5.0,
        help="round-trip interval of the stand-in nodes (default 5 s)",
    )
    parser.add_argument(
        "--crd", type=Path, default=CRD, help="the ReactiveLoop CRD to apply (default: the chart's)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the polled window, sample the operator with py-spy for one more"
        " window and write its collapsed stacks here",
    )
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="append the run to this JSON file's runs")
    args = parser.parse_args(argv)
    if not 1 <= args.loops <= 200 * 150:
        parser.error("--loops must be 1..30000")
    if not 1 <= args.nodes_per_loop <= 250:
        parser.error("--nodes-per-loop must be 1..250 (one 127.x.y.z per node)")
    if args.resyncs < 3:
        parser.error("--resyncs must be at least 3 (passes are counted inside the window)")
    if not 0 <= args.probes <= args.loops:
        parser.error("--probes must be 0..--loops")
    if min(args.resync_seconds, args.timeout, args.node_interval) <= 0:
        parser.error("--resync-seconds, --timeout and --node-interval must be positive")
    # A probed node says once that it refuses its stored state; that is expected.
    logging.getLogger("reactive_node").setLevel(logging.ERROR)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(main_async(args))
    if args.out is not None:
        doc: dict[str, Any] = {"runs": []}
        if args.out.exists():
            doc = json.loads(args.out.read_text())
        doc.setdefault("runs", []).append(result)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
