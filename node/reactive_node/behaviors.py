"""The public API for writing a behaviour (docs/custom-behavior.md).

A user's behaviour class imports what it needs from here; the node's own
modules import `reactive_node.core.behaviors`, where these names live. This
module only re-exports them, so that the package's layout can change without
breaking users' code.
"""

from __future__ import annotations

from .core.behaviors import (
    Behavior,
    BehaviorLoadError,
    Context,
    Converge,
    Injection,
    InvalidState,
    PeerHinting,
    Settings,
    State,
    Summary,
    TargetTaking,
    Token,
    as_injection,
    canonical,
    load_behavior,
    peer_hint,
    takes_target,
)

__all__ = [
    "Behavior",
    "BehaviorLoadError",
    "Context",
    "Converge",
    "Injection",
    "InvalidState",
    "PeerHinting",
    "Settings",
    "State",
    "Summary",
    "TargetTaking",
    "Token",
    "as_injection",
    "canonical",
    "load_behavior",
    "peer_hint",
    "takes_target",
]
