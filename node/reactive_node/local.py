"""Local mode: a whole loop as processes on 127.0.0.1, no Kubernetes.

`run` plays the part the operator and the kubelet play in a cluster, and no
more: it starts one `reactive-loop node` process per node with a file store,
restarts a node that dies (the node catches up from its state file and its
peers), and watches the nodes by polling their `GET /v1/state`. It never
touches node state: like the operator, it can only inject a converge target
by a round trip (`set-target`).

The pure parts (the table, the summary, the view model, the injected state)
are plain functions over `NodeView` records, tested without processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from reactive_node import contract

RUN_FILE = "run.json"
POLL_SECONDS = 0.5
POLL_TIMEOUT = 1.0
RESTART_BACKOFF_MIN = 0.2
RESTART_BACKOFF_MAX = 5.0
STOP_GRACE_SECONDS = 5.0
#: A node that ran this long before dying is restarted at once again.
HEALTHY_RUN_SECONDS = 10.0
#: The view draws an edge faintly once it is this much older than the node's newest.
STALE_EDGE_SECONDS = 5.0


class RunFileError(Exception):
    """The run file of a local loop is missing or unreadable."""


@dataclass(frozen=True)
class RunOptions:
    """What `reactive-loop run` was asked to do (validated by the CLI)."""

    nodes: int
    behavior: str
    topology: str
    interval: float | None
    duration: float | None
    state_dir: Path
    view_port: int | None
    json_summary: bool
    base_port: int | None
    loop: str = "local"
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class RunFile:
    """Where a running local loop can be reached; written to `<state-dir>/run.json`."""

    loop: str
    supervisor_pid: int
    addresses: list[str]
    pids: list[int | None]
    view: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "loop": self.loop,
            "supervisorPid": self.supervisor_pid,
            "nodes": [
                {"name": node_name(self.loop, i), "address": a, "pid": p}
                for i, (a, p) in enumerate(zip(self.addresses, self.pids, strict=True))
            ],
            "view": self.view,
        }


def read_run_file(state_dir: Path) -> RunFile:
    path = state_dir / RUN_FILE
    try:
        raw = json.loads(path.read_text())
        nodes = raw["nodes"]
        return RunFile(
            loop=str(raw["loop"]),
            supervisor_pid=int(raw["supervisorPid"]),
            addresses=[str(n["address"]) for n in nodes],
            pids=[None if n.get("pid") is None else int(n["pid"]) for n in nodes],
            view=raw.get("view"),
        )
    except FileNotFoundError:
        raise RunFileError(
            f"no running loop found: {path} does not exist (start one with `reactive-loop run`)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFileError(f"cannot read {path}: {e}") from None


def node_name(loop: str, ordinal: int) -> str:
    return f"{loop}-{ordinal}"


# ---------------------------------------------------------------- pure views


@dataclass
class NodeView:
    """What the supervisor knows of one node: its process and its last `/v1/state`."""

    name: str
    ordinal: int
    address: str
    pid: int | None = None
    running: bool = False
    restarts: int = 0
    state: Mapping[str, Any] | None = None  # the last good /v1/state body
    error: str | None = None  # why the last poll failed, if it did
    polled_at: float | None = None

    @property
    def reachable(self) -> bool:
        return self.state is not None and self.error is None

    @property
    def phase(self) -> str:
        if not self.running:
            return "down"
        if not self.reachable or self.state is None:
            return "unreachable"
        return str(self.state.get("phase", "starting"))

    def counter(self, key: str) -> int:
        if self.state is None:
            return 0
        value = self.state.get(key, 0)
        return int(value) if isinstance(value, int | float) else 0


def behaviour_state(view: NodeView) -> Any:
    return None if view.state is None else view.state.get("state")


def is_converged(behavior: str, views: Sequence[NodeView]) -> bool:
    """Whether the loop is settled, judged from what the nodes last said.

    converge: every node answered and all hold the same behaviour state.
    token: every node answered and exactly one holds the token.
    """
    if not views or not all(v.reachable for v in views):
        return False
    if behavior == "token":
        holders = [v for v in views if _summary(v).get("holding") is True]
        return len(holders) == 1
    first = json.dumps(behaviour_state(views[0]), sort_keys=True)
    return all(json.dumps(behaviour_state(v), sort_keys=True) == first for v in views[1:])


def _summary(view: NodeView) -> Mapping[str, Any]:
    summary = None if view.state is None else view.state.get("summary")
    return summary if isinstance(summary, Mapping) else {}


def build_summary(options: RunOptions, views: Sequence[NodeView], elapsed: float) -> dict[str, Any]:
    """The end-of-run summary (`--json` prints exactly this)."""
    nodes = [
        {
            "name": v.name,
            "address": v.address,
            "phase": v.phase,
            "loops": v.counter("loops"),
            "waits": v.counter("waits"),
            "lastWaitReason": None if v.state is None else v.state.get("lastWaitReason"),
            "restarts": v.restarts,
            "state": behaviour_state(v),
            "summary": dict(_summary(v)),
        }
        for v in views
    ]
    generations = [g for g in (_summary(v).get("generation") for v in views) if isinstance(g, int)]
    return {
        "loop": options.loop,
        "behavior": options.behavior,
        "topology": options.topology,
        "seconds": round(elapsed, 3),
        "nodes": nodes,
        "converged": is_converged(options.behavior, views),
        "loops": sum(n["loops"] for n in nodes),
        "waits": sum(n["waits"] for n in nodes),
        "restarts": sum(v.restarts for v in views),
        "maxGeneration": max(generations) if generations else None,
        "holders": [v.name for v in views if _summary(v).get("holding") is True],
    }


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(options: RunOptions, views: Sequence[NodeView], elapsed: float) -> str:
    """The live terminal table: one line per node."""
    header = (
        f"{'NODE':<14} {'PHASE':<11} {'LOOPS':>7} {'WAITS':>6} {'LAST WAIT':<12} {'RST':>3}  STATE"
    )
    converged = "yes" if is_converged(options.behavior, views) else "no"
    lines = [
        f"loop {options.loop}: {len(views)} nodes, {options.behavior}/{options.topology}"
        f"   {elapsed:6.1f}s   converged: {converged}",
        header,
    ]
    for v in views:
        reason = (v.state or {}).get("lastWaitReason") or "-"
        state = behaviour_state(v) if v.reachable else (v.error or "-")
        lines.append(
            f"{v.name:<14} {v.phase:<11} {v.counter('loops'):>7} {v.counter('waits'):>6} "
            f"{_short(reason, 12):<12} {v.restarts:>3}  {_short(state, 60)}"
        )
    return "\n".join(lines)


def view_model(options: RunOptions, views: Sequence[NodeView], elapsed: float) -> dict[str, Any]:
    """The JSON the web view polls: nodes with their phase, edges with their last outcome."""
    by_address = {v.address: v.name for v in views}
    names = {v.name for v in views}
    # A node remembers its last few peers; an edge much older than its newest one
    # (a successor it skipped a while ago, say) is drawn faintly.
    stale_after = max(STALE_EDGE_SECONDS, 3 * (options.interval or 1.0))
    nodes = []
    for v in views:
        edges = []
        raw_edges = [e for e in (v.state or {}).get("edges") or [] if isinstance(e, Mapping)]
        times = [float(e["at"]) for e in raw_edges if isinstance(e.get("at"), int | float)]
        newest = max(times, default=0.0)
        for edge in raw_edges:
            to = str(edge.get("to", ""))
            to = by_address.get(to, to)
            at = edge.get("at")
            stale = isinstance(at, int | float) and at < newest - stale_after
            if to in names and v.reachable:
                edges.append({"to": to, "outcome": edge.get("outcome"), "at": at, "stale": stale})
        nodes.append(
            {
                "name": v.name,
                "ordinal": v.ordinal,
                "address": v.address,
                "phase": v.phase,
                "loops": v.counter("loops"),
                "waits": v.counter("waits"),
                "lastWaitReason": (v.state or {}).get("lastWaitReason"),
                "restarts": v.restarts,
                "state": behaviour_state(v),
                "summary": dict(_summary(v)),
                "edges": edges,
            }
        )
    return {
        "loop": options.loop,
        "behavior": options.behavior,
        "topology": options.topology,
        "seconds": round(elapsed, 1),
        "converged": is_converged(options.behavior, views),
        "nodes": nodes,
    }


def node_environment(options: RunOptions, ordinal: int, addresses: Sequence[str]) -> dict[str, str]:
    """The RL_* environment of node `ordinal` (the same variables the operator sets in a pod)."""
    env = {
        contract.ENV_LOOP: options.loop,
        contract.ENV_NODE: node_name(options.loop, ordinal),
        contract.ENV_ORDINAL: str(ordinal),
        contract.ENV_REPLICAS: str(options.nodes),
        contract.ENV_BEHAVIOR: options.behavior,
        contract.ENV_TOPOLOGY: options.topology,
        contract.ENV_PEERS: ",".join(addresses),
        contract.ENV_BIND: options.bind,
        contract.ENV_PORT: addresses[ordinal].rpartition(":")[2],
        contract.ENV_STORE: "file",
        contract.ENV_STATE_DIR: str(options.state_dir.resolve()),
    }
    if options.interval is not None:
        env[contract.ENV_INTERVAL] = repr(options.interval)
    return env


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (held together so they are distinct)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# ---------------------------------------------------------------- injection


def injected_state(generations: Sequence[int | None], target: Any) -> dict[str, Any]:
    """The converge state the injector sends: one generation above the newest seen."""
    newest = max((g for g in generations if g is not None), default=0)
    return {"generation": newest + 1, "target": target}


def _generation_of(body: Mapping[str, Any]) -> int | None:
    summary = body.get("summary")
    if isinstance(summary, Mapping) and isinstance(summary.get("generation"), int):
        return int(summary["generation"])
    state = body.get("state")
    if isinstance(state, Mapping) and isinstance(state.get("generation"), int):
        return int(state["generation"])
    return None


@dataclass
class InjectResult:
    ok: bool
    address: str | None = None
    generation: int | None = None
    failures: list[str] = field(default_factory=list)


async def set_target(
    target: Any, addresses: Sequence[str], *, request_timeout: float = 2.0
) -> InjectResult:
    """Inject `target` by a round trip to one reachable node, as the operator does.

    Reads every node's generation first, so the injected generation is above
    all of them; then tries the nodes in order until one answers 200 holding
    the injected generation.
    """
    result = InjectResult(ok=False)
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:

        async def read(address: str) -> Mapping[str, Any] | None:
            try:
                async with session.get(f"http://{address}{contract.STATE_PATH}") as r:
                    if r.status != 200:
                        result.failures.append(f"{address}: state answered {r.status}")
                        return None
                    body = await r.json()
                    return body if isinstance(body, Mapping) else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                result.failures.append(f"{address}: {type(e).__name__} {e}".strip())
                return None

        states = await asyncio.gather(*(read(a) for a in addresses))
        reachable = [(a, s) for a, s in zip(addresses, states, strict=True) if s is not None]
        if not reachable:
            return result
        state = injected_state([_generation_of(s) for _, s in reachable], target)
        boot = time.time_ns()
        for seq, (address, known) in enumerate(reachable, start=1):
            body = {
                "loop": known.get("loop"),
                "from": contract.OPERATOR_SENDER,
                "boot": boot,
                "seq": seq,
                "state": state,
            }
            try:
                async with session.post(
                    f"http://{address}{contract.ROUNDTRIP_PATH}", json=body
                ) as r:
                    answer = await r.json(content_type=None)
                    if r.status != 200:
                        result.failures.append(f"{address}: {r.status} {answer}")
                        continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                result.failures.append(f"{address}: {type(e).__name__} {e}".strip())
                continue
            held = _generation_of(answer) if isinstance(answer, Mapping) else None
            if held is not None and held >= state["generation"]:
                result.ok, result.address, result.generation = True, address, state["generation"]
                return result
            result.failures.append(f"{address}: answered without generation {state['generation']}")
    return result


async def set_target_command(
    target: Any, addresses: Sequence[str], *, request_timeout: float
) -> int:
    result = await set_target(target, addresses, request_timeout=request_timeout)
    for failure in result.failures:
        print(f"set-target: {failure}", file=sys.stderr)
    if not result.ok:
        print("set-target: no node took the target", file=sys.stderr)
        return 1
    print(f"generation {result.generation} injected through {result.address}")
    return 0


# ---------------------------------------------------------------- supervisor


@dataclass
class _Node:
    view: NodeView
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None


class Supervisor:
    """Starts, restarts, polls and stops the node processes of one local loop."""

    def __init__(self, options: RunOptions, *, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.stopping = asyncio.Event()
        self.started_at = time.monotonic()
        ports = (
            [options.base_port + i for i in range(options.nodes)]
            if options.base_port is not None
            else free_ports(options.nodes, options.bind)
        )
        addresses = [f"{options.bind}:{p}" for p in ports]
        logs = options.state_dir / "logs"
        self.nodes = [
            _Node(
                view=NodeView(name=node_name(options.loop, i), ordinal=i, address=addresses[i]),
                env=node_environment(options, i, addresses),
                log=logs / f"{node_name(options.loop, i)}.log",
            )
            for i in range(options.nodes)
        ]
        self.view_url: str | None = None

    @property
    def views(self) -> list[NodeView]:
        return [n.view for n in self.nodes]

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    async def _spawn(self, node: _Node) -> None:
        node.log.parent.mkdir(parents=True, exist_ok=True)
        with node.log.open("ab") as log:
            node.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reactive_node.cli",
                "node",
                env={**os.environ, **node.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C reaches the supervisor only
            )
        node.view.pid = node.process.pid
        node.view.running = True
        node.view.state = None
        node.view.error = "starting"

    async def _keep_running(self, node: _Node) -> None:
        backoff = RESTART_BACKOFF_MIN
        while not self.stopping.is_set():
            started = time.monotonic()
            await self._spawn(node)
            self._write_run_file()
            assert node.process is not None
            code = await node.process.wait()
            node.view.running = False
            if self.stopping.is_set():
                return
            node.view.restarts += 1
            print(
                f"{node.view.name} exited with {code}; restarting (see {node.log})",
                file=sys.stderr,
            )
            backoff = (
                RESTART_BACKOFF_MIN
                if time.monotonic() - started > HEALTHY_RUN_SECONDS
                else min(backoff * 2, RESTART_BACKOFF_MAX)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        async def one(view: NodeView) -> None:
            if not view.running:
                return
            try:
                async with session.get(f"http://{view.address}{contract.STATE_PATH}") as r:
                    body = await r.json(content_type=None)
                    if r.status != 200 or not isinstance(body, Mapping):
                        view.error = f"state answered {r.status}"
                        return
                view.state, view.error = body, None
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                view.error = type(e).__name__
            finally:
                view.polled_at = time.time()

        await asyncio.gather(*(one(v) for v in self.views))

    async def _poll_forever(self, session: aiohttp.ClientSession) -> None:
        while not self.stopping.is_set():
            await self._poll(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), POLL_SECONDS)

    async def _display_forever(self) -> None:
        tty = self.out.isatty()
        period = 1.0 if tty else 5.0
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period)
            table = render_table(self.options, self.views, self.elapsed())
            if tty:
                extra = f"\nweb view: {self.view_url}" if self.view_url else ""
                self.out.write("\x1b[H\x1b[2J" + table + extra + "\n(Ctrl-C stops the loop)\n")
            else:
                self.out.write(table + "\n\n")
            self.out.flush()

    def _write_run_file(self) -> None:
        run = RunFile(
            loop=self.options.loop,
            supervisor_pid=os.getpid(),
            addresses=[v.address for v in self.views],
            pids=[v.pid if v.running else None for v in self.views],
            view=self.view_url,
        )
        path = self.options.state_dir / RUN_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run.to_json(), indent=2) + "\n")
        tmp.replace(path)

    async def _stop_nodes(self) -> None:
        running = [n.process for n in self.nodes if n.process and n.process.returncode is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                await asyncio.wait_for(p.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def _check_not_running(self) -> None:
        with contextlib.suppress(RunFileError):
            other = read_run_file(self.options.state_dir)
            if other.supervisor_pid != os.getpid() and _alive(other.supervisor_pid):
                raise RunFileError(
                    f"a loop already runs from {self.options.state_dir} "
                    f"(pid {other.supervisor_pid}); stop it or use another --state-dir"
                )

    async def run(self) -> int:
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._check_not_running()
        except RunFileError as e:
            print(f"reactive-loop run: {e}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        runner: web.AppRunner | None = None
        tasks: list[asyncio.Task[None]] = []
        summary: dict[str, Any] | None = None
        final_table = ""
        try:
            if self.options.view_port is not None:
                from reactive_node.view import create_view_app

                app = create_view_app(lambda: view_model(self.options, self.views, self.elapsed()))
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, self.options.bind, self.options.view_port).start()
                self.view_url = f"http://{self.options.bind}:{self.options.view_port}/"
                print(f"web view: {self.view_url}", file=sys.stderr)
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT)
            ) as session:
                tasks = [asyncio.create_task(self._keep_running(n)) for n in self.nodes]
                tasks.append(asyncio.create_task(self._poll_forever(session)))
                if not self.options.json_summary:
                    tasks.append(asyncio.create_task(self._display_forever()))
                if self.options.duration is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.options.duration)
                else:
                    await self.stopping.wait()
                await self._poll(session)  # the summary reflects the last moment
                summary = build_summary(self.options, self.views, self.elapsed())
                final_table = render_table(self.options, self.views, self.elapsed())
        finally:
            self.stopping.set()
            await self._stop_nodes()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                (self.options.state_dir / RUN_FILE).unlink()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if summary is None:
            return 1
        if self.options.json_summary:
            self.out.write(json.dumps(summary) + "\n")
        else:
            self.out.write(final_table + "\n")
        self.out.flush()
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run(options: RunOptions) -> int:
    return await Supervisor(options).run()
