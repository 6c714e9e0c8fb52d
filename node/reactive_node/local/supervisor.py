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
import collections
import contextlib
import fcntl
import json
import os
import secrets
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

from reactive_node.core import auth, codec, contract
from reactive_node.core.codec import decode_state
from reactive_node.runtime.store import write_atomically

RUN_FILE = "run.json"
#: `run --faults`: the fault switch the nodes re-read (reactive_node.runtime.faults).
FAULTS_FILE = "faults.json"
#: Held (flock) by the supervisor of the state dir for its whole life.
SUPERVISOR_LOCK = "supervisor.lock"
#: The last generation `set-target` allotted from this state dir, and its lock.
GENERATION_FILE = "generation"
GENERATION_LOCK = "generation.lock"
#: `run --auth`: the key files of the loop, in the state dir (docs/node.md).
HMAC_DIR = "hmac"
POLL_SECONDS = 0.5
POLL_TIMEOUT = 1.0
RESTART_BACKOFF_MIN = 0.2
RESTART_BACKOFF_MAX = 5.0
STOP_GRACE_SECONDS = 5.0
#: A node that ran this long before dying is restarted at once again.
HEALTHY_RUN_SECONDS = 10.0
#: The view draws an edge faintly once it is this much older than the node's newest.
STALE_EDGE_SECONDS = 5.0
#: The web view's timeline: seconds kept, points and events kept (per node).
TIMELINE_SECONDS = 300.0
TIMELINE_POINTS = 900
TIMELINE_EVENTS = 300
#: The supervisor reads each node's /v1/history every this many polls (view only).
HISTORY_EVERY_POLLS = 4
#: Decision kinds the timeline shows (reactive_node.core.history.DECISIONS).
TIMELINE_DECISIONS = ("adopt", "regenerate", "acquire", "release")


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
    auth: bool = False
    """Sign round trips with the keys in `<state-dir>/hmac/` (made if missing)."""
    faults: bool = False
    """Give the nodes the fault switch `<state-dir>/faults.json` (`reactive-loop chaos`)."""


@dataclass(frozen=True)
class RunFile:
    """Where a running local loop can be reached; written to `<state-dir>/run.json`."""

    loop: str
    supervisor_pid: int
    addresses: list[str]
    pids: list[int | None]
    view: str | None
    faults: str | None = None
    """The fault switch's path when the run has one (`run --faults`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The timings the nodes run with (`reactive-loop chaos` states its bounds from them)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "settings": self.settings,
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
            faults=None if raw.get("faults") is None else str(raw["faults"]),
            settings=dict(raw.get("settings") or {}),
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


def view_model(
    options: RunOptions,
    views: Sequence[NodeView],
    elapsed: float,
    timeline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON the web view polls: nodes with their phase, edges with their last
    outcome, and the timeline (`Timeline.to_json`) when there is one."""
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
        "timeline": None if timeline is None else dict(timeline),
    }


