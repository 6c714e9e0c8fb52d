"""The protocol core: every rule of a round trip, pure and I/O-free.

The node's async shell (`runtime/node.py`: HTTP, store, metrics) and the simulation
(`simulation.py`) both drive `NodeCore`, so the properties test what runs:

* `NodeCore.initiate` — one round trip as initiator: choose the peer, tick,
  build the body in the peer's protocol version, fall back to version 1 when
  a rolled-back peer refuses `v`, validate the answer, react, and count a
  loop or a wait by its reason (`judge`).
* `NodeCore.serve` — one round trip as responder: decode and check the body,
  the stale check by `(boot, seq)` (`SeenTable`), validate, respond (or take
  the operator's injection), what must be persisted before answering, and
  the answer in the version the sender reads.
* `Lease` — what a node remembers between round trips for a leased behaviour
  (the token), on its own monotonic clock: when it last had news of a token,
  when it last vouched for a chain, which peers vouched for its holding
  (the lease) and which confirmed the token lost (the regeneration quorum).
  It decides whether the node *acts* as the holder now.
* `choose_peer`, `transitions` — the peer of the next round trip, and the
  acquire/release events between two acting epochs.

Both generators are sans-I/O: they yield effects (`Persist` a decision,
`Send` a body, `Refresh` the acting holder, `Counted` a loop or a wait) that
the shell carries out and answers (`Persist`: the state now persisted, or
`NotPersisted` thrown in; `Send`: the `Outcome`). Nothing here reads a clock
or a socket except through the callables it was given.

docs/node.md ("The token is CP", "Protocol version") states the rules; the
simulation's properties check them under loss, duplication, delay, restarts,
pauses, partitions and clock-rate drift.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Generator
from typing import Any, Final, Protocol, TypeAlias, cast, runtime_checkable

from . import contract, history
from .backoff import Backoff
from .behaviors import (
    Behavior,
    Context,
    Injection,
    Settings,
    State,
    TargetTaking,
    as_injection,
    peer_hint,
    takes_target,
)
from .behaviors.base import versioned, wire_state
from .codec import (
    PROTOCOL_VERSION,
    BadBody,
    RoundTripRequest,
    RoundTripResponse,
    UnsupportedVersion,
    decode_request,
    decode_response,
    encode,
)
from .contract import MAX_STATE_INT
from .topology import PeerPicker

log = logging.getLogger(__name__)

#: Senders a responder remembers the newest (boot, seq) of; least recent forgotten first.
MAX_SENDERS: Final = 1024
#: Peers whose last outcome a node shows in `/v1/state` (`edges`), newest kept.
MAX_EDGES: Final = 8
#: Longest error detail in an error answer.
ERROR_DETAIL_CHARS: Final = 300

Epoch = tuple[int, int]
SenderKey = tuple[str, str]


class SeenTable:
    """The newest `(boot, seq)` answered per sender, in memory, bounded."""

    def __init__(self, limit: int = MAX_SENDERS) -> None:
        self.limit = limit
        self._seen: collections.OrderedDict[SenderKey, tuple[int, int]] = collections.OrderedDict()

    def stale(self, key: SenderKey, boot: int, seq: int) -> tuple[int, int] | None:
        """The newest pair seen from `key` if `(boot, seq)` is not newer, else None."""
        newest = self._seen.get(key)
        if newest is not None and (boot, seq) <= newest:
            return newest
        return None

    def advance(self, key: SenderKey, boot: int, seq: int) -> None:
        """Record an answered round trip (only those advance the entry)."""
        self._seen[key] = (boot, seq)
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


@runtime_checkable
class Leased(Protocol):
    """What a behaviour with a holder lease tells the core (the token does)."""

    leased: bool

    def holder_epoch(self, state: State) -> Epoch | None: ...
    def may_act(self, state: State) -> bool: ...
    def vouches(self, new: State, theirs: State) -> bool: ...
    def confirms_loss(self, answer: State) -> bool: ...
    def gathering(self, state: State) -> str | None: ...
    def epoch(self, state: State) -> Epoch | None: ...


def leased(behavior: Behavior) -> Leased | None:
    """The behaviour as `Leased` if it asks for a lease, else None."""
    if getattr(behavior, "leased", False) and isinstance(behavior, Leased):
        return behavior
    return None


def majority_peers(replicas: int) -> int:
    """Peers that, with the node itself, make a strict majority of `replicas`."""
    return replicas // 2


class Lease:
    """A node's memory of the token rules between round trips (lost on restart).

    Times are on the node's monotonic clock. A restart is news: a node that
    just started assumes it vouched for its chain and had news at its start.
    """

    def __init__(
        self,
        behavior: Behavior,
        settings: Settings,
        ordinal: int,
        now: float,
        *,
        tell_timeout: float = contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        self.behavior = leased(behavior)
        self.settings = settings
        self.ordinal = ordinal
        self.news_at = now
        """Last news of any token: an epoch learned, a holder vouched for, own holding."""
        self.vouched_at = now
        """Last time this node vouched for its `acked` chain (own holding included)."""
        self.vouched_for: int | None = None
        """The ordinal of the holder it last vouched for (its own, for its own
        holding); None after a restart, which keeps the whole guard."""
        self.acks: dict[int, float] = {}
        """Peer -> when this node sent the round trip whose answer vouched for its epoch."""
        self.confirms: dict[int, tuple[float, Epoch | None]] = {}
        """Peer -> (when its answer confirmed the loss, the epoch it carried)."""
        self.declined: dict[int, float] = {}
        """Peer -> when it last answered without the ack or confirmation asked for."""
        self.lower_since: float | None = None
        """Since when this node has had confirmations from a majority, one of them
        from a lower ordinal (None: it has not, now)."""
        self.unreachable: dict[int, float] = {}
        """Peer -> when a round trip to it last failed (no usable answer)."""
        self.acted_at = now
        """Last time this node acted as the holder, or acquired an epoch."""
        self.burnt: Epoch | None = None
        """An epoch this node stopped acting on while holding it: never acts on it again."""
        self.acting: Epoch | None = None
        """The epoch this node last reported acting on (events fired), or None."""
        self.settled_at = now + tell_timeout
        """Before this it acts on nothing: a listener call of its previous life
        (a process killed mid-call) has arrived or timed out by then."""
        self.telling: set[Epoch] = set()
        """Epochs whose `acquire` the shell's listener is still telling (a token
        webhook call in flight): the holder hands such an epoch on only once the
        call returned, so a fence hears acquisitions in epoch order."""

    @property
    def enabled(self) -> bool:
        return self.behavior is not None

    # --- what happened -----------------------------------------------------------
    def started(self, state: State) -> None:
        """A process starts with a stored state: a held epoch may have been acted
        on before the restart, so it is burnt (the holder renews before acting)."""
        if self.behavior is not None and state.get("holding"):
            self.burnt = self.behavior.epoch(state)

    def changed(self, old: State | None, new: State, now: float) -> None:
        """The node's state changed from `old` to `new` (persisted)."""
        b = self.behavior
        if b is None:
            return
        if old is not None and b.holder_epoch(old) is not None:
            self.vouched_at = now  # its own holding lasted until now
            if not new.get("lost"):
                self.news_at = now  # (a holder that gave the token up had none)
        if b.holder_epoch(new) is not None:
            self.vouched_at = self.news_at = now
            self.vouched_for = self.ordinal
        elif self.vouched_for == self.ordinal and not b.may_act(new):
            self._free()  # it stopped holding what it vouched for (its own holding)
        # A holder renewing its epoch keeps its `since`; an acquisition sets it.
        renewed = (
            old is not None
            and bool(old.get("holding"))
            and bool(new.get("holding"))
            and old.get("since") == new.get("since")
        )
        acquired = old is None or not old.get("holding") or b.epoch(old) != b.epoch(new)
        if new.get("holding") and not renewed and acquired:
            self.acted_at = now  # acquired: it has a loss timeout to start acting
            # Every acquisition (an offer taken, a regeneration) is burnt: the
            # node acts only on its renewal, whose term it takes from the wall
            # clock when a majority vouched (`Token._renewed`). So an epoch
            # offered again to a node that forgot it took it is never told
            # twice, and a fence hears epochs in the order holders began to act,
            # even across chains that the nodes which knew of them forgot.
            self.burnt = b.epoch(new)
        if old is None or (b.epoch(old) != b.epoch(new) and not renewed):
            if not new.get("lost"):
                self.news_at = now
            self.acks.clear()
        if new.get("lost") and old is not None and not old.get("lost"):
            # Lost on a peer's word (the holder of its epoch gave it up, or the
            # newer epoch it learned is lost): as if the loss timeout had passed.
            self.news_at = min(self.news_at, now - self.settings.token_loss_timeout)
        if b.gathering(new) != "confirms":
            self.confirms.clear()
            self.lower_since = None

    def served(self, theirs: State, new: State, now: float) -> None:
        """This node answered a round trip from `theirs` with `new` (persisted)."""
        b = self.behavior
        if b is not None and b.vouches(new, theirs):
            self.vouched_at = self.news_at = now
            epoch = b.epoch(theirs)
            self.vouched_for = None if epoch is None else epoch[1]

    def heard(self, peer: int | None, state: State, sent_at: float | None = None) -> None:
        """`peer` showed `state` in a round trip: its request (`sent_at` None; the
        stale check admits only requests sent after the one this node last
        vouched in), or its answer to a request this node sent at `sent_at`.

        The guard keeps a node from vouching for another chain while the holder
        it last vouched for may still act on that vouch. Once that holder shows,
        in a message made after the vouch, that it no longer holds an epoch it
        may act on (released, gave it up, or offered it on), it never acts on
        that vouch again (its acks are cleared when it next acquires): the node
        is free at once, not a guard later (docs/node.md, "After a heal")."""
        b = self.behavior
        if b is None or peer is None or peer == self.ordinal or peer != self.vouched_for:
            return
        if sent_at is not None and sent_at <= self.vouched_at:
            return  # an answer to a request sent before the vouch
        if not b.may_act(state):
            self._free()

    def _free(self) -> None:
        self.vouched_at = -math.inf
        self.vouched_for = None

    def answered(
        self,
        peer: int,
        sent_at: float,
        sent: State,
        answer: State,
        now: float,
        *,
        vouchable: bool = True,
    ) -> None:
        """A round trip this node sent at `sent_at` with `sent` got `answer`.

        `vouchable`: the peer saw `sent` whole. A body cut down for a version 1
        peer (`wire_state`) is no request for a vouch, so its answer is none
        (nor a refusal): the peer did not answer this holder's full state."""
        b = self.behavior
        if b is None:
            return
        self.unreachable.pop(peer, None)
        what = b.gathering(sent)
        if not vouchable:
            pass
        elif b.holder_epoch(sent) is not None and b.vouches(answer, sent):
            self.acks[peer] = sent_at
            if what == "acks":
                self.declined.pop(peer, None)
        elif what == "acks":
            self.declined[peer] = now
        if b.confirms_loss(answer):
            self.confirms[peer] = (now, b.epoch(answer))
            if what == "confirms":
                self.declined.pop(peer, None)
        else:
            self.confirms.pop(peer, None)
            if what == "confirms":
                self.declined[peer] = now

    def tell(self, epoch: Epoch) -> None:
        """The shell's listener started telling the acquisition of `epoch`."""
        self.telling.add(epoch)

    def told(self, epoch: Epoch) -> None:
        """The listener's call about `epoch` returned (answered, failed or timed out)."""
        self.telling.discard(epoch)

    def failed(self, peer: int, now: float) -> None:
        """A round trip to `peer` got no usable answer (a wait): while it gathers
        a majority, this node asks other peers first."""
        if self.behavior is not None:
            self.unreachable[peer] = now

    # --- what it knows now ---------------------------------------------------------
    def _vouching(self, state: State) -> bool:
        return self.behavior is not None and self.behavior.holder_epoch(state) is not None

    def quiet(self, state: State, now: float) -> float:
        """Seconds without news of a token; for a holder, since it last acted."""
        if self._vouching(state):
            return 0.0 if self.acting is not None else max(0.0, now - self.acted_at)
        return max(0.0, now - self.news_at)

    def guard_quiet(self, state: State, now: float) -> float:
        return 0.0 if self._vouching(state) else max(0.0, now - self.vouched_at)

    def _fresh_acks(self, now: float, replicas: int) -> list[float]:
        """Send times of the acks still inside the lease, newest first."""
        lease = self.settings.token_lease
        return sorted(
            (
                at
                for peer, at in self.acks.items()
                if peer != self.ordinal and peer < replicas and now - at < lease
            ),
            reverse=True,
        )

    def expires(self, state: State, now: float, replicas: int) -> float | None:
        """When the lease of `state` ends (on the monotonic clock): -inf if it is not
        fresh, +inf if it never ends (a loop of one), else the time."""
        b = self.behavior
        if b is None:
            return None
        epoch = b.holder_epoch(state)
        if epoch is None or epoch == self.burnt:
            return -math.inf
        return self._lease_end(now, replicas)

    def _lease_end(self, now: float, replicas: int) -> float:
        """When the lease the fresh acks make ends: -inf if they are too few."""
        need = majority_peers(replicas)
        if need == 0:
            return math.inf
        acks = self._fresh_acks(now, replicas)
        if len(acks) < need:
            return -math.inf
        return acks[need - 1] + self.settings.token_lease

    def acting_epoch(self, state: State, now: float, replicas: int) -> Epoch | None:
        """The epoch this node acts on now (holding, vouched for by a majority
        within the lease, not burnt), or None."""
        b = self.behavior
        if b is None:
            return None
        end = self.expires(state, now, replicas)
        if end is None or end <= now:
            return None
        return b.holder_epoch(state)

    def refresh(self, state: State, now: float, replicas: int) -> list[tuple[str, list[int]]]:
        """Re-check the lease now; the acquire/release events since the last check.

        Call it right before acting on the answer (the node does before every
        listener call): a process paused past its lease finds it lapsed here."""
        if self.behavior is None:
            return []
        current = self.acting_epoch(state, now, replicas)
        before = self.acting
        still_held = state.get("holding") and self.behavior.epoch(state) == before
        if before is not None and current != before and still_held:
            self.burnt = before  # stopped acting on an epoch it still holds
        self.acting = current
        if current is not None:
            self.acted_at = now
        return transitions(before, current)

    def confirm_window(self, replicas: int) -> float:
        """How long a peer's confirmation of the loss counts: a lease, or the
        time it takes to ask a majority one by one if that is longer."""
        return max(
            self.settings.token_lease, (majority_peers(replicas) + 1) * self.settings.interval
        )

    def _confirmations(self, now: float, replicas: int) -> tuple[int, int, Epoch | None]:
        """(fresh confirmations, how many of them from lower ordinals, newest epoch)."""
        window = self.confirm_window(replicas)
        fresh = {
            peer: epoch
            for peer, (at, epoch) in self.confirms.items()
            if peer != self.ordinal and peer < replicas and now - at < window
        }
        newest = max((e for e in fresh.values() if e is not None), default=None)
        below = sum(1 for peer in fresh if peer < self.ordinal)
        return len(fresh), below, newest

    def context(self, ctx: Context, state: State, now: float) -> Context:
        """`ctx` completed with what the core knows (a new Context)."""
        if self.behavior is None:
            return ctx
        confirmed, below, newest = self._confirmations(now, ctx.replicas)
        if below == 0 or 2 * (1 + confirmed) <= ctx.replicas:
            self.lower_since = None
        elif self.lower_since is None:
            self.lower_since = now
        acting = self.acting_epoch(state, now, ctx.replicas)
        epoch = self.behavior.epoch(state)
        return Context(
            ordinal=ctx.ordinal,
            replicas=ctx.replicas,
            now=ctx.now,
            started_at=ctx.started_at,
            settings=ctx.settings,
            peer=ctx.peer,
            quiet=self.quiet(state, now),
            guard_quiet=self.guard_quiet(state, now),
            acting=acting is not None,
            told=acting not in self.telling,
            # Renewed once the listener told its last acquisition (and, after a
            # start, once any call of the previous life is over): a fence hears
            # one node's epochs in order too.
            renew=(
                epoch is not None
                and epoch == self.burnt
                and self.behavior.holder_epoch(state) == epoch
                and self._lease_end(now, ctx.replicas) > now
                and not self.telling
                and now >= self.settled_at
            ),
            confirmed=confirmed,
            confirmed_below=below,
            below_quiet=0.0 if self.lower_since is None else max(0.0, now - self.lower_since),
            confirmed_epoch=newest,
            lower_down=sum(
                1
                for peer, at in self.unreachable.items()
                if peer < self.ordinal and now - at < self.settings.token_loss_timeout
            ),
        )

    def wanted_peer(
        self, state: State, now: float, replicas: int, preferred: int | None
    ) -> int | None:
        """A peer this node should round-trip to for its lease or its regeneration
        quorum when the topology's pick (`preferred`) does not help, else None."""
        b = self.behavior
        if b is None:
            return None
        what = b.gathering(state)
        need = majority_peers(replicas)
        if what is None or need == 0:
            return None
        horizon = now + 2 * self.settings.interval  # the next round trip is sent by then
        if what == "acks":
            window = self.settings.token_lease
            times = dict(self.acks)
        else:
            window = self.confirm_window(replicas)
            times = {p: at for p, (at, _e) in self.confirms.items()}
        fresh = {p for p, at in times.items() if p < replicas and horizon - at < window}
        fresh.discard(self.ordinal)
        if len(fresh) >= need:
            return None

        def last_no(p: int) -> float:
            """When `p` last failed to help: declined, or no usable answer."""
            return max(self.declined.get(p, -math.inf), self.unreachable.get(p, -math.inf))

        def declined(p: int) -> bool:
            return now - last_no(p) < window

        if preferred is not None and preferred not in fresh and not declined(preferred):
            return None  # the topology's pick helps
        others = [p for p in range(replicas) if p != self.ordinal and p not in fresh]
        if not others:
            return None
        return min(
            others,
            key=lambda p: (
                last_no(p),
                times.get(p, -math.inf),
                (p - self.ordinal) % replicas,
            ),
        )


