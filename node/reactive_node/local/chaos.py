"""`reactive-loop chaos`: faults against a running local loop, and a verdict.

It reads the loop from its run file (`reactive-loop run --state-dir DIR`),
plays a scenario of timed faults — `kill -9` of a node process (the supervisor
restarts it), a pause (SIGSTOP, then SIGCONT), a partition between chosen
nodes (the fault switch of `run --faults`, reactive_node.runtime.faults) — injects
converge targets itself while it runs, polls every node's `/v1/history`, and
once the faults are over watches the loop settle. The invariants are checked
by the pure `reactive_node.core.verdict`; the picture is drawn by the pure
`reactive_node.core.timeline`. docs/chaos.md is the user's guide.

Whatever happens (Ctrl-C included), every paused node is resumed and every
link restored before it returns. It signals only the pids the run file lists
for the loop's nodes, after checking they run `reactive_node.cli node`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import aiohttp
import msgspec

from reactive_node.core import auth, contract, history, timeline, verdict
from reactive_node.core.behaviors.base import canonical
from reactive_node.core.codec import StateDocument
from reactive_node.local import inject, runfile
from reactive_node.runtime import keyfiles
from reactive_node.runtime.client import NodeClient, NodeError
from reactive_node.runtime.faults import encode_faults
from reactive_node.runtime.store import write_atomically

#: Longest chaos run (faults and injections), seconds; the settling after it is bounded too.
MAX_DURATION: Final = 600.0
MAX_FAULTS: Final = 100
MAX_PAUSE: Final = 120.0
POLL_SECONDS: Final = 0.5
REQUEST_TIMEOUT: Final = 1.0
#: How long a killed node may take to be restarted and ready, seconds.
RESTART_DEADLINE: Final = 60.0
READY_DEADLINE: Final = 60.0
EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE = 0, 1, 2

Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION)]
Ordinal = Annotated[int, msgspec.Meta(ge=0, lt=contract.MAX_REPLICAS)]


class Kill(msgspec.Struct, tag="kill", tag_field="kind", forbid_unknown_fields=True):
    at: Seconds
    node: Ordinal


class Pause(msgspec.Struct, tag="pause", tag_field="kind", forbid_unknown_fields=True):
    at: Seconds
    node: Ordinal
    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_PAUSE)]


class Partition(msgspec.Struct, tag="partition", tag_field="kind", forbid_unknown_fields=True):
    at: Seconds
    sides: Annotated[
        list[Annotated[list[Ordinal], msgspec.Meta(min_length=1)]],
        msgspec.Meta(min_length=2, max_length=2),
    ]
    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_DURATION)]


FaultSpec = Kill | Pause | Partition


class Scenario(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """A chaos scenario file (JSON or YAML), times in seconds from the start."""

    duration: Annotated[float, msgspec.Meta(gt=0, le=MAX_DURATION)]
    faults: Annotated[list[FaultSpec], msgspec.Meta(max_length=MAX_FAULTS)] = []
    inject_every: Annotated[float, msgspec.Meta(ge=0.5, le=MAX_DURATION)] | None = None
    """Seconds between injected converge targets (default: a quarter of the duration)."""
    seed: int = 0


class ScenarioError(ValueError):
    """A scenario that cannot run (bad file, bad values, or not for this loop)."""


def _end(fault: FaultSpec) -> float:
    return fault.at + (0.0 if isinstance(fault, Kill) else fault.seconds)


def validate(scenario: Scenario, nodes: int) -> None:
    """Checks the schema cannot express: faults end within the duration and name
    nodes of the loop; partition sides are disjoint. ScenarioError if not."""
    for i, fault in enumerate(scenario.faults):
        where = f"faults[{i}] ({fault.__struct_config__.tag})"
        if _end(fault) > scenario.duration:
            raise ScenarioError(
                f"{where} ends at {_end(fault):g} s, after the duration {scenario.duration:g} s"
            )
        named = fault.sides[0] + fault.sides[1] if isinstance(fault, Partition) else [fault.node]
        for ordinal in named:
            if ordinal >= nodes:
                raise ScenarioError(f"{where}: node {ordinal}, but the loop has {nodes} nodes")
        if isinstance(fault, Partition) and set(fault.sides[0]) & set(fault.sides[1]):
            raise ScenarioError(f"{where}: a node is on both sides")


def load_scenario(path: Path) -> Scenario:
    """A scenario from a JSON or YAML file; ScenarioError naming what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ScenarioError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > 1_000_000:
        raise ScenarioError(f"{path} is larger than 1 MB")
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ScenarioError("a YAML scenario needs PyYAML; or write it as JSON") from None
            try:
                raw = yaml.safe_load(data)
            except yaml.YAMLError as e:
                raise ScenarioError(f"{path} is not valid YAML: {e}") from None
            return msgspec.convert(raw, Scenario)
        return msgspec.json.decode(data, type=Scenario)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None


