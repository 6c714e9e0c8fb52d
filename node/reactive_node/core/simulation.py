"""An in-memory, discrete-event simulation of a loop, running the node's own core.

Used by the property tests (and usable by benchmarks); pure, no I/O. It keeps
no copy of a rule: every node is a `protocol.NodeCore`, the very object the
HTTP node (`runtime/node.py`) drives, and the simulation only carries out its effects
as the node's shell does: it persists a decision by keeping it, puts the
encoded bodies on a simulated network, hands back each `Outcome` (an answer,
an error answer, or a timeout), and re-checks the acting holder when asked.
The stale check, peer choice, protocol versions, validation, the behaviour's
transitions, the token lease, the regeneration quorum, the acquire/release
events, backoff and the wait accounting are all the core's.

Faults: message loss, duplication, delay (so reordering, and requests that
arrive after the initiator gave up), node crash-restarts (persisted state
survives; the responder's memory of (boot, seq), the lease and pending
requests do not), process pauses (a paused node does nothing; what is sent
to it waits; its clocks keep running, as SIGSTOP does), partitions, and
clock-rate drift (every node's clocks run at its own rate). Everything is
driven by one seeded random source, so a hypothesis failure replays exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable, Generator
from typing import Any, Final

from reactive_node.core import contract, history
from reactive_node.core.backoff import Backoff
from reactive_node.core.behaviors import Behavior, Settings, State
from reactive_node.core.codec import encode, make_request
from reactive_node.core.protocol import (
    Counted,
    Effect,
    NodeCore,
    Outcome,
    Persist,
    Refresh,
    Reply,
    Send,
    leased,
)
from reactive_node.core.topology import PeerPicker, TopologyName

LOOP = "sim"


WALL_START: Final = 1_780_000_000.0
"""The wall clock (time.time()) when a simulation starts."""


def node_name(ordinal: int) -> str:
    return contract.node_name(LOOP, ordinal)


@dataclasses.dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0
    """Probability that a message is delayed past the round-trip timeout."""
    partition: frozenset[int] | None = None
    """Nodes cut off from the others (traffic inside each side still flows)."""


@dataclasses.dataclass
class Pending:
    """An initiator's round trip in flight: the core waits for its `Outcome`."""

    seq: int
    steps: Generator[Effect, Any, bool]


@dataclasses.dataclass
class SimNode:
    ordinal: int
    core: NodeCore
    rate: float = 1.0
    """How fast this node's monotonic clock runs against real (simulated) time."""
    offset: float = 0.0
    pending: Pending | None = None
    paused_until: float = 0.0
    stopping: bool = False
    """SIGTERM: it makes its last round trip (`Simulation.stop`) and no other."""
    history: list[State] = dataclasses.field(default_factory=list)

    @property
    def state(self) -> State:
        assert self.core.state is not None
        return self.core.state

    @property
    def boot(self) -> int:
        return self.core.boot


@dataclasses.dataclass(frozen=True)
class Acquire:
    at: float
    node: int
    epoch: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Regeneration:
    at: float
    node: int
    epoch: tuple[int, int]
    live_holder: int | None
    """A running holder on a side of the network that held a majority, acting
    since before the regenerating node started to collect its confirmations."""


