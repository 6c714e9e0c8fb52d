"""What a node has decided now, as data (pure): the document of the decision file.

The file itself (where it lives, how it is written) is
`reactive_node.runtime.decision`; docs/node.md, "The decision file".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .behaviors import Summary

#: The document's schema version (a reader refuses others).
DECISION_VERSION: Final = 1


def decision_of(behavior: str, summary: Summary, acting: list[int] | None) -> dict[str, Any]:
    """The decision of a node whose behaviour `behavior` summarises its state as
    `summary`; `acting` is the epoch a token node acts on now (None: it does not)."""
    if behavior == "converge":
        return {"generation": summary["generation"], "target": summary["target"]}
    if behavior == "token":
        return {"holding": acting is not None, "epoch": None if acting is None else list(acting)}
    return dict(summary)


def document(
    *, loop: str, node: str, behavior: str, decision: Mapping[str, Any], changed_at: float
) -> dict[str, Any]:
    """The whole file's content."""
    return {
        "version": DECISION_VERSION,
        "loop": loop,
        "node": node,
        "behavior": behavior,
        "changedAt": changed_at,
        "decision": dict(decision),
    }
