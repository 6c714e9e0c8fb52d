"""Spec validation: defaults, cross-field rules, what only the operator can check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactive_node.core.contract import MAX_STATE_INT
from reactive_operator.spec import (
    MAX_TARGET_BYTES,
    SpecError,
    check_name,
    parse_spec,
    target_digest,
)


def test_defaults_fill_everything() -> None:
    spec = parse_spec({})
    assert spec.replicas == 3
    assert spec.behavior == "converge"
    assert spec.topology == "ring"
    assert spec.loop.interval == 1.0
    assert spec.loop.timeout < spec.loop.interval
    assert spec.auth.hmac is False


def test_camel_case_fields_are_read() -> None:
    spec = parse_spec(
        {
            "behavior": "token",
            "token": {"holdSeconds": 0.5, "lossTimeoutSeconds": 4, "webhook": "http://fence:9/x"},
            "loop": {"interval": 0.5, "timeout": 0.2, "maxBackoff": 3, "ringSkip": 1},
            "imagePullPolicy": "Never",
            "nodeSelector": {"disk": "ssd"},
        }
    )
    assert spec.token.hold_seconds == 0.5
    assert spec.token.loss_timeout_seconds == 4
    assert spec.loop.max_backoff == 3
    assert spec.loop.ring_skip == 1
    assert spec.image_pull_policy == "Never"
    assert spec.node_selector == {"disk": "ssd"}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"behavior": "token", "topology": "mesh"}, "needs topology 'ring'"),
        ({"loop": {"interval": 1, "timeout": 1}}, "timeout must be smaller"),
        ({"loop": {"interval": 2, "timeout": 1, "maxBackoff": 1}}, "maxBackoff"),
        (
            {"behavior": "token", "token": {"holdSeconds": 5, "lossTimeoutSeconds": 5}},
            "lossTimeout",
        ),
        ({"token": {"webhook": "ftp://x/y"}}, "http(s) URL"),
        ({"token": {"webhook": "http://host:99999/"}}, "invalid port"),
        ({"behavior": "python:not a module"}, "behavior must be"),
        ({"replicas": 0}, "spec.replicas"),
        ({"replicas": 1000}, "spec.replicas"),
        ({"topology": "tree"}, "spec.topology"),
    ],
)
def test_invalid_specs_say_why(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert needle in str(info.value)


def test_custom_behaviour_path_is_accepted() -> None:
    assert parse_spec({"behavior": "python:my_pkg.behaviours:Gossip"}).behavior.startswith(
        "python:"
    )


@given(size=st.integers(min_value=0, max_value=3 * MAX_TARGET_BYTES))
def test_target_size_bound(size: int) -> None:
    target = {"blob": "x" * size}
    serialised = len(f'{{"blob":"{"x" * size}"}}')
    if serialised <= MAX_TARGET_BYTES:
        assert parse_spec({"target": target}).target == target
    else:
        with pytest.raises(SpecError, match="bytes serialised"):
            parse_spec({"target": target})


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6))
def test_target_digest_ignores_key_order(target: dict[str, Any]) -> None:
    reordered = dict(reversed(list(target.items())))
    assert target_digest(target) == target_digest(reordered)


def test_target_digest_changes_with_content() -> None:
    assert target_digest({"a": 1}) != target_digest({"a": 2})


@pytest.mark.parametrize("name", ["demo", "a", "loop-1", "x" * 40])
def test_good_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["Demo", "1abc", "a_b", "x" * 41, "-a", "a-"])
def test_bad_names(name: str) -> None:
    with pytest.raises(SpecError):
        check_name(name)


@given(
    value=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    depth=st.integers(min_value=0, max_value=3000),
)
def test_a_target_a_node_would_refuse_is_an_invalid_spec(value: int | float, depth: int) -> None:
    """The operator never injects what a node answers 400: numbers within ±(2^53-1)
    and at most 31 levels of nesting inside the target (32 in the state)."""
    target: Any = value
    for _ in range(depth):
        target = {"k": target}
    target = {"v": target}  # spec.target is an object: one more level
    depth += 1
    fits = (not isinstance(value, int) or abs(value) <= MAX_STATE_INT) and depth <= 31
    if fits:
        assert parse_spec({"target": target}).target == target
    else:
        with pytest.raises(SpecError, match=r"spec\.target"):
            parse_spec({"target": target})