class Timeline:
    """What the web view's timeline shows (docs/node.md is not involved: local
    mode only): the loop's loops and waits per second from the nodes' counters,
    each node's phase over time, its decisions (from `/v1/history`), and the
    faults the supervisor sees: a node's process exiting, links cut by the
    fault switch. Bounded: `TIMELINE_SECONDS` of time, and at most
    `TIMELINE_POINTS` samples and `TIMELINE_EVENTS` events per node."""

    def __init__(self, window: float = TIMELINE_SECONDS) -> None:
        self.window = window
        self.rates: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=TIMELINE_POINTS
        )
        self._counters: dict[str, tuple[float, int, int]] = {}
        self.phases: dict[str, collections.deque[list[Any]]] = {}
        self.decisions: dict[str, collections.deque[dict[str, Any]]] = {}
        self.faults: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE_EVENTS)
        self.cursors: dict[str, tuple[int, int]] = {}
        self._links: frozenset[tuple[str, str]] = frozenset()

    def sample(self, now: float, views: Sequence[NodeView]) -> None:
        """Take the nodes' counters and phases as last polled, at `now`."""
        loops = waits = 0
        elapsed: list[float] = []
        for v in views:
            phases = self.phases.setdefault(v.name, collections.deque(maxlen=TIMELINE_POINTS))
            if phases and phases[-1][2] == v.phase:
                phases[-1][1] = now
            else:
                if phases:
                    phases[-1][1] = now
                phases.append([now, now, v.phase])
            if not v.reachable:
                continue
            counts = (v.counter("loops"), v.counter("waits"))
            last = self._counters.get(v.name)
            self._counters[v.name] = (now, *counts)
            if last is None:
                continue
            # A restarted node counts from 0 again: its count is then all new.
            loops += counts[0] - last[1] if counts[0] >= last[1] else counts[0]
            waits += counts[1] - last[2] if counts[1] >= last[2] else counts[1]
            elapsed.append(now - last[0])
        if elapsed and max(elapsed) > 0:
            dt = max(elapsed)
            self.rates.append((now, round(loops / dt, 2), round(waits / dt, 2)))
        self._trim(now)

    def history(self, name: str, doc: Mapping[str, Any]) -> None:
        """Take a `/v1/history` answer of node `name` (asked with `since_for`)."""
        entries = doc.get("entries")
        boot, nxt = doc.get("boot"), doc.get("next")
        if not isinstance(entries, list) or not isinstance(boot, int) or not isinstance(nxt, int):
            return
        known = self.cursors.get(name)
        events = self.decisions.setdefault(name, collections.deque(maxlen=TIMELINE_EVENTS))
        for e in entries:
            if not isinstance(e, Mapping) or e.get("kind") not in TIMELINE_DECISIONS:
                continue
            if e.get("restored") and known is not None:
                continue  # copies of entries already shown
            if not isinstance(e.get("at"), int | float):
                continue
            event = {"at": float(e["at"]), "kind": e["kind"]}
            for key in ("generation", "epoch"):
                if key in e:
                    event[key] = e[key]
            events.append(event)
        self.cursors[name] = (boot, nxt)

    def since_for(self, name: str, boot: int | None) -> int | None:
        """The `since` to ask node `name` with: None for a process not seen yet."""
        known = self.cursors.get(name)
        return known[1] if known is not None and known[0] == boot else None

    def exited(self, name: str, now: float, code: int | None) -> None:
        self.faults.append({"kind": "exit", "nodes": [name], "start": now, "code": code})

    def links(self, now: float, blocked: frozenset[tuple[str, str]]) -> None:
        """The fault switch's blocked links at `now` (a partition while non-empty)."""
        if blocked == self._links:
            return
        for fault in self.faults:
            if fault["kind"] == "partition" and fault.get("end") is None:
                fault["end"] = now
        if blocked:
            nodes = sorted({n for link in blocked for n in link})
            self.faults.append(
                {
                    "kind": "partition",
                    "nodes": nodes,
                    "links": sorted([list(link) for link in blocked]),
                    "start": now,
                    "end": None,
                }
            )
        self._links = blocked

    def _trim(self, now: float) -> None:
        start = now - self.window
        while self.rates and self.rates[0][0] < start:
            self.rates.popleft()
        for phases in self.phases.values():
            while phases and phases[0][1] < start:
                phases.popleft()
        for events in self.decisions.values():
            while events and events[0]["at"] < start:
                events.popleft()
        while self.faults and (self.faults[0].get("end") or self.faults[0]["start"]) < start:
            self.faults.popleft()

    def to_json(self, now: float) -> dict[str, Any]:
        names = sorted(set(self.phases) | set(self.decisions))
        return {
            "now": now,
            "window": self.window,
            "rates": [list(r) for r in self.rates],
            "nodes": {
                n: {
                    "phases": [list(p) for p in self.phases.get(n, ())],
                    "decisions": [dict(d) for d in self.decisions.get(n, ())],
                }
                for n in names
            },
            "faults": [dict(f) for f in self.faults],
        }


def key_files(state_dir: Path) -> tuple[Path, Path]:
    """(primary, accepted): the key files of a local loop run with `--auth`."""
    folder = state_dir.resolve() / HMAC_DIR
    return folder / contract.HMAC_SECRET_PRIMARY, folder / contract.HMAC_SECRET_ACCEPTED


def ensure_keys(state_dir: Path) -> auth.Keyring:
    """The keyring of `<state-dir>/hmac/`: a random primary key (and an empty
    accepted file) is made where none exists; existing files are kept (and
    checked: BadKey if they cannot be used). Only the user may read them."""
    primary, accepted = key_files(state_dir)
    primary.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in ((primary, secrets.token_hex(32) + "\n"), (accepted, "")):
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
    return auth.load_keyring(primary, accepted)


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
    if options.auth:
        primary, accepted = key_files(options.state_dir)
        env[contract.ENV_HMAC_KEY_FILE] = str(primary)
        env[contract.ENV_HMAC_ACCEPTED_FILE] = str(accepted)
    if options.faults:
        env[contract.ENV_FAULTS_FILE] = str(options.state_dir.resolve() / FAULTS_FILE)
    return env


