"""The dashboard is code: the checked-in JSON is what the generator makes, byte
for byte, and every query follows the dashboard's cluster and namespace."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "reactive-loop" / "dashboards"
GENERATOR = DASHBOARDS / "reactive_loop_dashboard.py"
REGENERATE = (
    "make dashboard (or: .venv/bin/python " + str(GENERATOR.relative_to(GENERATOR.parents[3])) + ")"
)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reactive_loop_dashboard", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked_in() -> dict[str, Any]:
    doc = json.loads((DASHBOARDS / "reactive-loop.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_the_checked_in_json_is_the_generated_one() -> None:
    generated = generator().render()
    on_disk = (DASHBOARDS / "reactive-loop.json").read_text()
    assert on_disk == generated, f"reactive-loop.json differs from its generator: run {REGENERATE}"


def test_the_generator_check_mode_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = generator()
    assert module.main(["gen", "--check"]) == 0
    monkeypatch.setattr(module, "OUTPUT", tmp_path / "reactive-loop.json")
    module.OUTPUT.write_text("{}\n")
    assert module.main(["gen", "--check"]) == 1
    assert module.main(["gen"]) == 0
    assert module.OUTPUT.read_text() == module.render()


def test_variables_cluster_namespace_loop_default_to_everything() -> None:
    variables = {v["name"]: v for v in checked_in()["templating"]["list"]}
    assert list(variables) == ["datasource", "cluster", "namespace", "loop"]
    for name in ("cluster", "namespace", "loop"):
        v = variables[name]
        assert v["includeAll"] is True, name
        assert v["multi"] is True, name
        # `.*` also matches a series without the label: one unlabelled cluster sees data.
        assert v["allValue"] == ".*", name
        assert "label_values(reactive_loop_node_info" in v["query"], name
    assert 'cluster=~"$cluster"' in variables["namespace"]["query"]
    assert 'namespace=~"$namespace"' in variables["loop"]["query"]


def test_every_query_follows_cluster_and_namespace() -> None:
    targets = [
        (p["title"], t["expr"]) for p in checked_in()["panels"] for t in p.get("targets", [])
    ]
    assert len(targets) >= 20
    for title, expr in targets:
        selectors = re.findall(r"reactive_loop_\w+\{([^}]*)\}", expr)
        metrics = re.findall(r"reactive_loop_\w+", expr)
        assert len(selectors) == len(metrics), (title, "a metric without a selector", expr)
        for selector in selectors:
            assert 'cluster=~"$cluster"' in selector, (title, expr)
            if "reactive_loop_operator_" in expr:
                # The operator's own `namespace` is where it runs; its series
                # name the loop's namespace `loop_namespace`.
                assert 'loop_namespace=~"$namespace"' in selector, (title, expr)
            else:
                assert 'namespace=~"$namespace"' in selector, (title, expr)
                assert 'loop=~"$loop"' in selector, (title, expr)


def test_panel_ids_are_unique_and_rows_come_first() -> None:
    panels = checked_in()["panels"]
    ids = [p["id"] for p in panels]
    assert ids == sorted(set(ids)), ids
    assert panels[0]["type"] == "row"
