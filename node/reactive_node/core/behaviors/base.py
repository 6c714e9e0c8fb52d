"""The behaviour interface: what a node does with its state, as pure functions.

A behaviour never does I/O and never reads the clock itself: the node hands it
a `Context` holding the time, its identity and its settings. That is what lets
the same code run in the HTTP node, in the simulation and in the benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Protocol, TypedDict, runtime_checkable

#: A behaviour state: one JSON object.
State = dict[str, Any]


class InvalidState(ValueError):
    """Raised by `Behavior.validate` for anything that is not a valid state."""


#: How much longer than a lease another node's guard lasts: clocks may run at
#: rates up to ~10 % apart, (1.1)^2 < 1.25. The token's loss timeout must exceed
#: the lease times this factor (config, CRD rule).
DRIFT_FACTOR = 1.25
#: Default token lease, in intervals (at least; see `default_lease`).
LEASE_INTERVALS = 3


def default_lease(interval: float, replicas: int) -> float:
    """The default token lease: 3 intervals, or two intervals per peer a holder
    needs to hear from (one round trip per interval; a lost one must not end
    the lease), plus one, if that is longer."""
    return max(LEASE_INTERVALS, 2 * (replicas // 2) + 1) * interval


@dataclasses.dataclass(frozen=True)
class Settings:
    """Behaviour settings, the same on every node of a loop."""

    interval: float = 1.0
    """Seconds between two round trips of a node."""
    token_hold: float = 5.0
    """Seconds a token holder keeps the token before handing it on."""
    token_loss_timeout: float = 30.0
    """Seconds without news of the token before node 0 regenerates it."""
    token_stagger: float = 2.0
    """Extra seconds of loss timeout per ordinal, so regenerations do not race."""
    token_lease: float = 3.0
    """Seconds a token holder acts after a round trip that a majority vouched for."""

    @property
    def token_guard(self) -> float:
        """Seconds a node waits, after it last vouched for one token, before it
        vouches for another: the lease stretched by the clock-rate drift allowance."""
        return self.token_lease * DRIFT_FACTOR


@dataclasses.dataclass(frozen=True)
class Context:
    """What a behaviour may know besides the states: who, when, and settings."""

    ordinal: int
    replicas: int
    now: float
    """Wall-clock seconds (time.time()); only compared with this node's own stamps."""
    started_at: float
    """When this node process started (a restart counts as fresh news)."""
    settings: Settings = dataclasses.field(default_factory=Settings)
    peer: int | None = None
    """Ordinal of the peer of this round trip, when known: the one the node is
    about to round-trip to (`tick`), that answered (`react`), that sent the
    request (`respond`)."""
    # What the protocol core (reactive_node.core.protocol) remembers between round
    # trips, on this node's monotonic clock; only the token uses them.
    quiet: float = math.inf
    """Seconds since this node last had news of any token."""
    guard_quiet: float = math.inf
    """Seconds since this node last vouched for the token chain it vouches for."""
    acting: bool = False
    """Whether this node acts as the token holder now (its lease is fresh)."""
    told: bool = True
    """Whether the node's listener finished telling that it acquired the epoch it
    acts on (the token webhook's call returned): only then is it handed on."""
    renew: bool = False
    """This node held its epoch past a lapsed lease and a majority vouched for it
    again: it takes the next term, and acts on that (never on the old one)."""
    confirmed: int = 0
    """Peers that recently confirmed, in a round trip, that the token is lost."""
    confirmed_below: int = 0
    """How many of those peers have a lower ordinal (lost too, and reachable)."""
    below_quiet: float = 0.0
    """Seconds this node has had confirmations from a majority with a lower
    ordinal among them (0 when it has not)."""
    confirmed_epoch: tuple[int, int] | None = None
    """The newest epoch those confirmations carried."""
    lower_down: int = 0
    """How many lower ordinals this node's round trips failed to reach within
    the loss timeout (and that have not answered since): their regeneration
    stagger is not waited for."""
    leaving: bool = False
    """The process is stopping (SIGTERM): this is its last round trip, and an
    acting holder hands the token on in it without waiting out its hold."""


class Summary(TypedDict):
    """The behaviour-independent summary the operator and the view read."""

    generation: int | None
    target: Any
    holding: bool | None
    epoch: list[int] | None