def node_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The timings a node started with `env` runs with (empty if its config is bad:
    the node then refuses to start and says why)."""
    from reactive_node.runtime.config import ConfigError, load_config

    try:
        config = load_config(None, env)
    except (ConfigError, ValueError):
        return {}
    return {
        "behavior": config.behavior,
        "topology": config.topology,
        "replicas": config.replicas,
        "interval": config.interval,
        "timeout": config.timeout,
        "maxBackoff": config.max_backoff,
        "tokenHold": config.token_hold,
        "tokenLossTimeout": config.token_loss_timeout,
        "tokenLease": config.lease,
    }


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


class GenerationError(Exception):
    """No new generation can be allotted (the newest is at the bound)."""


def _stored_generations(state_dir: Path) -> list[int]:
    """The generations the node state files of `state_dir` hold (unreadable ones skipped)."""
    found = []
    for path in state_dir.glob("*.json"):
        if path.name == RUN_FILE:
            continue
        with contextlib.suppress(OSError, ValueError):
            generation = _generation_of({"state": decode_state(path.read_text("utf-8"))})
            if generation is not None:
                found.append(generation)
    return found


def _lock_for_injection(state_dir: Path) -> TextIO:
    """Wait for and hold the state dir's injection lock (until the file is closed)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / GENERATION_LOCK).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        lock.close()
        raise
    return lock


def allot_generation(state_dir: Path, seen: Sequence[int | None]) -> int:
    """A generation no other `set-target` on this state dir ever gets: one above the
    last one allotted here, every generation `seen` and every state file's, and
    recorded before it is used. The caller holds the injection lock."""
    counter = state_dir / GENERATION_FILE
    last = 0
    with contextlib.suppress(OSError, ValueError):
        last = int(counter.read_text().strip())
    known = [g for g in seen if g is not None]
    generation = max([last, *known, *_stored_generations(state_dir)]) + 1
    if generation > contract.MAX_STATE_INT:
        raise GenerationError(f"generation {generation} would be above the bound")
    write_atomically(counter, f"{generation}\n")
    return generation


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
    target: Any,
    addresses: Sequence[str],
    *,
    request_timeout: float = 2.0,
    state_dir: Path | None = None,
    keys: auth.Keyring | None = None,
) -> InjectResult:
    """Inject `target` by a round trip to one reachable node, as the operator does.

    Reads every node's generation first, so the injected generation is above
    all of them; then tries the nodes in order until one answers 200 holding
    the injected generation.

    With a `state_dir`, injections from it are one at a time (an exclusive
    lock on the state dir) and the generation is allotted by
    `allot_generation`: unique even when injections race or the node holding
    the newest generation is unreachable, and a later injection always gets a
    higher generation, so it can never lose to an earlier one.

    With `keys`, each round trip is signed with the primary key, addressed to
    the node that `/v1/state` named at that address.
    """
    if state_dir is None:
        return await _inject(target, addresses, request_timeout, None, keys)
    try:
        lock = await asyncio.to_thread(_lock_for_injection, state_dir)
    except OSError as e:
        return InjectResult(ok=False, failures=[f"cannot lock {state_dir}: {e}"])
    with lock:
        return await _inject(target, addresses, request_timeout, state_dir, keys)


