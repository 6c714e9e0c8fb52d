"""The behaviour interface: what a node does with its state, as pure functions.

A behaviour never does I/O and never reads the clock itself: the node hands it
a `Context` holding the time, its identity and its settings. That is what lets
the same code run in the HTTP node, in the simulation and in the benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol, TypedDict, runtime_checkable

#: A behaviour state: one JSON object.
State = dict[str, Any]


class InvalidState(ValueError):
    """Raised by `Behavior.validate` for anything that is not a valid state."""


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
    """Ordinal of the peer the node is about to round-trip to, when known."""


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