class Simulation:
    """N nodes running `behavior` over a faulty network."""

    def __init__(
        self,
        behavior: Behavior,
        n: int,
        topology: TopologyName,
        *,
        seed: int,
        settings: Settings | None = None,
        timeout: float = 0.5,
        max_backoff: float = 4.0,
        ring_skip: int = 2,
        drift: float = 0.0,
        webhook_delay: float = 0.0,
    ) -> None:
        self.behavior = behavior
        self._leased = leased(behavior)
        self.n = n
        self.rng = random.Random(seed)
        self._settings = settings or Settings(interval=1.0)
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.topology = topology
        self.ring_skip = ring_skip
        self.faults = Faults()
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._boots = itertools.count(1)
        self._injections = itertools.count(1)
        self.webhook_delay = webhook_delay
        """Longest time a token webhook call takes (each takes a random part of
        it): the holder hands the token on only once its acquire call returned."""
        self.acquires: list[Acquire] = []
        self.fence: list[Acquire] = []
        """Acquisitions as a webhook receiver hears them (`at`: when the call arrives)."""
        self.releases: list[Acquire] = []
        self.regenerations: list[Regeneration] = []
        self.acting_since: dict[int, float] = {}
        self.overlaps: list[tuple[float, list[int]]] = []
        """Instants at which more than one node acted as the token holder."""
        self.requests = 0
        self.on_change: Callable[[SimNode, State, State], None] | None = None
        self.nodes: list[SimNode] = []
        for i in range(n):
            rate = 1.0 + self.rng.uniform(-drift, drift)
            offset = self.rng.uniform(0, 1000.0)
            node = SimNode(ordinal=i, core=self._core(i, rate, offset), rate=rate, offset=offset)
            node.core.set_state(behavior.initial(node.core.context()))
            node.core.started()
            node.history.append(node.state)
            self.nodes.append(node)
            self._later(node, self.rng.uniform(0, self._settings.interval), self._acting(node))

    # --- plumbing --------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._settings = value
        for node in self.nodes:
            node.core.settings = value
            node.core.lease.settings = value

    def _core(self, ordinal: int, rate: float, offset: float) -> NodeCore:
        """A node process's core: its clocks run at `rate` from `offset`."""

        def clock() -> float:
            return offset + rate * self.now

        def wall() -> float:
            return self._wall(offset)

        return NodeCore(
            self.behavior,
            self._settings,
            loop=LOOP,
            name=node_name(ordinal),
            ordinal=ordinal,
            replicas=self.n,
            boot=next(self._boots),
            picker=PeerPicker(self.topology, ordinal, ring_skip=self.ring_skip, rng=self.rng),
            backoff=Backoff(self._settings.interval, self.max_backoff, self.rng),
            clock=wall,
            monotonic=clock,
            peer_name=lambda p: node_name(p) if 0 <= p < self.n else None,
            tell_timeout=self.webhook_delay,
        )

    def _wall(self, offset: float) -> float:
        """Wall clocks kept by NTP: rate 1, within +-50 ms of each other (the
        monotonic clocks drift; the lease and the guard are on those)."""
        return WALL_START + (offset - 500.0) / 10_000 + self.now

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._counter), action))

    def _later(self, node: SimNode, local_delay: float, action: Callable[[], None]) -> None:
        """Run `action` after `local_delay` seconds of the node's clock, when it runs."""
        self._at(local_delay / node.rate, self._on(node, node.boot, action))

    def _on(self, node: SimNode, boot: int, action: Callable[[], None]) -> Callable[[], None]:
        """`action` for this life of the node, deferred while the node is paused."""

        def run() -> None:
            if node.boot != boot:
                return  # scheduled by an earlier life of the process
            if self.now < node.paused_until:
                self._at(node.paused_until - self.now, run)
                return
            action()

        return run

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            at, _, action = heapq.heappop(self._queue)
            self.now = at
            action()
            self._check()
        self.now = t

    def acting(self) -> list[int]:
        """The nodes that act as the token holder now (by their own clocks)."""
        return [node.ordinal for node in self.nodes if node.core.acting_now() is not None]

    def _check(self) -> None:
        if self._leased is None:
            return
        acting = self.acting()
        for ordinal in list(self.acting_since):
            if ordinal not in acting:
                del self.acting_since[ordinal]
        for ordinal in acting:
            self.acting_since.setdefault(ordinal, self.now)
        if len(acting) > 1:
            self.overlaps.append((self.now, acting))

    # --- the shell: carrying out the core's effects ----------------------------------
    def _drive(self, node: SimNode, steps: Generator[Effect, Any, Any], value: Any = None) -> Any:
        """Run `steps` until it returns (its value) or sends a body (None: the
        body is on the wire, and `pending` waits for its outcome)."""
        error: Exception | None = None
        while True:
            try:
                effect = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            value, error = None, None
            if isinstance(effect, Persist):
                try:
                    value = self._persist(node, effect.decide(node.state))
                except Exception as e:  # a behaviour's own error: the core decides
                    error = e
            elif isinstance(effect, Refresh):
                self._refresh(node)
            elif isinstance(effect, Counted):
                pass  # the core's tally counted it
            else:
                assert isinstance(effect, Send)
                self._request(node, effect, steps)
                return None

    def _persist(self, node: SimNode, new: State) -> State:
        old = node.state
        if new == old:
            return old
        node.core.set_state(new)
        node.history.append(new)
        self._note_regeneration(node, old, new)
        self._refresh(node)
        if self.on_change is not None:
            self.on_change(node, old, new)
        return new

    def _refresh(self, node: SimNode) -> None:
        for event, epoch in node.core.refresh():
            record = Acquire(self.now, node.ordinal, (epoch[0], epoch[1]))
            (self.acquires if event == "acquire" else self.releases).append(record)
            if event == "acquire":
                self._tell(node, record)

    def _tell(self, node: SimNode, record: Acquire) -> None:
        """The webhook call about an acquisition: it arrives after a random delay,
        and the node's lease hears when it returned."""
        delay = self.rng.uniform(0, self.webhook_delay) if self.webhook_delay > 0 else 0.0
        heard = dataclasses.replace(record, at=self.now + delay)
        if delay == 0.0:
            self.fence.append(heard)
            return
        lease = node.core.lease
        lease.tell(record.epoch)

        def returned() -> None:
            self.fence.append(heard)
            lease.told(record.epoch)

        self._at(delay, returned)

    def fence_epochs(self) -> list[tuple[int, int]]:
        """The epochs of the acquisitions a webhook receiver heard, in arrival order."""
        return [a.epoch for a in sorted(self.fence, key=lambda a: a.at)]

    def _note_regeneration(self, node: SimNode, old: State, new: State) -> None:
        b = self.behavior
        found = history.state_decisions(old, new, b.summary(old), b.summary(new))
        for kind, details in found:
            if kind == "regenerate":
                epoch = (int(details["epoch"][0]), int(details["epoch"][1]))
                live = self._live_holder(exclude=node.ordinal)
                self.regenerations.append(Regeneration(self.now, node.ordinal, epoch, live))

    def _side(self, ordinal: int) -> set[int]:
        part = self.faults.partition
        if part is None:
            return set(range(self.n))
        inside = ordinal in part
        return {o for o in range(self.n) if (o in part) == inside}

    def _live_holder(self, exclude: int) -> int | None:
        window = self.nodes[exclude].core.lease.confirm_window(self.n)
        for ordinal in self.acting():
            node = self.nodes[ordinal]
            if ordinal == exclude or self.now < node.paused_until:
                continue
            if self.acting_since.get(ordinal, self.now) > self.now - window:
                continue  # two regenerations raced (docs/node.md, known limits)
            if 2 * len(self._side(ordinal)) > self.n:
                return ordinal
        return None

    def _send(self, src: int, dst: int, deliver: Callable[[], None]) -> None:
        """Put one message on the wire, subject to the current faults."""
        part = self.faults.partition
        if part is not None and ((src in part) != (dst in part)):
            return
        copies = 1 + (self.rng.random() < self.faults.duplicate)
        target = self.nodes[dst]
        for _ in range(copies):
            if self.rng.random() < self.faults.loss:
                continue
            if self.rng.random() < self.faults.late:
                delay = self.rng.uniform(self.timeout, 1.5 * self.timeout)
            else:
                # Both ways within the timeout, whatever the drift of the clocks.
                delay = self.rng.uniform(0.001, 0.4 * self.timeout)
            self._at(delay, self._on(target, target.boot, deliver))

    # --- the loop ---------------------------------------------------------------------
    def _acting(self, node: SimNode) -> Callable[[], None]:
        return lambda: self._act(node)

    def _act(self, node: SimNode) -> None:
        if node.stopping:
            return
        steps = node.core.initiate()
        self._finish(node, self._drive(node, steps))

    def _finish(self, node: SimNode, ok: bool | None) -> None:
        """After the core's round trip returned `ok` (None: still in flight)."""
        if ok is not None:
            self._later(node, node.core.next_delay(ok), self._acting(node))

    def _request(self, node: SimNode, send: Send, steps: Generator[Effect, Any, bool]) -> None:
        request = send.request
        node.pending = Pending(request.seq, steps)
        self.requests += 1
        boot, seq, peer = node.boot, request.seq, self.nodes[request.peer]
        header = node.core.headers.get(contract.PROTOCOL_HEADER)

        def serve() -> None:
            reply = self._serve(peer, request.body, node.ordinal, header)
            raw = reply.raw if reply.raw is not None else encode(reply.body)
            outcome = Outcome(status=reply.status, body=raw)
            self._send(peer.ordinal, node.ordinal, lambda: self._outcome(node, boot, seq, outcome))

        self._send(node.ordinal, peer.ordinal, serve)
        self._later(
            node, self.timeout, lambda: self._outcome(node, boot, seq, Outcome(failure="timeout"))
        )

    def _serve(self, node: SimNode, body: bytes, sender: int, header: str | None) -> Reply:
        reply: Reply = self._drive(node, node.core.serve(body, address=str(sender), header=header))
        return reply

    def _outcome(self, node: SimNode, boot: int, seq: int, outcome: Outcome) -> None:
        """The outcome of round trip `seq` reaches the initiator (if it still waits)."""
        pending = node.pending
        if node.boot != boot or pending is None or pending.seq != seq:
            return  # the initiator gave up on this round trip (or restarted)
        node.pending = None
        self._finish(node, self._drive(node, pending.steps, outcome))

    # --- faults and operator -------------------------------------------------------
    def restart(self, ordinal: int, *, wipe: bool = False) -> None:
        """Crash and restart a node: its persisted state survives, its memory does
        not. `wipe`: its state is lost too (a deleted pod, recreated)."""
        node = self.nodes[ordinal]
        stored = node.state
        node.core = self._core(ordinal, node.rate, node.offset)
        if wipe:
            stored = self.behavior.initial(node.core.context())
        node.core.set_state(stored)
        node.core.started()
        node.pending = None
        node.paused_until = 0.0
        node.stopping = False
        self._later(node, 0.05, self._acting(node))

    def stop(self, ordinal: int, *, grace: float, wipe: bool = True) -> None:
        """SIGTERM, then a new process `grace` seconds later (without the stored
        state if `wipe`: a deleted pod, recreated). The stopping node abandons
        its round trip in flight and makes its last one (`NodeCore.leave`: an
        acting holder hands the token on) if it runs; a paused one is killed."""
        node = self.nodes[ordinal]
        node.pending = None
        node.stopping = True
        if self.now >= node.paused_until:
            self._drive(node, node.core.leave())
        self._at(grace, lambda: self.restart(ordinal, wipe=wipe))

    def pause(self, ordinal: int, seconds: float) -> None:
        """Stop a node's process for `seconds` (SIGSTOP, then SIGCONT)."""
        node = self.nodes[ordinal]
        node.paused_until = max(node.paused_until, self.now + seconds)

    def inject(self, ordinal: int, theirs: State) -> None:
        """A round trip from outside (the operator) into node `ordinal`."""
        request = make_request(LOOP, contract.OPERATOR_SENDER, 1, next(self._injections), theirs)
        reply = self._serve(self.nodes[ordinal], encode(request), -1, None)
        if reply.status != 200:
            raise ValueError(f"injection refused: {reply.body}")

    def states(self) -> list[State]:
        return [node.state for node in self.nodes]

    def summaries(self) -> list[dict[str, Any]]:
        return [dict(self.behavior.summary(node.state)) for node in self.nodes]