def choose_peer(
    behavior: Behavior,
    state: State,
    ctx: Context,
    picker: PeerPicker,
    lease: Lease,
    now: float,
    *,
    leaving: bool = False,
) -> tuple[int | None, bool, bool]:
    """(peer, hinted, topological) for the next round trip.

    `hinted`: the topology's picker is not told the outcome. `topological`:
    the peer is the behaviour's or the topology's choice (a token offer may go
    there), not one the lease merely needs. `leaving`: the last round trip of a
    stopping node goes to the peer that vouched most recently (it is up, and
    an offer is never re-targeted), else to the topology's pick."""
    hint = peer_hint(behavior, state, ctx)
    if hint is not None:
        return hint, True, True
    peer = picker.pick(ctx.replicas)
    if leaving:
        answered = [p for p in lease.acks if p < ctx.replicas and p not in lease.unreachable]
        return max(answered, key=lambda p: lease.acks[p], default=peer), True, True
    wanted = lease.wanted_peer(state, now, ctx.replicas, peer)
    if wanted is not None and wanted != peer:
        return wanted, True, False
    return peer, False, True


def transitions(before: Epoch | None, after: Epoch | None) -> list[tuple[str, list[int]]]:
    """The token events between two acting epochs: release the old, acquire the new."""
    if before == after:
        return []
    events: list[tuple[str, list[int]]] = []
    if before is not None:
        events.append(("release", list(before)))
    if after is not None:
        events.append(("acquire", list(after)))
    return events


