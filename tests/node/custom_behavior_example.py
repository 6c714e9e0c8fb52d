"""A user-defined behaviour, loaded in tests as python:custom_behavior_example:MaxCounter."""

from __future__ import annotations

from typing import Any

from reactive_node.behaviors import Context, InvalidState, State, Summary


class MaxCounter:
    """Every node ends on the largest counter any node has."""

    name = "max-counter"

    def initial(self, ctx: Context) -> State:
        return {"n": 0}

    def validate(self, raw: Any) -> State:
        if not isinstance(raw, dict) or type(raw.get("n")) is not int:
            raise InvalidState("need {n: int}")
        return {"n": raw["n"]}

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        return mine if mine["n"] >= theirs["n"] else theirs

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        return self.respond(mine, theirs, ctx)

    def tick(self, mine: State, ctx: Context) -> State:
        return mine

    def summary(self, state: State) -> Summary:
        return {"generation": state["n"], "target": None, "holding": None, "epoch": None}


class NotABehavior:
    name = "broken"
