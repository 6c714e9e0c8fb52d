"""`kubectl rloop chaos`: faults against a loop in a cluster, the Kubernetes way,
and the verdict of `reactive-loop chaos` (docs/chaos.md, "In a cluster").

Faults:

* **kill** — the node's pod is deleted (with its grace period; the operator
  makes a new one). Its history is read just before; the fault ends when a
  new pod of the ordinal answers `/v1/state` ready with a new `boot`.
* **partition** — a NetworkPolicy made by this run selects the one pod (the
  loop's and ordinal's labels: its name is `<loop>-<ordinal>`) and allows no
  ingress and no egress, and the pod gets the label `reactive-loop.dev/
  partitioned=<run>`. NetworkPolicies only add allowances, so the loop's own
  policy (which admits the loop's pods as peers) leaves out a pod with that
  label (`builders.network_policy`): the run's deny-all is then the only
  policy of the pod, and its peers' policies no longer admit it. Healing
  removes the label first, then the policy. No exec; the only change to an
  object the run did not make is that label on the cut pod, removed at the
  end whatever ends the run. Nodes open a connection per round trip, so
  a policy implementation that keeps established connections still cuts
  the next one. The run measures the cut anyway: the pod's successful round
  trips while cut are counted, and the verdict says per partition whether
  the pod was cut (`partitions[].cut`).

The run polls every node's `/v1/history` while it goes (through the pod proxy
or port-forwards, `kube.NodeReader`), watches the loop settle after the
faults, and checks the histories with `reactive_node.core.verdict` — the same
checker and the same JSON as local mode — and draws the timeline with
`reactive_node.core.timeline`.

Every object the run creates carries `app.kubernetes.io/managed-by=
kubectl-rloop` and its run label; whatever ends the run (the end, an error,
Ctrl-C, SIGTERM) they are deleted before it returns, with further signals
held off until that is done (`Cleanup`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol

from reactive_node.core import contract as c
from reactive_node.core import history, timeline, verdict
from reactive_node.core.behaviors.base import canonical, default_lease
from reactive_node.core.codec import BadStateDocument, StateDocument, decode_state_document
from reactive_node.runtime.config import NodeConfig

from .kube import KubeError, NodeReadError, PodRef
from .view import MAX_DURATION, LoopInfo

MANAGED_BY: Final = "kubectl-rloop"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
#: Labels of the objects a run creates: its run id, and the loop it ran against.
RUN_LABEL: Final = "kubectl-rloop.reactive-loop.dev/run"
RUN_LOOP_LABEL: Final = "kubectl-rloop.reactive-loop.dev/loop"
#: Most faults of each kind in one run.
MAX_FAULTS: Final = 20
POLL_SECONDS: Final = 0.5
#: How long the loop may take to be ready before the run starts, seconds.
READY_DEADLINE: Final = 120.0
#: How long a deleted pod's ordinal may take to answer again, seconds.
RESTART_DEADLINE: Final = 180.0
#: Seconds after a partition starts before its effect is measured (a plugin
#: applies a new policy within a moment).
CUT_GRACE: Final = 2.0
#: Shortest time between the two readings of a partition's effect, seconds.
MIN_CUT_MEASURE: Final = 1.0
#: Tries to delete one object at cleanup (each with the API's timeout).
CLEANUP_TRIES: Final = 5


class Interrupted(BaseException):
    """SIGTERM during a run (SIGINT raises KeyboardInterrupt)."""


class ClusterApi(Protocol):
    """What a run asks of the cluster (`kube.Cluster`)."""

    namespace: str

    def pods(self, loop: str) -> list[PodRef]: ...

    def delete_pod(self, name: str, uid: str) -> None: ...

    def create_policy(self, body: Mapping[str, Any]) -> None: ...

    def set_partitioned(self, name: str, run: str | None) -> bool: ...

    def partitioned(self, loop: str, run: str | None = None) -> list[str]: ...

    def delete_policy(self, name: str) -> bool: ...

    def policies(self, selector: str) -> list[str]: ...


class NodesApi(Protocol):
    """What a run asks of the nodes (`kube.NodeReader`)."""

    @property
    def via(self) -> str: ...

    def get_json(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Any: ...

    def forget(self, pod: str) -> None: ...


# ---------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class Fault:
    kind: str
    """`kill` or `partition`."""
    at: float
    """Seconds from the start."""
    ordinal: int
    seconds: float = 0.0
    """How long a partition lasts."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "at": self.at, "node": self.ordinal}
        if self.kind == "partition":
            out["seconds"] = self.seconds
        return out