# --- the round trip -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What came back from a peer: a status and the raw body, or a wait reason."""

    status: int | None = None
    body: bytes = b""
    failure: str | None = None
    """A wait reason from `contract.WAIT_REASONS` when no HTTP answer arrived."""


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the responder answers: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]
    raw: bytes | None = None
    """The encoded body when it must be sent byte for byte (a 200 answer, whose
    digest the decision history keeps); else `body` is encoded."""


def error_reply(status: int, error: str, detail: str) -> Reply:
    return Reply(status, {"error": error, "detail": detail[:ERROR_DETAIL_CHARS]})


def answer_version(request_version: int, header: str | None) -> int:
    """The protocol version of the answer to a request of `request_version` whose
    `contract.PROTOCOL_HEADER` is `header`: the request's own if above 1; for a
    version 1 body, the highest version both sides speak, as the header says
    (a version 1 node sends none and gets a version 1 answer)."""
    if request_version > 1:
        return request_version
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        return 1
    return max(1, min(int(text), PROTOCOL_VERSION))


def version_refused(result: Outcome) -> bool:
    """Whether a 400 answer refused a body for its protocol version: a newer
    node's `unsupported_version`, or a version 1 node's unknown field `v`."""
    if result.status != 400:
        return False
    return b"unsupported_version" in result.body or b"unknown field `v`" in result.body


