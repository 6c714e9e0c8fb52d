"""A custom behaviour: a leaderboard that every node agrees on.

Loaded by the node as `python:leaderboard:Leaderboard` (this file is on the
image's PYTHONPATH, see the Dockerfile beside it). docs/custom-behavior.md
walks through it.

Each `spec.target` is a claim `{"player": "ada", "score": 42}`; the operator
injects it, stamped with the resource's generation, into one node, and the
loop spreads it. The board keeps the best claim ever made (highest score;
equal scores ordered by player name) and the newest generation injected.
Both parts only grow, so merging two boards is commutative, associative and
idempotent: a lost or repeated round trip never harms, the next one repairs.
A lower score injected later moves the generation (the operator sees its
target arrive) but not the leader.

State: `{"generation": int, "best": {"player": str, "score": int} | null}`.
"""

from __future__ import annotations

from typing import Any

from reactive_node.behaviors import Context, Injection, InvalidState, State, Summary

#: Bounds of a claim (state lives in a pod annotation; keep it small).
MAX_PLAYER = 64
MAX_SCORE = 2**53 - 1
MAX_GENERATION = 2**53 - 1


def claim(raw: Any) -> dict[str, Any]:
    """`raw` as a claim `{"player", "score"}`, or `InvalidState`."""
    if not isinstance(raw, dict) or set(raw) != {"player", "score"}:
        raise InvalidState('a claim is exactly {"player": str, "score": int}')
    player, score = raw["player"], raw["score"]
    if not isinstance(player, str) or not 1 <= len(player) <= MAX_PLAYER:
        raise InvalidState(f"player must be a string of 1..{MAX_PLAYER} characters")
    if type(score) is not int or not 0 <= score <= MAX_SCORE:
        raise InvalidState(f"score must be an integer 0..{MAX_SCORE}")
    return {"player": player, "score": score}


def better(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """The better of two claims (None is no claim): higher score, then player name."""
    if a is None or b is None:
        return a if b is None else b
    return a if (a["score"], a["player"]) >= (b["score"], b["player"]) else b


def merge(a: State, b: State) -> State:
    """The join of two boards: the newer generation and the better claim."""
    return {
        "generation": max(a["generation"], b["generation"]),
        "best": better(a["best"], b["best"]),
    }


class Leaderboard:
    """Converges every node to the best claim ever injected."""

    name = "leaderboard"
    #: It takes the operator's injected `spec.target` (through `inject`).
    takes_target = True

    def initial(self, ctx: Context) -> State:
        return {"generation": 0, "best": None}

    def validate(self, raw: Any) -> State:
        if not isinstance(raw, dict) or set(raw) != {"generation", "best"}:
            raise InvalidState('a board is exactly {"generation": int, "best": claim | null}')
        generation = raw["generation"]
        if type(generation) is not int or not 0 <= generation <= MAX_GENERATION:
            raise InvalidState(f"generation must be an integer 0..{MAX_GENERATION}")
        best = None if raw["best"] is None else claim(raw["best"])
        return {"generation": generation, "best": best}

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        new = merge(mine, theirs)
        return mine if new == mine else new

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        return self.respond(mine, theirs, ctx)

    def tick(self, mine: State, ctx: Context) -> State:
        return mine

    def inject(self, mine: State, injection: Injection, ctx: Context) -> State:
        offered = {"generation": injection["generation"], "best": claim(injection["target"])}
        return self.respond(mine, offered, ctx)

    def summary(self, state: State) -> Summary:
        return {
            "generation": state["generation"],
            "target": state["best"],
            "holding": None,
            "epoch": None,
        }
