"""converge: spread the newest desired target to every node.

The state is `{"generation": int, "target": any JSON}`. Merging keeps the
higher generation; if two states ever share a generation with different
targets (two injections racing), the larger canonical JSON text of the target
wins, so every node ends on the same pair whatever order it hears them in.
The merge is commutative, associative and idempotent, which is why a lost or
duplicated answer never harms: the next round trip repairs it.
"""

from __future__ import annotations

import json
from typing import Any

from ..contract import MAX_STATE_INT
from .base import Context, InvalidState, State, Summary, canonical

#: A target larger than this (canonical JSON) is refused: state lives in an
#: annotation, and annotations of a pod share 256 KiB.
MAX_TARGET_BYTES = 16 * 1024
_FIELDS = frozenset(("generation", "target"))


def merge(a: State, b: State) -> State:
    """The newer of two converge states (ties broken by canonical target)."""
    ga, gb = int(a["generation"]), int(b["generation"])
    if ga != gb:
        return a if ga > gb else b
    if a["target"] == b["target"]:
        return a
    # Only two different targets of one generation need the canonical text.
    return a if canonical(a["target"]) >= canonical(b["target"]) else b


class Converge:
    """The built-in converge behaviour."""

    name = "converge"

    def __init__(self) -> None:
        self._measured: Any = None
        """The last target that passed the size check (a cache; no state)."""

    def initial(self, ctx: Context) -> State:
        return {"generation": 0, "target": None}

    def validate(self, raw: Any) -> State:
        if not isinstance(raw, dict):
            raise InvalidState("converge state must be a JSON object")
        extra = raw.keys() - _FIELDS
        if extra:
            raise InvalidState(f"converge state has unknown fields: {sorted(extra)}")
        generation = raw.get("generation")
        if type(generation) is not int or not 0 <= generation <= MAX_STATE_INT:
            raise InvalidState(f"converge state needs an integer generation 0..{MAX_STATE_INT}")
        if "target" not in raw:
            raise InvalidState("converge state needs a target (may be null)")
        target = raw["target"]
        if target is None or type(target) in (bool, int, float):
            return {"generation": generation, "target": target}
        if target == self._measured:
            # The same target as last time (the steady state): its size is known good.
            return {"generation": generation, "target": target}
        try:
            size = len(json.dumps(raw["target"], separators=(",", ":")).encode())
        except (TypeError, ValueError) as e:
            raise InvalidState(f"converge target is not JSON: {e}") from e
        if size > MAX_TARGET_BYTES:
            raise InvalidState(f"converge target is {size} bytes, limit {MAX_TARGET_BYTES}")
        self._measured = target
        return {"generation": generation, "target": target}

    def respond(self, mine: State, theirs: State, ctx: Context) -> State:
        return merge(mine, theirs)

    def react(self, mine: State, theirs: State, ctx: Context) -> State:
        return merge(mine, theirs)

    def tick(self, mine: State, ctx: Context) -> State:
        return mine

    def summary(self, state: State) -> Summary:
        return {
            "generation": int(state["generation"]),
            "target": state["target"],
            "holding": None,
            "epoch": None,
        }