def judge(result: Outcome) -> str | None:
    """The wait reason for an outcome, or None if it is a usable 200."""
    if result.failure is not None:
        return result.failure
    status = result.status or 0
    if status == 200:
        return None
    if status == 409:
        return "stale"
    if status == 401:
        return "unauthorized"
    if status >= 500:
        return "server_error"
    return "rejected"


# Effects the generators yield; the shell carries each out and answers it.


@dataclasses.dataclass(frozen=True)
class Persist:
    """Decide the next state from the current one and persist it if it changed.
    Answered with the state then held; `NotPersisted` thrown in if the store
    failed (anything `decide` raised is thrown in as it is)."""

    decide: Callable[[State], State]
    justify: Callable[[State], history.RoundTrip | None] | None = None
    """The round trip the decision rests on (default: the newest one)."""


@dataclasses.dataclass(frozen=True)
class Send:
    """Send `request` to its peer; answered with the `Outcome`."""

    request: Request


@dataclasses.dataclass(frozen=True)
class Refresh:
    """The lease may have changed: re-check the acting holder now (`NodeCore.refresh`)."""


@dataclasses.dataclass(frozen=True)
class Counted:
    """A round trip ended in `outcome` ("ok" or a wait reason) at `at`; the core's
    `tally` counted it (the shell updates its metrics)."""

    outcome: str
    at: float


