"""token: one token circulates round the ring (a singleton job, round-robin leadership).

State (one JSON object)::

    {"holding": bool,            # this node holds the token
     "epoch": [term, ordinal],   # newest epoch seen (the held one while holding), or null
     "since": float | null,      # wall time this node acquired it
     "seenAt": float,            # wall time `epoch` last changed here
     "offer": {"to": ordinal, "epoch": [term, ordinal]} | null}

Epochs are pairs compared in order; an epoch names its holder's ordinal, so two
holders never share one. The giver chooses the receiver's epoch when it makes
an offer (the next term, the receiver's ordinal) and persists the offer before
it sends it, and never re-targets it (the target may have accepted and its
answer got lost): it keeps offering until the target answers (`peer_hint`
steers the loop to that target whatever the topology picks). So each epoch
has exactly one successor and acquisitions along the chain only increase.
Only if the loop shrinks below the target does the giver re-offer elsewhere,
with a still higher term. The receiver persists holding before it answers (the node does
that for every `respond`); the giver releases when the answer shows an epoch
newer than its own. Whoever sees a newer epoch than the one it holds releases.

A node that hears nothing new for the loss timeout (plus a stagger per
ordinal) regenerates the token with the next term. Node 0 creates the very
first token a few intervals after start if it has never seen any.
"""

from __future__ import annotations

from typing import Any

from .base import Context, InvalidState, State, Summary

Epoch = tuple[int, int]

#: Intervals node 0 waits, with no epoch ever seen, before creating the first token.
BOOTSTRAP_INTERVALS = 3


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
        or any(type(v) is not int or v < 0 for v in value)
    ):
        raise InvalidState(f"{what} must be [term, ordinal] with integers >= 0")
    return [value[0], value[1]]


def _number(value: Any) -> bool:
    return type(value) in (int, float)


class Token:
    """The built-in token behaviour."""

    name = "token"

    def initial(self, ctx: Context) -> State:
        return {"holding": False, "epoch": None, "since": None, "seenAt": 0.0, "offer": None}

    def validate(self, raw: Any) -> State:
        if not isinstance(raw, dict):
            raise InvalidState("token state must be a JSON object")
        extra = set(raw) - {"holding", "epoch", "since", "seenAt", "offer"}
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
            if type(offer["to"]) is not int or offer["to"] < 0:
                raise InvalidState("'offer.to' must be an ordinal")
            offer = {"to": offer["to"], "epoch": _valid_epoch(offer["epoch"], "offer.epoch")}
        return {
            "holding": holding,
            "epoch": epoch,
            "since": None if since is None else float(since),
            "seenAt": float(seen_at),
            "offer": offer,
        }

    # --- transitions ---------------------------------------------------------
    def _learn(self, mine: State, epoch: Any, ctx: Context) -> State:
        """Adopt a newer epoch seen elsewhere; a holder of an older one releases."""
        if not _newer(epoch, mine["epoch"]):
            return mine
        return {
            "holding": False,
            "epoch": list(epoch),
            "since": None,
            "seenAt": ctx.now,
            "offer": None,
        }

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        new = self._learn(mine, theirs.get("epoch"), ctx)
        offer = theirs.get("offer")
        if (
            isinstance(offer, dict)
            and offer.get("to") == ctx.ordinal
            and _newer(offer.get("epoch"), new["epoch"])
        ):
            # Accepting: the node persists this before it answers.
            return {
                "holding": True,
                "epoch": list(offer["epoch"]),
                "since": ctx.now,
                "seenAt": ctx.now,
                "offer": None,
            }
        return new

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        return self._learn(mine, theirs.get("epoch"), ctx)

    def tick(self, mine: State, ctx: Context) -> State:
        settings = ctx.settings
        if mine["holding"]:
            if ctx.now - float(mine["since"]) < settings.token_hold:
                return mine
            offer = mine["offer"]
            if offer is not None and offer["to"] < ctx.replicas:
                # Never re-target an offer: the target may have accepted it and
                # its answer got lost. Keep offering until it answers (then it
                # holds, or it shows a newer epoch and this node releases).
                return mine
            peer = ctx.peer
            if peer is None or peer == ctx.ordinal:
                return mine
            term = int(mine["epoch"][0])
            if offer is not None:
                term = max(term, int(offer["epoch"][0]))
            return {**mine, "offer": {"to": peer, "epoch": [term + 1, peer]}}
        quiet = ctx.now - max(float(mine["seenAt"]), ctx.started_at)
        if mine["epoch"] is None and ctx.ordinal == 0:
            due = BOOTSTRAP_INTERVALS * settings.interval
        else:
            due = settings.token_loss_timeout + ctx.ordinal * settings.token_stagger
        if quiet < due:
            return mine
        term = 0 if mine["epoch"] is None else int(mine["epoch"][0])
        return {
            "holding": True,
            "epoch": [term + 1, ctx.ordinal],
            "since": ctx.now,
            "seenAt": ctx.now,
            "offer": None,
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
