"""token: one token circulates round the ring (a singleton job, round-robin leadership).

State (one JSON object)::

    {"holding": bool,            # this node holds the token
     "epoch": [term, ordinal],   # newest epoch seen (the held one while holding), or null
     "since": float | null,      # wall time this node acquired it
     "seenAt": float,            # wall time `epoch` last changed here (informative)
     "offer": {"to": ordinal, "epoch": [term, ordinal]} | null,
     "origin": [term, ordinal] | null,   # the epoch that started `epoch`'s chain
     "acked": [term, ordinal] | null,    # the chain this node vouches for
     "lost": bool}               # this node has had no news of any token for the loss timeout

Epochs are pairs compared in order; an epoch names its holder's ordinal, so two
holders never share one. The giver chooses the receiver's epoch when it makes
an offer (the next term, the receiver's ordinal) and persists the offer before
it sends it, and never re-targets it (the target may have accepted and its
answer got lost): it keeps offering until the target answers (`peer_hint`
steers the loop to that target whatever the topology picks). So each epoch
has exactly one successor and the epochs of one chain only increase. Only if
the loop shrinks below the target does the giver re-offer elsewhere, with a
still higher term. The receiver persists holding before it answers (the node
does that for every `respond`); the giver releases when the answer shows an
epoch newer than its own. Whoever sees a newer epoch than the one it holds
releases.

Every decision follows a round trip (issue 10, docs/node.md "The token is CP"):

* **Acting.** Holding is not acting. A holder *acts* (reports holding, fires
  `acquire`) only while its lease is fresh: a strict majority of the loop,
  itself included, vouched for its epoch in round trips it started within
  the lease (`reactive_node.core.protocol.Lease` keeps that, on the monotonic
  clock). A node vouches for one chain (`acked`, named by its `origin`) at
  a time and switches to another only after it has vouched for none for the
  guard (the lease stretched by the drift allowance): two acting holders
  would need one node vouching for both chains within one lease. Only an
  acting holder hands the token on, and only once its listener told its
  acquisition (the token webhook's call returned, `Context.told`): the
  webhook is called in the background, and a fence must hear the epochs of
  one chain in their order. A holder never acts on an epoch it acquired
  (an offer taken, a regeneration) nor on one whose lease lapsed: once a
  majority vouched for it, it takes a new term (same chain, at least the wall
  clock's milliseconds) and acts on that one, so a fence sees only increasing
  epochs, even across chains that the nodes which knew them forgot; until
  then its epoch is no news to anyone. One that no majority vouched for
  during the loss timeout
  (a new chain's holder: and a guard, the time its rival's vouchers need to
  be free) gives the token up and says it is lost.
* **Regeneration.** A node with no news of any token for the loss timeout
  says so in its state (`lost`, written once, cleared by news); so does one
  whose epoch's holder (the ordinal it names) says it gave the token up. A
  lost node (staggered by ordinal, less a stagger for each lower ordinal its
  round trips could not reach within the loss timeout, and a stagger more
  for each lower ordinal that is lost too and reachable) regenerates the token only after a strict
  majority of the loop, itself included, said `lost` (or never saw a token)
  in answers to its round trips within one lease, with a term two above
  every epoch those answers carried (above an offer pending from such an
  epoch's holder, and a renewal). A minority side never regenerates. Node 0
  creates the very first token a few intervals after start the same way,
  from answers of nodes that never saw one.
"""

from __future__ import annotations

import math
from typing import Any

from ..contract import MAX_STATE_INT
from .base import Context, InvalidState, State, Summary

Epoch = tuple[int, int]

FIELDS = frozenset({"holding", "epoch", "since", "seenAt", "offer", "origin", "acked", "lost"})
#: The fields a token node of protocol version 1 (commit d29e2e1) accepts; it
#: answers 400 to a state with any other.
V1_FIELDS = ("holding", "epoch", "since", "seenAt", "offer")

#: Intervals node 0 waits, with no epoch ever seen, before creating the first token.
BOOTSTRAP_INTERVALS = 3