Effect: TypeAlias = Persist | Send | Refresh | Counted


class NotPersisted(Exception):
    """Thrown into a generator by the shell: a `Persist` could not be stored."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One round-trip body as sent."""

    peer: int
    name: str
    seq: int
    version: int
    body: bytes
    sent: State
    """The sender's whole state (the body may hold a cut-down one)."""
    sent_at: float
    """Monotonic time it was sent (the lease counts from there)."""
    whole: bool
    """Whether the body holds `sent` whole (not cut for a version 1 peer)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The peer of the next round trip (`choose_peer`) and its name."""

    peer: int | None
    name: str | None
    hinted: bool
    topological: bool


class Tally:
    """Loops and waits by reason, the phase, and the last outcome per peer."""

    def __init__(self, events: history.History) -> None:
        self.history = events
        self.loops = 0
        self.waits = 0
        self.last_wait_reason: str | None = None
        self.last_loop_at: float | None = None
        self.phase = "starting"
        self.edges: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()

    def count(self, peer: str | None, outcome: str, now: float) -> None:
        if outcome == "ok":
            self.loops += 1
            self.last_loop_at = now
            self.phase = "looping"
        else:
            self.waits += 1
            self.last_wait_reason = outcome
            self.history.wait(outcome, now)
            self.phase = "waiting"
        if peer is not None:
            self.edges[peer] = (outcome, now)
            self.edges.move_to_end(peer)
            while len(self.edges) > MAX_EDGES:
                self.edges.popitem(last=False)


