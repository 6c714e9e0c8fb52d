"""The contract's names and limits: one home, and its type and values agree."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest
from reactive_node import cli
from reactive_node.core import contract, topology
from reactive_node.core.behaviors import BUILTIN
from reactive_node.local.runfile import node_name as local_node_name
from reactive_node.runtime.config import make_config


def test_topology_type_and_values_name_the_same_topologies() -> None:
    assert get_args(contract.TopologyName) == contract.TOPOLOGIES
    assert topology.TOPOLOGIES is contract.TOPOLOGIES


def test_builtin_behaviours_are_the_contracts() -> None:
    assert tuple(BUILTIN) == contract.BEHAVIORS


def test_one_node_name_rule() -> None:
    assert contract.node_name("demo", 3) == "demo-3"
    assert local_node_name("demo", 3) == "demo-3"
    assert make_config({"loop": "demo", "ordinal": 0}).node_name(7) == "demo-7"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("local", True),
        ("Demo-2", True),
        ("", False),
        ("a b", False),
        ("a" * 63, True),
        ("a" * 64, False),
    ],
)
def test_local_loop_names(name: str, ok: bool) -> None:
    assert contract.is_local_loop_name(name) is ok


def test_the_cli_takes_its_choices_and_limits_from_the_contract() -> None:
    parser = cli.build_parser()
    run = next(
        a.choices[name]
        for a in parser._actions
        if isinstance(a, argparse._SubParsersAction)
        for name in a.choices
        if name == "run"
    )
    options = {o.dest: o for o in run._actions}
    assert tuple(options["behavior"].choices or ()) == contract.BEHAVIORS
    assert tuple(options["topology"].choices or ()) == contract.TOPOLOGIES
    assert cli._node_count(str(contract.MAX_REPLICAS)) == contract.MAX_REPLICAS
    with pytest.raises(argparse.ArgumentTypeError, match=f"between 1 and {contract.MAX_REPLICAS}"):
        cli._node_count(str(contract.MAX_REPLICAS + 1))