async def _inject(
    target: Any,
    addresses: Sequence[str],
    request_timeout: float,
    state_dir: Path | None,
    keys: auth.Keyring | None,
) -> InjectResult:
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
        seen = [_generation_of(s) for _, s in reachable]
        state = injected_state(seen, target)
        if state_dir is not None:
            try:
                state["generation"] = await asyncio.to_thread(allot_generation, state_dir, seen)
            except (OSError, GenerationError) as e:
                result.failures.append(f"cannot allot a generation in {state_dir}: {e}")
                return result
        boot = time.time_ns()
        for seq, (address, known) in enumerate(reachable, start=1):
            try:
                # Version 1 (the codec's default): every node version accepts it.
                request = codec.make_request(
                    str(known.get("loop")), contract.OPERATOR_SENDER, boot, seq, state
                )
            except codec.BadBody as e:
                result.failures.append(f"{address}: {e}")
                continue
            data = codec.encode(request)
            headers = {"Content-Type": "application/json"}
            if keys is not None:
                try:
                    headers[contract.SIGNATURE_HEADER] = auth.sign(
                        keys,
                        sender=contract.OPERATOR_SENDER,
                        recipient=str(known.get("node")),
                        body=data,
                        now=time.time(),
                    )
                except ValueError as e:
                    result.failures.append(f"{address}: cannot sign: {e}")
                    continue
            try:
                async with session.post(
                    f"http://{address}{contract.ROUNDTRIP_PATH}", data=data, headers=headers
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
    target: Any,
    addresses: Sequence[str],
    *,
    request_timeout: float,
    state_dir: Path | None,
    keys: auth.Keyring | None = None,
) -> int:
    result = await set_target(
        target, addresses, request_timeout=request_timeout, state_dir=state_dir, keys=keys
    )
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
        self.faults_path = options.state_dir.resolve() / FAULTS_FILE if options.faults else None
        self.settings = node_settings({**os.environ, **self.nodes[0].env}) if self.nodes else {}
        self.timeline = Timeline()

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
            self.timeline.exited(node.view.name, time.time(), code)
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

    async def _poll_history(self, session: aiohttp.ClientSession) -> None:
        """Read each node's new decisions for the web view's timeline."""

        async def one(view: NodeView) -> None:
            if not view.reachable or view.state is None:
                return
            boot = view.state.get("boot")
            since = self.timeline.since_for(view.name, boot if isinstance(boot, int) else None)
            query = "" if since is None else f"?since={since}"
            try:
                async with session.get(f"http://{view.address}{contract.HISTORY_PATH}{query}") as r:
                    body = await r.json(content_type=None)
                    if r.status == 200 and isinstance(body, Mapping):
                        self.timeline.history(view.name, body)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return

        await asyncio.gather(*(one(v) for v in self.views))

    def _read_links(self) -> None:
        if self.faults_path is None:
            return
        from reactive_node.runtime.faults import parse_faults

        with contextlib.suppress(OSError, ValueError):
            self.timeline.links(time.time(), parse_faults(self.faults_path.read_bytes()))

    async def _poll_forever(self, session: aiohttp.ClientSession) -> None:
        polls = 0
        while not self.stopping.is_set():
            await self._poll(session)
            self.timeline.sample(time.time(), self.views)
            self._read_links()
            if self.options.view_port is not None and polls % HISTORY_EVERY_POLLS == 0:
                await self._poll_history(session)
            polls += 1
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
            faults=str(self.faults_path) if self.faults_path is not None else None,
            settings=self.settings,
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

    def _lock_state_dir(self) -> TextIO:
        """Hold the state dir's supervisor lock (until the returned file is closed,
        or the process ends); RunFileError if another live supervisor holds it."""
        lock = (self.options.state_dir / SUPERVISOR_LOCK).open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            other = "another process"
            with contextlib.suppress(RunFileError):
                other = f"pid {read_run_file(self.options.state_dir).supervisor_pid}"
            raise RunFileError(
                f"a loop already runs from {self.options.state_dir} ({other}); "
                "stop it or use another --state-dir"
            ) from None
        return lock

    async def run(self) -> int:
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = self._lock_state_dir()
        except RunFileError as e:
            print(f"reactive-loop run: {e}", file=sys.stderr)
            return 1
        with lock:
            if self.faults_path is not None:  # every run starts with every link up
                from reactive_node.runtime.faults import encode_faults

                write_atomically(self.faults_path, encode_faults(()).decode())
            if self.options.auth:
                try:
                    keys = ensure_keys(self.options.state_dir)
                except (auth.BadKey, OSError) as e:
                    print(f"reactive-loop run: {e}", file=sys.stderr)
                    return 2
                print(
                    f"signed round trips: keys in {key_files(self.options.state_dir)[0].parent}"
                    f" (primary {keys.primary_id})",
                    file=sys.stderr,
                )
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        runner: web.AppRunner | None = None
        tasks: list[asyncio.Task[None]] = []
        summary: dict[str, Any] | None = None
        final_table = ""
        try:
            if self.options.view_port is not None:
                from reactive_node.local.web import create_view_app

                app = create_view_app(
                    lambda: view_model(
                        self.options,
                        self.views,
                        self.elapsed(),
                        self.timeline.to_json(time.time()),
                    )
                )
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


async def run(options: RunOptions) -> int:
    return await Supervisor(options).run()