@runtime_checkable
class Behavior(Protocol):
    """What every behaviour implements; all methods are pure and idempotent."""

    name: str

    def initial(self, ctx: Context) -> State:
        """The state of a node that has never persisted one."""
        ...

    def validate(self, raw: Any) -> State:
        """Return `raw` as a valid state (normalised) or raise `InvalidState`."""
        ...

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        """The responder's next state, given the initiator's state."""
        ...

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        """The initiator's next state, given the responder's answer."""
        ...

    def tick(self, mine: State, ctx: Context) -> State:
        """Time-driven changes, evaluated before each round trip."""
        ...

    def summary(self, state: State) -> Summary:
        """The fields of `Summary` for this state (None where meaningless)."""
        ...


@runtime_checkable
class PeerHinting(Protocol):
    """Optional extra of a behaviour: a peer its state needs to reach next.

    The token behaviour uses it so a pending hand-off goes to the node it was
    offered to, whatever the topology would pick. The loop calls it before
    picking a peer; None means: let the topology choose.
    """

    def peer_hint(self, mine: State, ctx: Context) -> int | None: ...


def versioned(behavior: object) -> bool:
    """Whether `behavior` cuts its state down for older protocol versions: it
    has an optional method `wire_state(state, version) -> State`, the state as
    a peer of an older protocol version reads it.

    The token's version 1 peers (commit d29e2e1) refuse its `origin`, `acked`
    and `lost`. The protocol core sends a peer it has not heard version 2 from
    `wire_state(state, 1)`, and answers a version 1 request with it; a version
    1 body from a node that speaks 2 (its header says so) is therefore a cut
    state, which a responder does not act on (docs/node.md, "Protocol version").
    """
    return callable(getattr(behavior, "wire_state", None))


def wire_state(behavior: object, state: State, version: int) -> State:
    """`state` as a peer of protocol `version` reads it (itself for most behaviours)."""
    method = getattr(behavior, "wire_state", None)
    if method is None:
        return state
    cut: State = method(state, version)
    return cut


class Injection(TypedDict):
    """A target the operator injects (`spec.target`, stamped with its generation)."""

    generation: int
    target: Any


@runtime_checkable
class TargetTaking(Protocol):
    """Optional extra of a behaviour: it takes the target the operator injects.

    A behaviour declares it with the class attribute `takes_target = True` and
    the method `inject`. The operator injects `spec.target` by round-tripping
    `{"generation": <metadata.generation>, "target": spec.target}` to one
    node, as sender `reactive-loop-operator`; a node whose behaviour takes a
    target hands that body to `inject` (not to `validate` and `respond`) and
    persists the result before it answers, like any responder. `inject` is
    pure and idempotent, like `respond`: the operator may inject the same
    generation again (a lost answer, a resync). It raises `InvalidState` for
    a target it cannot use (the operator then sees `400`). The behaviour's
    `summary()["generation"]` should be the newest injected generation the
    state holds: the operator reads it to know the target arrived (and stops
    injecting) and to count the nodes that hold it.
    """

    takes_target: bool

    def inject(self, mine: State, injection: Injection, ctx: Context) -> State: ...


def takes_target(behavior: Behavior) -> bool:
    """Whether `behavior` declares that it takes an injected target."""
    return getattr(behavior, "takes_target", False) is True and callable(
        getattr(behavior, "inject", None)
    )


def as_injection(raw: Any, max_int: int) -> Injection:
    """`raw` as an `Injection` (`{generation, target}`), or `InvalidState`.

    The target is any JSON (a JSON object from the operator's `spec.target`;
    local mode's `reactive-loop inject` may send any value): the behaviour's
    `inject` checks it. Its size and nesting were bounded by the codec."""
    if not isinstance(raw, dict) or set(raw) != {"generation", "target"}:
        raise InvalidState("an injection is exactly {generation, target}")
    generation = raw["generation"]
    if type(generation) is not int or not 0 <= generation <= max_int:
        raise InvalidState(f"an injection needs an integer generation 0..{max_int}")
    return {"generation": generation, "target": raw["target"]}


def peer_hint(behavior: Behavior, mine: State, ctx: Context) -> int | None:
    """The behaviour's hint if it gives one and it names another existing node."""
    method = getattr(behavior, "peer_hint", None)  # cheaper than isinstance on a Protocol
    if method is None:
        return None
    hint: int | None = method(mine, ctx)
    if hint is None or hint == ctx.ordinal or not 0 <= hint < ctx.replicas:
        return None
    return hint


def canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces. Equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