def wall_term(now: float) -> int:
    """The least term of an epoch taken at wall time `now` (a regeneration, a
    renewal): milliseconds since the Unix epoch. Every epoch acted on is a
    renewal taken when its holder began to act, so across chains a fence hears
    them in that order whatever the nodes remember, while the nodes' wall
    clocks agree to better than the time between two holders beginning to act
    (docs/node.md, "Nodes that forget")."""
    if not math.isfinite(now) or now <= 0:
        return 0
    return min(int(now * 1000), MAX_STATE_INT // 2)


def _epoch(value: Any) -> Epoch | None:
    if value is None:
        return None
    return int(value[0]), int(value[1])


def _newer(a: Any, b: Any) -> bool:
    """Whether epoch `a` is strictly newer than epoch `b` (None is oldest)."""
    ea, eb = _epoch(a), _epoch(b)
    if ea is None:
        return False
    return eb is None or ea > eb


def _valid_epoch(value: Any, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) is not int or not 0 <= v <= MAX_STATE_INT for v in value)
    ):
        raise InvalidState(f"{what} must be [term, ordinal] with integers 0..{MAX_STATE_INT}")
    return [value[0], value[1]]


def _number(value: Any) -> bool:
    """A finite JSON number whose float is exact enough to compare times with."""
    if type(value) is int:
        return -MAX_STATE_INT <= value <= MAX_STATE_INT
    return type(value) is float and math.isfinite(value)


def _holder(state: State) -> bool:
    """Holding with no offer pending: a holder that may act."""
    return bool(state["holding"]) and state["offer"] is None


