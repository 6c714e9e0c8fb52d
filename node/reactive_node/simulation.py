"""An in-memory, discrete-event simulation of a loop, running the real behaviour code.

Used by the property tests (and usable by benchmarks); pure, no I/O.

Faults: message loss, duplication, delay (so reordering, and requests that
arrive after the initiator gave up), node crash-restarts (persisted state
survives; the responder's memory of (boot, seq) and pending requests do not),
and partitions. Everything is driven by one seeded random source, so a
hypothesis failure replays exactly.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from reactive_node.backoff import Backoff
from reactive_node.behaviors import Behavior, Context, Settings, State, peer_hint
from reactive_node.topology import PeerPicker, TopologyName


@dataclasses.dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0
    """Probability that a message is delayed past the round-trip timeout."""
    partition: frozenset[int] | None = None
    """Nodes cut off from the others (traffic inside each side still flows)."""


@dataclasses.dataclass
class SimNode:
    ordinal: int
    state: State
    picker: PeerPicker
    backoff: Backoff
    boot: int = 0
    seq: int = 0
    started_at: float = 0.0
    seen: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)
    pending: tuple[int, int, bool] | None = None
    """(seq, peer, hinted) of the round trip in flight."""
    history: list[State] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Acquire:
    at: float
    node: int
    epoch: tuple[int, int]


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
    ) -> None:
        self.behavior = behavior
        self.n = n
        self.rng = random.Random(seed)
        self.settings = settings or Settings(interval=1.0)
        self.timeout = timeout
        self.faults = Faults()
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._boots = itertools.count(1)
        self.acquires: list[Acquire] = []
        self.requests = 0
        self.stale_rejections = 0
        self.on_change: Callable[[SimNode, State, State], None] | None = None
        self.nodes = []
        for i in range(n):
            node = SimNode(
                ordinal=i,
                state={},
                picker=PeerPicker(topology, i, ring_skip=ring_skip, rng=self.rng),
                backoff=Backoff(self.settings.interval, max_backoff, self.rng),
                boot=next(self._boots),
            )
            node.state = behavior.initial(self._ctx(node))
            node.history.append(node.state)
            self.nodes.append(node)
            self._at(self.rng.uniform(0, self.settings.interval), self._acting(node, node.boot))

    # --- plumbing --------------------------------------------------------------
    def _ctx(self, node: SimNode, peer: int | None = None) -> Context:
        return Context(
            ordinal=node.ordinal,
            replicas=self.n,
            now=self.now,
            started_at=node.started_at,
            settings=self.settings,
            peer=peer,
        )

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._counter), action))

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            at, _, action = heapq.heappop(self._queue)
            self.now = at
            action()
        self.now = t

    def _persist(self, node: SimNode, new: State) -> None:
        old = node.state
        if new == old:
            return
        node.state = new
        node.history.append(new)
        before, after = self.behavior.summary(old), self.behavior.summary(new)
        acquired = after["holding"] and after["epoch"] is not None
        if acquired and (not before["holding"] or before["epoch"] != after["epoch"]):
            assert after["epoch"] is not None
            epoch = (after["epoch"][0], after["epoch"][1])
            self.acquires.append(Acquire(self.now, node.ordinal, epoch))
        if self.on_change is not None:
            self.on_change(node, old, new)

    def _send(self, src: int, dst: int, deliver: Callable[[], None]) -> None:
        """Put one message on the wire, subject to the current faults."""
        part = self.faults.partition
        if part is not None and ((src in part) != (dst in part)):
            return
        copies = 1 + (self.rng.random() < self.faults.duplicate)
        for _ in range(copies):
            if self.rng.random() < self.faults.loss:
                continue
            if self.rng.random() < self.faults.late:
                delay = self.rng.uniform(self.timeout, 1.5 * self.timeout)
            else:
                delay = self.rng.uniform(0.001, 0.6 * self.timeout)
            self._at(delay, deliver)

    # --- node behaviour ------------------------------------------------------------
    def _acting(self, node: SimNode, boot: int) -> Callable[[], None]:
        return lambda: self._act(node, boot)

    def _act(self, node: SimNode, boot: int) -> None:
        if node.boot != boot:
            return  # scheduled by an earlier life of the process
        peer = peer_hint(self.behavior, node.state, self._ctx(node))
        hinted = peer is not None
        if peer is None:
            peer = node.picker.pick(self.n)
        if peer is None:
            self._at(self.settings.interval, self._acting(node, boot))
            return
        self._persist(node, self.behavior.tick(node.state, self._ctx(node, peer)))
        node.seq += 1
        seq = node.seq
        node.pending = (seq, peer, hinted)
        request = (node.ordinal, node.boot, seq, dict(node.state))
        self.requests += 1
        self._send(node.ordinal, peer, lambda: self._serve(self.nodes[peer], request))
        self._at(self.timeout, lambda: self._timed_out(node, boot, seq))

    def _serve(self, node: SimNode, request: tuple[int, int, int, State]) -> None:
        sender, boot, seq, theirs = request
        newest = node.seen.get(sender)
        if newest is not None and (boot, seq) <= newest:
            self.stale_rejections += 1
            return  # 409: the initiator's timeout handles it like any failure
        node.seen[sender] = (boot, seq)
        self._persist(node, self.behavior.respond(node.state, theirs, self._ctx(node)))
        answer = dict(node.state)
        initiator = self.nodes[sender]
        self._send(node.ordinal, sender, lambda: self._answered(initiator, boot, seq, answer))

    def _answered(self, node: SimNode, boot: int, seq: int, theirs: State) -> None:
        if node.boot != boot or node.pending is None or node.pending[0] != seq:
            return  # the initiator gave up on this round trip (or restarted)
        _, peer, hinted = node.pending
        node.pending = None
        self._persist(node, self.behavior.react(node.state, theirs, self._ctx(node, peer)))
        if not hinted:
            node.picker.record(True)
        node.backoff.reset()
        self._at(self.settings.interval, self._acting(node, boot))

    def _timed_out(self, node: SimNode, boot: int, seq: int) -> None:
        if node.boot != boot or node.pending is None or node.pending[0] != seq:
            return
        hinted = node.pending[2]
        node.pending = None
        if not hinted:
            node.picker.record(False)
        self._at(node.backoff.next_delay(), self._acting(node, boot))

    # --- faults and operator -------------------------------------------------------
    def restart(self, ordinal: int) -> None:
        """Crash and restart a node: its persisted state survives, its memory does not."""
        node = self.nodes[ordinal]
        node.boot = next(self._boots)
        node.seq = 0
        node.seen = {}
        node.pending = None
        node.started_at = self.now
        node.backoff.reset()
        self._at(0.05, self._acting(node, node.boot))

    def inject(self, ordinal: int, theirs: State) -> None:
        """A round trip from outside (the operator) into node `ordinal`."""
        node = self.nodes[ordinal]
        self._persist(node, self.behavior.respond(node.state, theirs, self._ctx(node)))

    def states(self) -> list[State]:
        return [node.state for node in self.nodes]

    def summaries(self) -> list[dict[str, Any]]:
        return [dict(self.behavior.summary(node.state)) for node in self.nodes]