@dataclass(frozen=True)
class Plan:
    duration: float
    seed: int
    faults: tuple[Fault, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "duration": self.duration,
            "seed": self.seed,
            "faults": [f.to_json() for f in self.faults],
        }


def make_plan(duration: float, kills: int, partitions: int, seed: int, replicas: int) -> Plan:
    """A random plan, the same for the same seed: each fault at a random time in
    the first 70 % of the duration, ending by then; a partition lasts a quarter
    of the duration, at most 10 s, and cuts one random pod. ValueError on bad input."""
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"--duration must be more than 0 and at most {MAX_DURATION:g} seconds")
    for name, count in (("--kill", kills), ("--partition", partitions)):
        if not 0 <= count <= MAX_FAULTS:
            raise ValueError(f"{name} must be between 0 and {MAX_FAULTS}")
    if kills + partitions == 0:
        raise ValueError("no fault asked for: give --kill and/or --partition")
    if replicas < 1:
        raise ValueError("the loop has no replicas")
    if partitions and replicas < 2:
        raise ValueError("a partition needs a loop of at least 2 replicas")
    rng = random.Random(seed)
    window = 0.7 * duration
    faults: list[Fault] = []

    def start(length: float) -> float:
        low = 0.05 * duration
        return round(rng.uniform(low, max(low, window - length)), 2)

    for _ in range(kills):
        faults.append(Fault("kill", start(0.0), rng.randrange(replicas)))
    for _ in range(partitions):
        length = round(min(10.0, duration / 4), 2)
        faults.append(Fault("partition", start(length), rng.randrange(replicas), length))
    faults.sort(key=lambda f: (f.at, f.kind, f.ordinal))
    return Plan(duration, seed, tuple(faults))