def scenario_from_flags(
    duration: float, kills: int, pauses: int, partitions: int, seed: int, nodes: int
) -> Scenario:
    """A random scenario (reproducible from `seed`): each fault at a random time in
    the first 70 % of the duration, ending by then; a pause lasts up to 3 s,
    a partition up to 5 s (both at most a fifth of the duration); a partition
    cuts a random minority (at least one node) from the rest."""
    if not 0 < duration <= MAX_DURATION:
        raise ScenarioError(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
    if min(kills, pauses, partitions) < 0 or kills + pauses + partitions > MAX_FAULTS:
        raise ScenarioError(f"between 0 and {MAX_FAULTS} faults in all")
    if partitions and nodes < 2:
        raise ScenarioError("a partition needs at least 2 nodes")
    rng = random.Random(seed)
    window = 0.7 * duration
    faults: list[FaultSpec] = []

    def start(length: float) -> float:
        return round(rng.uniform(0.05 * duration, max(0.05 * duration, window - length)), 2)

    for _ in range(kills):
        faults.append(Kill(at=start(0), node=rng.randrange(nodes)))
    for _ in range(pauses):
        length = round(min(3.0, duration / 5), 2)
        faults.append(Pause(at=start(length), node=rng.randrange(nodes), seconds=length))
    for _ in range(partitions):
        length = round(min(5.0, duration / 5), 2)
        order = list(range(nodes))
        rng.shuffle(order)
        cut = rng.randint(1, nodes // 2)
        faults.append(
            Partition(
                at=start(length),
                sides=[sorted(order[:cut]), sorted(order[cut:])],
                seconds=length,
            )
        )
    faults.sort(key=lambda f: f.at)
    return Scenario(duration=duration, faults=faults, seed=seed)


# ---------------------------------------------------------------- the run


@dataclass
class _Collector:
    """Every node's history, as polled (entries keyed by (boot, seq))."""

    names: list[str]
    addresses: list[str]
    entries: dict[str, dict[tuple[int, int], dict[str, Any]]] = field(default_factory=dict)
    cursor: dict[str, tuple[int, int]] = field(default_factory=dict)
    """node -> (boot, next) of its last answer."""
    errors: dict[str, str] = field(default_factory=dict)
    """node -> why its last unreadable history page was refused."""

    async def poll_one(self, nodes: NodeClient, i: int) -> None:
        name, address = self.names[i], self.addresses[i]
        known = self.cursor.get(name)
        for attempt in range(2):
            since = None if known is None or attempt else known[1]
            try:
                doc = await nodes.history(address, since)
            except NodeError:
                return
            try:
                merged = history.merge_page(
                    self.entries.get(name, {}), known, doc, incremental=since is not None
                )
            except history.BadHistoryPage as e:
                self.note_error(name, str(e))
                return
            if merged is None:
                known = None  # a new process: read its whole history
                continue
            self.entries[name], self.cursor[name] = merged
            return

    def note_error(self, name: str, error: str) -> None:
        """Say once per node and message that its history could not be read."""
        if self.errors.get(name) != error:
            self.errors[name] = error
            print(f"chaos: {name}: {error}", file=sys.stderr)

    async def poll(self, nodes: NodeClient) -> None:
        await asyncio.gather(*(self.poll_one(nodes, i) for i in range(len(self.names))))

    def histories(self) -> dict[str, list[dict[str, Any]]]:
        return {
            n: [self.entries.get(n, {})[k] for k in sorted(self.entries.get(n, {}))]
            for n in self.names
        }


async def _state(nodes: NodeClient, address: str) -> StateDocument | None:
    try:
        return await nodes.state(address)
    except NodeError:
        return None


def _is_node_process(pid: int) -> bool:
    """Whether `pid` runs a reactive node (checked in /proc where there is one)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"reactive_node.cli" in args and b"node" in args


@dataclass
class Options:
    state_dir: Path
    scenario: Scenario
    out: Path | None
    html: Path


class Chaos:
    def __init__(self, options: Options, run: runfile.RunFile) -> None:
        self.options = options
        self.loop = run
        self.names = [runfile.node_name(run.loop, i) for i in range(len(run.addresses))]
        self.collector = _Collector(self.names, list(run.addresses))
        self.faults: list[verdict.Fault] = []
        self.injections: list[verdict.Injection] = []
        self.blocked: dict[int, set[tuple[str, str]]] = {}
        self.paused: dict[int, int] = {}  # fault index -> pid (while stopped)
        self.pending: list[asyncio.Task[None]] = []
        self.keys: auth.Keyring | None = None
        self.settings = run.settings
        self.behavior = str(self.settings.get("behavior", "converge"))

    def bounds(self) -> verdict.Bounds:
        s = self.settings
        return verdict.Bounds(
            nodes=len(self.names),
            interval=float(s.get("interval", 1.0)),
            timeout=float(s.get("timeout", 0.5)),
            max_backoff=float(s.get("maxBackoff", 10.0)),
            loss_timeout=float(s.get("tokenLossTimeout", 30.0)),
            lease=float(s.get("tokenLease", 3.0)),
        )

    def _pid(self, ordinal: int) -> int | None:
        try:
            pid = runfile.read_run_file(self.options.state_dir).pids[ordinal]
        except (runfile.RunFileError, IndexError):
            return None
        return pid if pid is not None and _is_node_process(pid) else None

    def _write_faults(self) -> None:
        assert self.loop.faults is not None
        links = set().union(*self.blocked.values()) if self.blocked else set()
        write_atomically(Path(self.loop.faults), encode_faults(links).decode())

    async def _kill(self, nodes: NodeClient, ordinal: int) -> None:
        await self.collector.poll_one(nodes, ordinal)  # what it decided, before it dies
        old = await _state(nodes, self.loop.addresses[ordinal])
        pid = self._pid(ordinal)
        if pid is None:
            print(f"chaos: node {ordinal} has no running process; kill skipped", file=sys.stderr)
            return
        start = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        index = len(self.faults)
        name = self.names[ordinal]
        self.faults.append(verdict.Fault("kill", start, start, (name,)))

        async def back() -> None:
            deadline = time.monotonic() + RESTART_DEADLINE
            while time.monotonic() < deadline:
                state = await _state(nodes, self.loop.addresses[ordinal])
                if state is not None and state.ready and (old is None or state.boot != old.boot):
                    break
                await asyncio.sleep(0.1)
            self.faults[index] = verdict.Fault("kill", start, time.time(), (name,))

        self.pending.append(asyncio.create_task(back()))

    async def _pause(self, nodes: NodeClient, ordinal: int, seconds: float) -> None:
        await self.collector.poll_one(nodes, ordinal)
        pid = self._pid(ordinal)
        if pid is None:
            print(f"chaos: node {ordinal} has no running process; pause skipped", file=sys.stderr)
            return
        start = time.time()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        index = len(self.faults)
        self.paused[index] = pid
        name = self.names[ordinal]
        self.faults.append(verdict.Fault("pause", start, start + seconds, (name,)))

        async def resume() -> None:
            await asyncio.sleep(seconds)
            self._resume(index)

        self.pending.append(asyncio.create_task(resume()))

    def _resume(self, index: int) -> None:
        pid = self.paused.pop(index, None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        f = self.faults[index]
        self.faults[index] = verdict.Fault(f.kind, f.start, time.time(), f.nodes)

    async def _partition(self, sides: Sequence[Sequence[int]], seconds: float) -> None:
        a = tuple(self.names[i] for i in sides[0])
        b = tuple(self.names[i] for i in sides[1])
        index = len(self.faults)
        self.blocked[index] = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        self._write_faults()
        start = time.time()
        self.faults.append(verdict.Fault("partition", start, start + seconds, a, b))

        async def heal() -> None:
            await asyncio.sleep(seconds)
            self._heal(index)

        self.pending.append(asyncio.create_task(heal()))

    def _heal(self, index: int) -> None:
        if self.blocked.pop(index, None) is None:
            return
        self._write_faults()
        f = self.faults[index]
        self.faults[index] = verdict.Fault(f.kind, f.start, time.time(), f.nodes, f.other)

    async def _inject(self, number: int) -> None:
        target = {"chaos": number, "seed": self.options.scenario.seed, "at": round(time.time(), 3)}
        counter = self.options.state_dir / inject.GENERATION_FILE
        at = time.time()
        result = await inject.set_target(
            target,
            self.loop.addresses,
            request_timeout=REQUEST_TIMEOUT,
            state_dir=self.options.state_dir,
            keys=self.keys,
        )
        generation = result.generation
        if generation is None:  # allotted (perhaps taken by a node) but not confirmed?
            with contextlib.suppress(OSError, ValueError):
                generation = int(counter.read_text().strip())
            if generation is not None and any(i.generation == generation for i in self.injections):
                generation = None
        if generation is not None:
            self.injections.append(
                verdict.Injection(at, generation, history.digest(canonical(target)), result.ok)
            )

    async def _settled(self, nodes: NodeClient) -> bool:
        states = await asyncio.gather(*(_state(nodes, a) for a in self.loop.addresses))
        if any(s is None for s in states):
            return False
        summaries = [s.summary for s in states if s is not None]
        if self.behavior == "token":
            return sum(1 for s in summaries if s.holding is True) == 1
        generations = {s.generation for s in summaries}
        newest = max((i.generation for i in self.injections if i.ok), default=None)
        return len(generations) == 1 and (newest is None or newest in generations)

    async def run(self) -> dict[str, Any]:
        scenario = self.options.scenario
        primary = runfile.key_files(self.options.state_dir)[0]
        if primary.exists():
            self.keys = keyfiles.load_keyring(primary)
        async with aiohttp.ClientSession() as session:
            nodes = NodeClient(session, REQUEST_TIMEOUT)
            deadline = time.monotonic() + READY_DEADLINE
            while True:
                states = await asyncio.gather(*(_state(nodes, a) for a in self.loop.addresses))
                if all(s is not None and s.ready for s in states):
                    break
                if time.monotonic() > deadline:
                    raise ScenarioError(
                        f"the loop's nodes were not all ready in {READY_DEADLINE:g} s"
                    )
                await asyncio.sleep(0.2)
            started = time.time()
            baseline: dict[str, tuple[int, str] | None] = {}
            for name, s in zip(self.names, states, strict=True):
                st = None if s is None else s.state
                if isinstance(st, Mapping) and isinstance(st.get("generation"), int):
                    baseline[name] = (
                        int(st["generation"]),
                        history.digest(canonical(st.get("target"))),
                    )
                else:
                    baseline[name] = None
            await self.collector.poll(nodes)
            actions: list[tuple[float, int, Any]] = [
                (f.at, i, f) for i, f in enumerate(scenario.faults)
            ]
            if self.behavior == "converge":
                every = scenario.inject_every or max(0.5, scenario.duration / 4)
                k = 0
                while k * every < scenario.duration and k < 1000:
                    actions.append((k * every + 0.25, 10_000 + k, ("inject", k)))
                    k += 1
            actions.sort(key=lambda a: (a[0], a[1]))
            clock0 = time.monotonic()
            bounds = self.bounds()
            try:
                next_poll = 0.0
                for at, _, action in actions:
                    while time.monotonic() - clock0 < at:
                        if time.monotonic() >= next_poll:
                            await self.collector.poll(nodes)
                            next_poll = time.monotonic() + POLL_SECONDS
                        await asyncio.sleep(min(0.05, max(0.0, at - (time.monotonic() - clock0))))
                    if isinstance(action, Kill):
                        await self._kill(nodes, action.node)
                    elif isinstance(action, Pause):
                        await self._pause(nodes, action.node, action.seconds)
                    elif isinstance(action, Partition):
                        await self._partition(action.sides, action.seconds)
                    else:
                        self.pending.append(asyncio.create_task(self._inject(action[1])))
                while time.monotonic() - clock0 < scenario.duration or not all(
                    t.done() for t in self.pending
                ):
                    await self.collector.poll(nodes)
                    await asyncio.sleep(POLL_SECONDS)
                # Every fault undone; nodes see a healed link within an interval.
                faults_end = max([started, *(f.end for f in self.faults)]) + bounds.interval
                if self.behavior == "converge":
                    await self._inject(10_000)  # a last target, to see it spread
                bound = bounds.token if self.behavior == "token" else bounds.converge
                settle_until = time.monotonic() + max(0.0, faults_end - time.time()) + bound
                calm = 0
                while time.monotonic() < settle_until and calm < 3:
                    await self.collector.poll(nodes)
                    calm = calm + 1 if await self._settled(nodes) else 0
                    await asyncio.sleep(POLL_SECONDS)
                await self.collector.poll(nodes)
            finally:
                for index in list(self.paused):
                    self._resume(index)
                for index in list(self.blocked):
                    self._heal(index)
                for task in self.pending:
                    task.cancel()
                await asyncio.gather(*self.pending, return_exceptions=True)
            ended = time.time()
        observation = verdict.Observation(
            behavior=self.behavior,
            nodes=self.names,
            started=started,
            faults_end=faults_end,
            ended=ended,
            bounds=bounds,
            histories=self.collector.histories(),
            faults=self.faults,
            injections=self.injections,
            baseline=baseline,
        )
        result = verdict.check(observation)
        result["scenario"] = msgspec.to_builtins(scenario)
        self.options.html.parent.mkdir(parents=True, exist_ok=True)
        self.options.html.write_text(timeline.render(observation, result), encoding="utf-8")
        result["timeline"] = str(self.options.html)
        return result


async def chaos_command(
    state_dir: Path,
    scenario: Scenario,
    *,
    out: Path | None = None,
    html: Path | None = None,
) -> int:
    """Run `scenario` against the loop of `state_dir`; print the verdict; exit status."""
    try:
        run = runfile.read_run_file(state_dir)
        validate(scenario, len(run.addresses))
        if any(isinstance(f, Partition) for f in scenario.faults) and run.faults is None:
            raise ScenarioError(
                "a partition needs the loop's fault switch:"
                " start it with `reactive-loop run --faults`"
            )
    except (runfile.RunFileError, ScenarioError) as e:
        print(f"reactive-loop chaos: {e}", file=sys.stderr)
        return EXIT_USAGE
    stamp = time.strftime("%Y%m%dT%H%M%S")
    options = Options(
        state_dir=state_dir,
        scenario=scenario,
        out=out,
        html=html or state_dir / f"chaos-{stamp}.html",
    )
    try:
        result = await Chaos(options, run).run()
    except (ScenarioError, auth.BadKey, OSError) as e:
        print(f"reactive-loop chaos: {e}", file=sys.stderr)
        return EXIT_VIOLATIONS
    text = json.dumps(result, indent=2, sort_keys=True)
    if out is not None:
        await asyncio.to_thread(out.write_text, text + "\n", "utf-8")
    print(text)
    status = "no violations" if result["ok"] else f"violations {result['violationCounts']}"
    print(f"chaos: {status}; timeline {options.html}", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_VIOLATIONS
