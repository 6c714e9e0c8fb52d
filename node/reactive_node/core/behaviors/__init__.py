"""Behaviours: pure functions of (my state, their state, context) -> next state.

`load_behavior(spec)` turns the configured name into an instance: `converge`,
`token`, or `python:package.module:Class` for a user's own class implementing
the `Behavior` protocol.
"""

from __future__ import annotations

import importlib

from .base import (
    Behavior,
    Context,
    Injection,
    InvalidState,
    PeerHinting,
    Settings,
    State,
    Summary,
    TargetTaking,
    as_injection,
    canonical,
    peer_hint,
    takes_target,
)
from .converge import Converge
from .token import Token

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

BUILTIN: dict[str, type[Converge] | type[Token]] = {"converge": Converge, "token": Token}
PYTHON_PREFIX = "python:"


class BehaviorLoadError(ValueError):
    """The configured behaviour cannot be loaded (unknown name, bad class)."""


def load_behavior(spec: str) -> Behavior:
    """Instantiate the behaviour named by `spec`."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if not spec.startswith(PYTHON_PREFIX):
        raise BehaviorLoadError(
            f"unknown behaviour {spec!r}: use converge, token or python:package.module:Class"
        )
    target = spec[len(PYTHON_PREFIX) :]
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise BehaviorLoadError(f"custom behaviour {spec!r} must be python:package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BehaviorLoadError(f"cannot import {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise BehaviorLoadError(f"{module_name!r} has no class {class_name!r}")
    try:
        instance = cls()
    except Exception as e:
        raise BehaviorLoadError(f"cannot instantiate {target!r}: {e}") from e
    if not isinstance(instance, Behavior):
        raise BehaviorLoadError(
            f"{target!r} does not implement the Behavior protocol "
            "(name, initial, validate, respond, react, tick, summary)"
        )
    return instance