def run_selector(run: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{RUN_LABEL}={run}"


def loop_selector(loop: str) -> str:
    """The objects any run made against `loop` (`kubectl rloop cleanup`)."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{RUN_LOOP_LABEL}={loop}"


def partition_policy(loop: str, ordinal: int, run: str, name: str) -> dict[str, Any]:
    """The NetworkPolicy that cuts the pod `<loop>-<ordinal>`: it selects the pod
    by its loop and ordinal labels and allows nothing in either direction."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run, RUN_LOOP_LABEL: loop},
            "annotations": {
                "kubectl-rloop.reactive-loop.dev/purpose": (
                    f"kubectl rloop chaos: a partition of pod {loop}-{ordinal};"
                    " deleted when it heals (or: kubectl rloop cleanup " + loop + ")"
                )
            },
        },
        "spec": {
            "podSelector": {
                "matchLabels": {
                    c.LOOP_LABEL: loop,
                    c.COMPONENT_LABEL: c.NODE_COMPONENT,
                    c.ORDINAL_LABEL: str(ordinal),
                }
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def bounds_of(env: Mapping[str, str], replicas: int) -> verdict.Bounds:
    """The checker's bounds from a node pod's RL_* environment (the node's defaults
    where a variable is not set)."""
    defaults = NodeConfig()

    def number(name: str, default: float) -> float:
        try:
            return float(env[name])
        except (KeyError, ValueError):
            return default

    interval = number(c.ENV_INTERVAL, defaults.interval)
    lease = number(c.ENV_TOKEN_LEASE, 0.0) or default_lease(interval, max(1, replicas))
    return verdict.Bounds(
        nodes=replicas,
        interval=interval,
        timeout=number(c.ENV_TIMEOUT, defaults.timeout),
        max_backoff=number(c.ENV_MAX_BACKOFF, defaults.max_backoff),
        loss_timeout=number(c.ENV_TOKEN_LOSS_TIMEOUT, defaults.token_loss_timeout),
        lease=lease,
    )


# ---------------------------------------------------------------- signals and cleanup


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM `Interrupted` in the main thread."""

    def term(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def signals_held(notice: Callable[[str], None]) -> Iterator[list[int]]:
    """SIGINT and SIGTERM are noted (and `notice`d), not raised, until the block ends
    (the cleanup must not be cut short); yields the signals received."""
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        notice(f"{signal.Signals(signum).name}: removing what the run created first")

    old_int = signal.signal(signal.SIGINT, hold)
    old_term = signal.signal(signal.SIGTERM, hold)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@dataclass
class Cleanup:
    """The objects a run created, and their removal."""

    api: ClusterApi
    run: str
    loop: str = ""
    created: list[str] = field(default_factory=list)
    labelled: list[str] = field(default_factory=list)
    """Pods this run labelled as partitioned (each unlabelled at its heal or the end)."""
    unlabelled: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _tried(self, call: Callable[[], object], done: list[str], name: str) -> bool:
        """`call` tried `CLEANUP_TRIES` times; on success `name` joins `done`."""
        last = ""
        for _ in range(CLEANUP_TRIES):
            try:
                call()
            except KubeError as e:
                last = str(e)
                continue
            if name not in done:
                done.append(name)
            return True
        self.errors.append(last)
        return False

    def delete(self, name: str) -> bool:
        """Delete the policy `name` (tried `CLEANUP_TRIES` times); whether it is gone."""
        return self._tried(lambda: self.api.delete_policy(name), self.removed, name)

    def unlabel(self, pod: str) -> bool:
        """Remove the partition label from `pod` (tried `CLEANUP_TRIES` times)."""
        return self._tried(lambda: self.api.set_partitioned(pod, None), self.unlabelled, pod)

    def finish(self) -> None:
        """Unlabel the pods it cut and delete everything created, then whatever
        else carries the run's label (a call whose answer was lost), and list
        what is left."""
        for pod in self.labelled:
            if pod not in self.unlabelled:
                self.unlabel(pod)
        if self.loop:
            try:
                for pod in self.api.partitioned(self.loop, self.run):
                    if pod not in self.unlabelled:
                        self.unlabel(pod)
            except KubeError as e:
                self.errors.append(str(e))
        for name in self.created:
            if name not in self.removed:
                self.delete(name)
        try:
            stray = self.api.policies(run_selector(self.run))
        except KubeError as e:
            self.errors.append(str(e))
            stray = [n for n in self.created if n not in self.removed]
        for name in stray:
            self.delete(name)
        try:
            self.left = self.api.policies(run_selector(self.run))
        except KubeError as e:
            self.errors.append(str(e))
            self.left = [n for n in self.created if n not in self.removed]

    def to_json(self) -> dict[str, Any]:
        return {
            "selector": run_selector(self.run),
            "created": list(self.created),
            "removed": list(self.removed),
            "labelled": list(self.labelled),
            "unlabelled": list(self.unlabelled),
            "left": list(self.left),
            "errors": self.errors[:10],
        }


# ---------------------------------------------------------------- the run


@dataclass
class _Collector:
    """Every node's history, as polled (entries keyed by (boot, seq))."""

    names: list[str]
    say: Callable[[str], None]
    """Where a node's unreadable history page is reported (once per message)."""
    entries: dict[str, dict[tuple[int, int], dict[str, Any]]] = field(default_factory=dict)
    cursor: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def poll_one(self, nodes: NodesApi, name: str) -> None:
        known = self.cursor.get(name)
        for attempt in range(2):
            query = [] if known is None or attempt else [("since", str(known[1]))]
            try:
                doc = nodes.get_json(name, c.HISTORY_PATH, query)
            except NodeReadError:
                return
            try:
                merged = history.merge_page(
                    self.entries.get(name, {}), known, doc, incremental=bool(query)
                )
            except history.BadHistoryPage as e:
                if self.errors.get(name) != str(e):
                    self.errors[name] = str(e)
                    self.say(f"{name}: {e}")
                return
            if merged is None:
                known = None  # a new process: read its whole history
                continue
            self.entries[name], self.cursor[name] = merged
            return

    def histories(self) -> dict[str, list[dict[str, Any]]]:
        return {
            n: [self.entries.get(n, {})[k] for k in sorted(self.entries.get(n, {}))]
            for n in self.names
        }


@dataclass
class _Cut:
    """A partition in progress: its policy and what the pod did while cut."""

    index: int
    ordinal: int
    policy: str
    start: float
    starts_at: float
    ends_at: float
    """Seconds from the run's start when it was cut and when it heals."""
    before: tuple[int, int, int] | None = None
    """(boot, loops, waits) of the pod `CUT_GRACE` after the cut."""
    after: tuple[int, int, int] | None = None
    """The same just before it heals."""
    measured_at: float | None = None
    healed_at: float | None = None
    """Monotonic times of the two readings."""

    @property
    def measured(self) -> bool:
        return self.measured_at is not None

    def to_json(self, node: str, end: float | None) -> dict[str, Any]:
        loops = waits = None
        cut: bool | None = None
        span = (self.healed_at or 0.0) - (self.measured_at or 0.0)
        if (
            self.before
            and self.after
            and self.before[0] == self.after[0]
            and span >= MIN_CUT_MEASURE
        ):
            loops = self.after[1] - self.before[1]
            waits = self.after[2] - self.before[2]
            cut = loops == 0
        return {
            "node": node,
            "policy": self.policy,
            "start": self.start,
            "end": end,
            "loopsWhileCut": loops,
            "waitsWhileCut": waits,
            "cut": cut,
        }


@dataclass
class _Kill:
    index: int
    ordinal: int
    uid: str
    boot: Any
    start: float
    deadline: float


def _say(text: str) -> None:
    print(f"kubectl-rloop chaos: {text}", file=sys.stderr, flush=True)


class ClusterChaos:
    """One chaos run against the loop `loop` (see the module's docstring)."""

    def __init__(
        self,
        api: ClusterApi,
        nodes: NodesApi,
        loop: LoopInfo,
        plan: Plan,
        out_dir: Path,
        *,
        run: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = POLL_SECONDS,
        ready_deadline: float = READY_DEADLINE,
        restart_deadline: float = RESTART_DEADLINE,
        say: Callable[[str], None] = _say,
    ) -> None:
        self.api = api
        self.nodes = nodes
        self.loop = loop
        self.plan = plan
        self.out_dir = out_dir
        self.run_id = run or secrets.token_hex(4)
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.poll_seconds = poll_seconds
        self.ready_deadline = ready_deadline
        self.restart_deadline = restart_deadline
        self.say = say
        self.names = [c.node_name(loop.name, i) for i in range(loop.replicas)]
        self.collector = _Collector(self.names, say)
        self.cleanup = Cleanup(api, self.run_id, loop.name)
        self.faults: list[verdict.Fault] = []
        self.cuts: dict[int, _Cut] = {}
        self.kills: dict[int, _Kill] = {}
        self.healed: dict[int, _Cut] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(16, 2 * max(1, loop.replicas)), thread_name_prefix="rloop-poll"
        )

    # --- nodes --------------------------------------------------------------
    def _parallel(self, work: Callable[[str], Any], names: Sequence[str]) -> list[Any]:
        futures = [self.pool.submit(work, n) for n in names]
        return [f.result() for f in futures]

    def _state(self, name: str) -> StateDocument | None:
        """The node's `/v1/state`; None when it cannot be read or is malformed
        (then the run says why, once per node and message)."""
        try:
            return decode_state_document(self.nodes.get_json(name, c.STATE_PATH))
        except NodeReadError:
            return None
        except BadStateDocument as e:
            if self.collector.errors.get(name) != str(e):
                self.collector.errors[name] = str(e)
                self.say(f"{name}: {c.STATE_PATH}: {e}")
            return None

    def _poll(self) -> None:
        self._parallel(lambda n: self.collector.poll_one(self.nodes, n), self.names)

    def _states(self) -> list[StateDocument | None]:
        return self._parallel(self._state, self.names)

    def _pods(self) -> dict[int, PodRef]:
        """The live (not deleting) pod of each ordinal."""
        out: dict[int, PodRef] = {}
        for pod in self.api.pods(self.loop.name):
            if not pod.deleting and pod.ordinal not in out:
                out[pod.ordinal] = pod
        return out

    def _settled(self, states: Sequence[StateDocument | None]) -> bool:
        summaries = [s.summary for s in states if s is not None]
        if len(summaries) < len(states):
            return False
        if self.loop.behavior == "token":
            return sum(1 for s in summaries if s.holding is True) == 1
        return len({s.generation for s in summaries}) == 1

    # --- faults -------------------------------------------------------------
    def _kill(self, ordinal: int) -> None:
        name = self.names[ordinal]
        pod = self._pods().get(ordinal)
        if pod is None:
            self.say(f"no pod {name} to delete; kill skipped")
            return
        self.collector.poll_one(self.nodes, name)  # what it decided, before it goes
        old = self._state(name)
        start = self.clock()
        self.api.delete_pod(pod.name, pod.uid)
        self.nodes.forget(pod.name)
        index = len(self.faults)
        self.faults.append(verdict.Fault("kill", start, start, (name,)))
        self.kills[index] = _Kill(
            index,
            ordinal,
            pod.uid,
            None if old is None else old.boot,
            start,
            self.monotonic() + self.restart_deadline,
        )
        self.say(f"deleted pod {name} (uid {pod.uid})")

    def _check_kills(self, pods: Mapping[int, PodRef]) -> None:
        for index, kill in list(self.kills.items()):
            name = self.names[kill.ordinal]
            pod = pods.get(kill.ordinal)
            back = False
            if pod is not None and pod.uid != kill.uid and pod.ready:
                state = self._state(name)
                back = state is not None and state.ready and state.boot != kill.boot
            if back or self.monotonic() > kill.deadline:
                if not back:
                    self.say(f"{name} did not answer again within {self.restart_deadline:g} s")
                self.faults[index] = verdict.Fault("kill", kill.start, self.clock(), (name,))
                del self.kills[index]

    def _partition(self, ordinal: int, seconds: float, at: float) -> None:
        name = self.names[ordinal]
        index = len(self.faults)
        policy = f"rloop-cut-{self.run_id}-{index}"
        body = partition_policy(self.loop.name, ordinal, self.run_id, policy)
        self.cleanup.created.append(policy)  # before the call: its answer may be lost
        self.api.create_policy(body)
        self.cleanup.labelled.append(name)
        self.api.set_partitioned(name, self.run_id)
        start = self.clock()
        others = tuple(n for n in self.names if n != name)
        self.faults.append(verdict.Fault("partition", start, start + seconds, (name,), others))
        self.cuts[index] = _Cut(index, ordinal, policy, start, at, at + seconds)
        self.say(
            f"partition of {name}: NetworkPolicy {policy} and label"
            f" {c.PARTITIONED_LABEL}={self.run_id} for {seconds:g} s"
        )

    def _counters(self, ordinal: int) -> tuple[int, int, int] | None:
        state = self._state(self.names[ordinal])
        if state is None:
            return None
        if state.boot is None:
            return None
        return state.boot, state.loops, state.waits

    def _heal(self, index: int) -> None:
        cut = self.cuts[index]
        cut.after = self._counters(cut.ordinal)
        cut.healed_at = self.monotonic()
        self.cleanup.unlabel(self.names[cut.ordinal])
        if self.cleanup.delete(cut.policy):
            f = self.faults[index]
            self.faults[index] = verdict.Fault(f.kind, f.start, self.clock(), f.nodes, f.other)
        del self.cuts[index]
        self.healed[index] = cut

    # --- the run ------------------------------------------------------------
    def _wait_ready(self) -> list[StateDocument | None]:
        deadline = self.monotonic() + self.ready_deadline
        told = False
        while True:
            pods = self._pods()
            states = self._states() if len(pods) == len(self.names) else []
            if states and all(s is not None and s.ready for s in states):
                return states
            if not told:
                self.say(f"waiting up to {self.ready_deadline:g} s for every node to be ready")
                told = True
            if self.monotonic() > deadline:
                missing = [n for i, n in enumerate(self.names) if i not in pods]
                why = f"pods missing: {', '.join(missing)}" if missing else "not every node ready"
                raise KubeError(f"the loop was not ready within {self.ready_deadline:g} s ({why})")
            self.sleep(self.poll_seconds)

    def run(self) -> dict[str, Any]:
        """The run; its verdict (with `partitions`, `cleanup`, `via`, `timeline`).
        Whatever ends it, the objects it created are deleted before it returns
        or raises."""
        try:
            return self._run()
        finally:
            with signals_held(self.say):
                self.cleanup.finish()
                self.pool.shutdown(wait=False, cancel_futures=True)
            if self.cleanup.left:
                self.say(
                    f"could not delete {', '.join(self.cleanup.left)}:"
                    f" kubectl delete networkpolicy -n {self.api.namespace}"
                    f" -l {run_selector(self.run_id)}"
                )

    def _run(self) -> dict[str, Any]:
        states = self._wait_ready()
        pods = self._pods()
        bounds = bounds_of(pods[0].env if 0 in pods else {}, len(self.names))
        started = self.clock()
        baseline: dict[str, tuple[int, str] | None] = {}
        for name, s in zip(self.names, states, strict=True):
            held = None if s is None else s.state
            if isinstance(held, Mapping) and isinstance(held.get("generation"), int):
                baseline[name] = (
                    int(held["generation"]),
                    history.digest(canonical(held.get("target"))),
                )
            else:
                baseline[name] = None
        self._poll()
        todo = list(enumerate(self.plan.faults))
        clock0 = self.monotonic()
        next_poll = 0.0

        def elapsed() -> float:
            return self.monotonic() - clock0

        while todo or self.kills or self.cuts or elapsed() < self.plan.duration:
            while todo and todo[0][1].at <= elapsed():
                _, fault = todo.pop(0)
                if fault.kind == "kill":
                    self._kill(fault.ordinal)
                else:
                    self._partition(fault.ordinal, fault.seconds, elapsed())
            for index, cut in list(self.cuts.items()):
                grace = min(CUT_GRACE, (cut.ends_at - cut.starts_at) / 3)
                if not cut.measured and elapsed() >= cut.starts_at + grace:
                    cut.before = self._counters(cut.ordinal)
                    cut.measured_at = self.monotonic()
                if elapsed() >= cut.ends_at:
                    self._heal(index)
            if self.kills:
                self._check_kills(self._pods())
            if self.monotonic() >= next_poll:
                self._poll()
                next_poll = self.monotonic() + self.poll_seconds
            self.sleep(min(self.poll_seconds, 0.1))
        faults_end = max([started, *(f.end for f in self.faults)]) + bounds.interval
        bound = bounds.token if self.loop.behavior == "token" else bounds.converge
        settle_until = self.monotonic() + max(0.0, faults_end - self.clock()) + bound
        calm = 0
        while self.monotonic() < settle_until and calm < 3:
            self._poll()
            calm = calm + 1 if self._settled(self._states()) else 0
            self.sleep(self.poll_seconds)
        self._poll()
        ended = self.clock()
        observation = verdict.Observation(
            behavior=self.loop.behavior,
            nodes=self.names,
            started=started,
            faults_end=faults_end,
            ended=ended,
            bounds=bounds,
            histories=self.collector.histories(),
            faults=self.faults,
            injections=[],
            baseline=baseline,
        )
        result = verdict.check(observation)
        result["scenario"] = self.plan.to_json()
        result["namespace"] = self.api.namespace
        result["loop"] = self.loop.name
        result["run"] = self.run_id
        result["via"] = self.nodes.via
        result["partitions"] = [
            cut.to_json(self.names[cut.ordinal], self.faults[i].end)
            for i, cut in sorted(self.healed.items())
        ]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        page = self.out_dir / "timeline.html"
        page.write_text(timeline.render(observation, result), encoding="utf-8")
        result["timeline"] = str(page)
        return result


def default_out_dir(loop: str, now: float) -> Path:
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"rloop-chaos-{loop}-{stamp}")