class Token:
    """The built-in token behaviour."""

    name = "token"
    leased = True
    """The protocol core keeps a lease and vouches for this behaviour (see module doc)."""

    def initial(self, ctx: Context) -> State:
        return {
            "holding": False,
            "epoch": None,
            "since": None,
            "seenAt": 0.0,
            "offer": None,
            "origin": None,
            "acked": None,
            "lost": False,
        }

    def validate(self, raw: Any) -> State:
        if not isinstance(raw, dict):
            raise InvalidState("token state must be a JSON object")
        extra = set(raw) - FIELDS
        if extra:
            raise InvalidState(f"token state has unknown fields: {sorted(extra)}")
        holding = raw.get("holding")
        if type(holding) is not bool:
            raise InvalidState("token state needs a boolean 'holding'")
        epoch = raw.get("epoch")
        epoch = None if epoch is None else _valid_epoch(epoch, "epoch")
        if holding and epoch is None:
            raise InvalidState("a holder needs an epoch")
        since = raw.get("since")
        if since is not None and not _number(since):
            raise InvalidState("'since' must be a number or null")
        if holding and since is None:
            raise InvalidState("a holder needs 'since'")
        seen_at = raw.get("seenAt", 0.0)
        if not _number(seen_at):
            raise InvalidState("'seenAt' must be a number")
        offer = raw.get("offer")
        if offer is not None:
            if not isinstance(offer, dict) or set(offer) != {"to", "epoch"}:
                raise InvalidState("'offer' must be null or {to, epoch}")
            if type(offer["to"]) is not int or not 0 <= offer["to"] <= MAX_STATE_INT:
                raise InvalidState("'offer.to' must be an ordinal")
            offer = {"to": offer["to"], "epoch": _valid_epoch(offer["epoch"], "offer.epoch")}
        origin = raw.get("origin")
        # A state written before chains had origins: its epoch starts its own chain.
        origin = epoch if origin is None else _valid_epoch(origin, "origin")
        if epoch is not None and origin is not None and _newer(origin, epoch):
            raise InvalidState("'origin' cannot be newer than 'epoch'")
        if epoch is None and origin is not None:
            raise InvalidState("'origin' needs an epoch")
        acked = raw.get("acked")
        acked = None if acked is None else _valid_epoch(acked, "acked")
        lost = raw.get("lost", False)
        if type(lost) is not bool:
            raise InvalidState("'lost' must be a boolean")
        return {
            "holding": holding,
            "epoch": epoch,
            "since": None if since is None else float(since),
            "seenAt": float(seen_at),
            "offer": offer,
            "origin": None if origin is None else list(origin),
            "acked": acked,
            "lost": lost and not holding,
        }

    # --- transitions ---------------------------------------------------------
    def _learn(self, mine: State, theirs: State, ctx: Context) -> State:
        """Adopt a newer epoch seen elsewhere; a holder of an older one releases."""
        epoch = theirs.get("epoch")
        if epoch is None or not _newer(epoch, mine["epoch"]):
            return mine
        origin = theirs.get("origin") or epoch
        return {
            **mine,
            "holding": False,
            "epoch": list(epoch),
            "since": None,
            "seenAt": ctx.now,
            "offer": None,
            "origin": list(origin),
            # Learning of an epoch its holder gave up is no news of a live token.
            "lost": bool(theirs.get("lost")) and not theirs.get("holding"),
        }

    def _may_vouch(self, mine: State, origin: Any, ctx: Context) -> bool:
        """Whether this node may vouch for the chain `origin` now."""
        return mine["acked"] == origin or ctx.guard_quiet >= ctx.settings.token_guard

    def _given_up(self, mine: State, theirs: State, ctx: Context) -> State:
        """The holder of this node's epoch (the peer of this round trip, whose
        ordinal the epoch names) says it gave the token up: it is lost."""
        epoch = mine["epoch"]
        if (
            mine["lost"]
            or mine["holding"]
            or epoch is None
            or ctx.peer != epoch[1]
            or theirs.get("epoch") != epoch
            or theirs.get("holding")
            or not theirs.get("lost")
        ):
            return mine
        return {**mine, "lost": True}

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        new = self._given_up(self._learn(mine, theirs, ctx), theirs, ctx)
        offer = theirs.get("offer")
        if (
            isinstance(offer, dict)
            and offer.get("to") == ctx.ordinal
            and _newer(offer.get("epoch"), new["epoch"])
        ):
            # Accepting: the node persists this before it answers.
            origin = list(theirs.get("origin") or theirs["epoch"])
            return {
                "holding": True,
                "epoch": list(offer["epoch"]),
                "since": ctx.now,
                "seenAt": ctx.now,
                "offer": None,
                "origin": origin,
                "acked": origin if self._may_vouch(new, origin, ctx) else new["acked"],
                "lost": False,
            }
        if (
            _holder(theirs)
            and not new["holding"]
            and theirs.get("epoch") == new["epoch"]
            and (theirs.get("origin") or theirs["epoch"]) == new["origin"]
            and (new["acked"] != new["origin"] or new["lost"])
            and self._may_vouch(new, new["origin"], ctx)
        ):
            # Vouch for this holder's chain: news of the token.
            return {**new, "acked": list(new["origin"]), "lost": False}
        return new

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        new = self._given_up(self._learn(mine, theirs, ctx), theirs, ctx)
        if new is mine and _holder(mine) and ctx.renew and not ctx.acting:
            return self._renewed(mine, ctx)  # this answer completed its majority
        return new

    @staticmethod
    def _renewed(mine: State, ctx: Context) -> State:
        """A majority vouched for the epoch it holds, which it may not act on:
        one it just acquired (an offer taken, a regeneration), or one whose lease
        lapsed (a fence may have seen it). It acts on the next term of its own
        (same chain), at least the wall clock's milliseconds now: a fence hears
        the epochs in the order their holders began to act, even across chains
        the nodes forgot. Renewed only now: the epoch of a holder that cannot
        act is no news to anyone."""
        term = int(mine["epoch"][0])
        if term >= MAX_STATE_INT:
            return mine
        return {**mine, "epoch": [max(term + 1, wall_term(ctx.now)), int(mine["epoch"][1])]}

    def tick(self, mine: State, ctx: Context) -> State:
        settings = ctx.settings
        if mine["holding"]:
            patience = settings.token_loss_timeout
            if mine["origin"] == mine["epoch"]:
                # A chain it started: peers that vouched for a rival regeneration
                # may vouch for this one only a guard later.
                patience += settings.token_guard
            if mine["offer"] is None and not ctx.acting and ctx.quiet >= patience:
                # No majority vouched for it for the loss timeout: it gives the
                # token up and says it is lost, so a majority can regenerate it.
                return {**mine, "holding": False, "since": None, "lost": True}
            if mine["offer"] is None and ctx.renew and not ctx.acting:
                return self._renewed(mine, ctx)
            if (
                mine["offer"] is None
                and mine["acked"] != mine["origin"]
                and ctx.guard_quiet >= settings.token_guard
            ):
                return {**mine, "acked": list(mine["origin"])}
            if ctx.now - float(mine["since"]) < settings.token_hold and not ctx.leaving:
                return mine  # (a node that is stopping hands it on at once)
            offer = mine["offer"]
            if offer is not None and offer["to"] < ctx.replicas:
                # Never re-target an offer: the target may have accepted it and
                # its answer got lost. Keep offering until it answers (then it
                # holds, or it shows a newer epoch and this node releases).
                return mine
            peer = ctx.peer
            if peer is None or peer == ctx.ordinal or not ctx.acting or not ctx.told:
                # Only an acting holder hands the token on, and only once its
                # acquisition was told: a fence hears epochs in their order.
                return mine
            term = int(mine["epoch"][0])
            if offer is not None:
                term = max(term, int(offer["epoch"][0]))
            if term >= MAX_STATE_INT:
                return mine  # terms saturate: never make a state out of bounds
            return {**mine, "offer": {"to": peer, "epoch": [term + 1, peer]}}
        # Only news (a newer epoch, a holder vouched for) clears `lost`.
        lost = mine["lost"] or ctx.quiet >= settings.token_loss_timeout
        judged = mine if lost == mine["lost"] else {**mine, "lost": lost}
        if mine["epoch"] is None and ctx.ordinal == 0:
            due = BOOTSTRAP_INTERVALS * settings.interval
        elif lost:
            # A stagger per lower ordinal, so they rarely race; none for a lower
            # ordinal this node could not reach (a deleted pod, a cut link).
            lower = max(0, ctx.ordinal - ctx.lower_down)
            due = settings.token_loss_timeout + lower * settings.token_stagger
            if ctx.below_quiet < ctx.confirmed_below * settings.token_stagger:
                # A lower ordinal said it is lost too, so it is reachable and may
                # regenerate first: it gets a stagger each, so they rarely race.
                return judged
        else:
            return judged
        if ctx.quiet < due or 2 * (1 + ctx.confirmed) <= ctx.replicas:
            return judged  # a minority side waits
        term = 0 if mine["epoch"] is None else int(mine["epoch"][0])
        if ctx.confirmed_epoch is not None:
            term = max(term, ctx.confirmed_epoch[0])
        # Two terms up: above an offer pending from a holder of an epoch these
        # answers carried (it may still be accepted), and its renewal.
        step = 1 if mine["epoch"] is None else 2
        if term > MAX_STATE_INT - step:
            return judged  # terms saturate: never make a state out of bounds
        # And at least the wall clock's milliseconds: the nodes that knew the
        # newest epoch may have lost their state (pods deleted), and a chain
        # started from older answers must still outgrow it at a fence.
        epoch = [max(term + step, wall_term(ctx.now)), ctx.ordinal]
        return {
            "holding": True,
            "epoch": epoch,
            "since": ctx.now,
            "seenAt": ctx.now,
            "offer": None,
            "origin": list(epoch),
            "acked": list(epoch) if self._may_vouch(mine, epoch, ctx) else mine["acked"],
            "lost": False,
        }

    def peer_hint(self, mine: State, ctx: Context) -> int | None:
        """While an offer is pending, round-trip to its target."""
        offer = mine["offer"]
        return int(offer["to"]) if mine["holding"] and offer is not None else None

    def summary(self, state: State) -> Summary:
        epoch = state["epoch"]
        return {
            "generation": None,
            "target": None,
            "holding": bool(state["holding"]),
            "epoch": None if epoch is None else [int(epoch[0]), int(epoch[1])],
        }

    def wire_state(self, state: State, version: int) -> State:
        """The state as a peer of protocol `version` reads it: version 1 knows
        only `V1_FIELDS` (a version 2 node reads the rest as absent: `origin`
        its epoch, `acked` null, `lost` false)."""
        if version >= 2:
            return state
        return {k: state[k] for k in V1_FIELDS if k in state}

    # --- what the protocol core asks (reactive_node.core.protocol.Lease) ------------
    def holder_epoch(self, state: State) -> Epoch | None:
        """The epoch this state may act on with a lease: held, no offer, vouched for."""
        if not _holder(state) or state["acked"] != state["origin"]:
            return None
        return _epoch(state["epoch"])

    def may_act(self, state: State) -> bool:
        """Whether `state` may yet act on its epoch (held, no offer pending): a
        node that does not never acts again on acks it had (docs/node.md)."""
        return _holder(state)

    def vouches(self, new: State, theirs: State) -> bool:
        """Whether a responder's `new` state vouches for the holder that sent `theirs`."""
        return (
            _holder(theirs)
            and not new["holding"]
            and not new["lost"]
            and new["epoch"] == theirs.get("epoch")
            and new["acked"] is not None
            and new["acked"] == (theirs.get("origin") or theirs.get("epoch"))
        )

    def confirms_loss(self, answer: State) -> bool:
        """Whether an answer says its node has seen no token for the loss timeout
        (or never saw one)."""
        return not answer["holding"] and (bool(answer["lost"]) or answer["epoch"] is None)

    def gathering(self, state: State) -> str | None:
        """What this state needs from a majority: "acks" (a holder's lease),
        "confirms" (a regeneration), or nothing."""
        if _holder(state):
            return "acks"
        if not state["holding"] and (state["lost"] or state["epoch"] is None):
            return "confirms"
        return None

    def epoch(self, state: State) -> Epoch | None:
        return _epoch(state["epoch"])