class NodeCore:
    """One node's protocol state and rules: its behaviour state, the loop size,
    its identity `(boot, seq)`, the stale table, the lease, the peer picker and
    backoff, the protocol version of each peer, the decision history and the
    tally. The shell owns the clocks (given as callables), the store, the
    network and the metrics."""

    def __init__(
        self,
        behavior: Behavior,
        settings: Settings,
        *,
        loop: str,
        name: str,
        ordinal: int,
        replicas: int,
        boot: int,
        picker: PeerPicker,
        backoff: Backoff,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        peer_name: Callable[[int], str | None],
        tell_timeout: float = contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        """`tell_timeout`: the longest a listener call (the token webhook) takes;
        0 when the listener only logs."""
        self.behavior = behavior
        self.target_taker: TargetTaking | None = (
            cast(TargetTaking, behavior) if takes_target(behavior) else None
        )
        """The behaviour, if it takes the operator's injected target (`inject`)."""
        self.settings = settings
        self.loop = loop
        self.name = name
        self.ordinal = ordinal
        self.replicas = replicas
        self.boot = boot
        self.seq = 0
        self.clock = clock
        """Wall clock (seconds since the epoch): states' stamps, history."""
        self.monotonic = monotonic
        """The lease's clock: never stepped, keeps running while paused."""
        self.started_at = clock()
        self.peer_name = peer_name
        """A peer's node name, or None when its address is unknown (no round trip)."""
        self.headers = {
            "Content-Type": "application/json",
            contract.PROTOCOL_HEADER: str(PROTOCOL_VERSION),
        }
        """The headers of every request (the shell adds a signature)."""
        self.picker = picker
        self.backoff = backoff
        self.state: State | None = None
        self.seen = SeenTable()
        self.lease = Lease(behavior, settings, ordinal, monotonic(), tell_timeout=tell_timeout)
        self._ordinals: dict[str, int] = {}
        """Node name -> ordinal, of the peers this node knows (`ordinal_of`)."""
        self.peer_versions: dict[int, int] = {}
        """Peer ordinal -> protocol version to send it: 1 until it answered in 2."""
        self.history = history.History()
        self.tally = Tally(self.history)

    # --- state and lease -----------------------------------------------------
    def context(self, peer: int | None = None, *, now: float | None = None) -> Context:
        """The behaviour's context now, completed with what the lease knows."""
        ctx = Context(
            ordinal=self.ordinal,
            replicas=self.replicas,
            now=self.clock() if now is None else now,
            started_at=self.started_at,
            settings=self.settings,
            peer=peer,
        )
        if self.state is None or not self.lease.enabled:
            return ctx
        return self.lease.context(ctx, self.state, self.monotonic())

    def started(self) -> None:
        """The process starts with the state it now holds: a held epoch may have
        been acted on before a restart (`Lease.started`)."""
        assert self.state is not None
        self.lease.started(self.state)

    def set_state(self, new: State) -> State | None:
        """The state is now `new` (persisted); returns the one before."""
        old = self.state
        self.state = new
        if self.lease.enabled:
            self.lease.changed(old, new, self.monotonic())
        return old

    def refresh(self) -> list[tuple[str, list[int]]]:
        """Re-check the lease now; the acquire/release events since the last check,
        each recorded in the history. The shell calls it after every change of
        state or lease and when the lease runs out (`lease_end`), and tells its
        listener right away: a process paused past its lease finds it lapsed
        here and releases instead of acting on an old belief."""
        state = self.state
        if state is None or not self.lease.enabled:
            return []
        events = self.lease.refresh(state, self.monotonic(), self.replicas)
        for event, epoch in events:
            # Justified by the newest round trip: the one that made the lease
            # fresh, or (a release when it ran out) the last one it rested on.
            self.history.decision(event, self.clock(), self.history.last, {"epoch": epoch})
        return events

    @property
    def acting(self) -> Epoch | None:
        """The epoch this node last reported acting on (events fired), or None."""
        return self.lease.acting if self.lease.enabled else None

    def acting_now(self) -> Epoch | None:
        """The epoch this node acts on at this instant (its lease fresh), or None."""
        if self.state is None or not self.lease.enabled:
            return None
        return self.lease.acting_epoch(self.state, self.monotonic(), self.replicas)

    def lease_end(self) -> float | None:
        """Monotonic time the acting holder's lease runs out, or None (not acting,
        or a lease that never ends)."""
        state = self.state
        if state is None or self.lease.acting is None:
            return None
        end = self.lease.expires(state, self.monotonic(), self.replicas)
        return end if end is not None and math.isfinite(end) else None

    def ordinal_of(self, name: str) -> int | None:
        """The ordinal of the peer named `name`, or None if it is none of them."""
        if name not in self._ordinals and len(self._ordinals) < self.replicas:
            self._ordinals = {
                peer: p
                for p in range(min(self.replicas, MAX_SENDERS))
                if (peer := self.peer_name(p)) is not None
            }
        return self._ordinals.get(name)

    def next_delay(self, ok: bool) -> float:
        """How long to wait before the next round trip: an interval after a
        success, else the backoff's next delay; but an interval while the token
        gathers a majority (a holder's lease, a lost node's confirmations): it
        asks another peer next, and one that backed off through a partition
        would miss its heal (it gives the token up a loss timeout after it
        took it: docs/node.md, "After a heal")."""
        b = self.lease.behavior
        if ok or (b is not None and self.state is not None and b.gathering(self.state)):
            self.backoff.reset()
            return self.settings.interval
        return self.backoff.next_delay()

    # --- initiator -------------------------------------------------------------
    def plan(self, *, leaving: bool = False) -> Plan:
        """The peer of the next round trip (None: no peer to ask)."""
        assert self.state is not None
        now = self.clock()
        peer, hinted, topological = choose_peer(
            self.behavior,
            self.state,
            self.context(now=now),
            self.picker,
            self.lease,
            self.monotonic(),
            leaving=leaving,
        )
        name = None if peer is None else self.peer_name(peer)
        return Plan(peer, name, hinted, topological)

    def request(self, peer: int, name: str, mine: State) -> Request:
        """The next body to `peer`: a new `seq`, in the version the peer reads
        (1 until it answered in 2), the state cut down for version 1."""
        version = self.peer_versions.get(peer, 1)
        body = wire_state(self.behavior, mine, version)
        self.seq += 1
        encoded = encode(RoundTripRequest(self.loop, self.name, self.boot, self.seq, body, version))
        return Request(peer, name, self.seq, version, encoded, mine, self.monotonic(), body == mine)

    def _count(self, peer: str | None, outcome: str) -> Counted:
        now = self.clock()
        self.tally.count(peer, outcome, now)
        return Counted(outcome, now)

    def initiate(self, *, leaving: bool = False) -> Generator[Effect, Any, bool]:
        """One round trip as initiator; returns whether it succeeded.

        `leaving`: the process is stopping and this is its last round trip
        (`leave`)."""
        assert self.state is not None
        plan = self.plan(leaving=leaving)
        if plan.peer is None or plan.name is None:
            yield self._count(None, "no_peer")
            return False
        peer, name = plan.peer, plan.name
        ctx = self.context(peer if plan.topological else None)
        if leaving:
            ctx = dataclasses.replace(ctx, leaving=True)
        try:
            mine: State = yield Persist(lambda m: self.behavior.tick(m, ctx))
        except NotPersisted as e:
            log.warning("node %s: cannot persist a time-driven change: %s", self.name, e)
            assert self.state is not None
            mine = self.state
        for hello in (True, False):
            request = self.request(peer, name, mine)
            result: Outcome = yield Send(request)
            if request.version > 1 and version_refused(result):
                # The peer went back to an older version (a rollback): say it again in 1.
                log.info("node %s: %s refused version %d", self.name, name, request.version)
                self.peer_versions[peer] = 1
                request = self.request(peer, name, mine)
                result = yield Send(request)
            reason = judge(result)
            theirs: State | None = None
            if reason is None:
                try:
                    answer = decode_response(result.body)
                    theirs = self.behavior.validate(answer.state)
                except Exception as e:  # BadBody, InvalidState, or a custom behaviour's own
                    log.info("node %s: bad answer from %s: %s", self.name, name, e)
                    reason = "rejected"
                else:
                    self.peer_versions[peer] = min(answer.version, PROTOCOL_VERSION)
            # A body cut down for version 1 that the peer answered in 2 asked it
            # for nothing (no vouch, no confirmation): say it whole now, not a
            # round trip later (a holder gathering its lease after a heal has
            # none to lose: docs/node.md, "After a heal").
            greeted = theirs is not None and not request.whole and self.peer_versions[peer] >= 2
            if not (hello and greeted):
                break
        if not plan.hinted:
            self.picker.record(reason is None)
        if theirs is None:
            self.lease.failed(peer, self.monotonic())
            yield self._count(name, reason or "rejected")
            return False
        answered = theirs
        rt = history.RoundTrip(
            name, "initiator", self.boot, request.seq, self.clock(), history.digest(result.body)
        )
        self.history.last = rt
        if self.lease.enabled:
            self.lease.answered(
                peer,
                request.sent_at,
                request.sent,
                answered,
                self.monotonic(),
                vouchable=request.whole,
            )
            self.lease.heard(peer, answered, request.sent_at)
        try:
            yield Persist(
                lambda m: self.behavior.react(m, answered, self.context(peer)), lambda _: rt
            )
        except NotPersisted as e:
            log.warning("node %s: cannot persist after a round trip: %s", self.name, e)
        yield Refresh()
        yield self._count(name, "ok")
        return True

    def leave(self) -> Generator[Effect, Any, bool]:
        """The process is stopping (SIGTERM, a pod deleted): an acting holder hands
        the token on in one last round trip, without waiting out its hold, so
        its successor acts within a round trip or two instead of a loss timeout
        (docs/node.md, "Stopping"). The hand-on is the usual one: the offer is
        persisted first, the receiver persists holding before it answers, and
        nothing acts before a majority vouched. Anyone else stops at once;
        returns whether a round trip succeeded."""
        if self.acting_now() is None:
            return False
        return (yield from self.initiate(leaving=True))

    # --- responder ---------------------------------------------------------------
    def serve(
        self,
        body: bytes,
        *,
        signer: str | None = None,
        address: str | None = None,
        header: str | None = None,
    ) -> Generator[Effect, Any, Reply]:
        """One round trip as responder: the answer to `body` (size-checked; its
        signature, if the loop has a key, verified: `signer` is the sender it
        names) from the network address `address`, whose request's
        `contract.PROTOCOL_HEADER` was `header`."""
        if self.state is None:
            return error_reply(503, "unavailable", "state not loaded yet")
        try:
            req = decode_request(body)
        except UnsupportedVersion as e:
            return error_reply(400, "unsupported_version", str(e))
        except BadBody as e:
            return error_reply(400, "bad_request", str(e))
        if signer is not None and signer != req.sender:
            return error_reply(401, "unauthorized", f"signed by {signer}, not {req.sender}")
        if req.loop != self.loop:
            return error_reply(400, "wrong_loop", f"this node is in loop {self.loop!r}")
        latest_boot = int((self.clock() + contract.BOOT_SKEW_SECONDS) * 1e9)
        if req.boot > latest_boot:
            return error_reply(
                400,
                "bad_request",
                f"boot {req.boot} is more than {contract.BOOT_SKEW_SECONDS} s "
                "ahead of this node's clock (nanoseconds since the epoch)",
            )
        # The operator's injection into a behaviour that takes a target is no
        # peer state: it goes to `inject` (docs/custom-behavior.md).
        taker = self.target_taker if req.sender == contract.OPERATOR_SENDER else None
        injection: Injection | None = None
        theirs: State = {}
        try:
            if taker is not None:
                injection = as_injection(req.state, MAX_STATE_INT)
            else:
                theirs = self.behavior.validate(req.state)
        except Exception as e:  # InvalidState, or a custom behaviour's own error
            return error_reply(400, "bad_request", f"invalid state: {e}")
        # Without a key the sender's name proves nothing: its entry is the pair
        # (name, address), so a forger elsewhere cannot make the real sender stale.
        key = (req.sender, "" if signer is not None else (address or ""))
        version = answer_version(req.version, header)
        # A version 1 body from a node that speaks 2 holds a state cut down for a
        # peer it has not heard version 2 from yet: answer it, act on nothing in it.
        hello = injection is None and req.version == 1 < version and versioned(self.behavior)

        def answer(new: State) -> bytes:
            return encode(
                RoundTripResponse(self.name, wire_state(self.behavior, new, version), version)
            )

        def justify(new: State) -> history.RoundTrip:
            return history.RoundTrip(
                req.sender,
                "responder",
                req.boot,
                req.seq,
                self.clock(),
                history.digest(answer(new)),
            )

        newest = self.seen.stale(key, req.boot, req.seq)
        if newest is not None:
            return error_reply(
                409, "stale", f"not newer than (boot, seq) {list(newest)} seen from sender"
            )
        new: State = self.state
        if not hello:
            if taker is not None and injection is not None:
                injected = injection

                def decide(mine: State) -> State:
                    assert taker is not None
                    return self.behavior.validate(taker.inject(mine, injected, self.context()))

            else:
                sender = self.ordinal_of(req.sender)
                self.lease.heard(sender, theirs)

                def decide(mine: State) -> State:
                    return self.behavior.respond(mine, theirs, self.context(sender))

            try:
                new = yield Persist(decide, justify)
            except NotPersisted as e:
                return error_reply(503, "unavailable", f"cannot persist state: {e}")
            except Exception as e:  # `inject` refused the target (InvalidState) or failed
                if injection is None:
                    raise
                return error_reply(400, "bad_request", f"invalid target: {e}")
        # Only a round trip that was answered advances the sender's entry.
        self.seen.advance(key, req.boot, req.seq)
        raw = answer(new)
        self.history.last = history.RoundTrip(
            req.sender, "responder", req.boot, req.seq, self.clock(), history.digest(raw)
        )
        if self.lease.enabled and injection is None and not hello:
            self.lease.served(theirs, new, self.monotonic())
            yield Refresh()
        reply: dict[str, Any] = {
            "from": self.name,
            "state": wire_state(self.behavior, new, version),
        }
        return Reply(200, reply if version == 1 else {**reply, "v": version}, raw)
