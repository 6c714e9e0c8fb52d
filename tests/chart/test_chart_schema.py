"""values.schema.json: typos and bad values fail the install with a clear message."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from chart.helmchart import CHART, HelmError, Render


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        found += walk(child, f"{path}/{key}")
    return found


def test_every_object_in_the_schema_forbids_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = [
        (path, node)
        for path, node in walk(schema)
        if node.get("type") == "object" and "properties" in node
    ]
    assert len(objects) > 10
    for path, node in objects:
        assert node.get("additionalProperties") is False, path or "/"


def test_every_top_level_value_is_in_the_schema() -> None:
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def check(v: Any, s: dict[str, Any], path: str) -> None:
        if isinstance(v, dict) and "properties" in s:
            for key, child in v.items():
                assert key in s["properties"], f"{path}/{key} is not in the schema"
                check(child, s["properties"][key], f"{path}/{key}")

    check(values, schema, "")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["operatr.replicas=2"], "additional properties 'operatr' not allowed"),
        (["operator.replica=2"], "additional properties 'replica' not allowed"),
        (["monitoring.podMonitor.enable=true"], "additional properties 'enable' not allowed"),
        (["monitoring.dashbaord.enabled=true"], "additional properties 'dashbaord' not allowed"),
        (["serviceAccount.create=yes"], "/serviceAccount/create"),
        (["operator.image.pullPolicy=Sometimes"], "/operator/image/pullPolicy"),
        (["operator.port=80"], "/operator/port"),
        (["operator.replicas=-1"], "/operator/replicas"),
        (["monitoring.podMonitor.interval=10 seconds"], "/monitoring/podMonitor/interval"),
        (["watchNamespaces={Team_A}"], "/watchNamespaces/0"),
        (["monitoring.prometheusRule.runbookBaseUrl=docs/monitoring.md"], "runbookBaseUrl"),
        (["service.type=External"], "/service/type"),
        (["operator.logLevel=verbose"], "/operator/logLevel"),
        (["operator.image.repository="], "/operator/image/repository"),
    ],
)
def test_typos_and_bad_values_are_rejected(render: Render, sets: list[str], message: str) -> None:
    with pytest.raises(HelmError) as failed:
        render(sets=sets)
    text = str(failed.value)
    assert "values don't meet the specifications of the schema" in text
    assert message in text


def test_good_overrides_are_accepted(render: Render) -> None:
    manifests = render(
        sets=[
            "operator.replicas=3",
            "operator.image.pullPolicy=Always",
            "monitoring.podMonitor.interval=1m30s",
            "watchNamespaces={team-a}",
            "operator.resources.limits.cpu=500m",
        ]
    )
    assert any(m["kind"] == "Deployment" for m in manifests)


def test_every_value_in_the_schema_is_documented_in_values_yaml() -> None:
    """Each key the schema describes is preceded by a `# --` comment in values.yaml."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = {path for path, _ in walk(schema)} - {""}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = "/" + "/".join(k for _, k in stack)
        if path not in documented:
            continue
        seen.add(path)
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        assert previous.startswith("#"), f"{path} (line {i + 1}) has no comment"
    assert len(seen) > 40


def test_the_chart_readme_lists_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    leaves = [
        path[1:].replace("/", ".")
        for path, node in walk(schema)
        if path and not (node.get("type") == "object" and "properties" in node)
    ]
    missing = [leaf for leaf in leaves if f"| `{leaf}` |" not in readme and leaf != "global"]
    assert not missing, f"values missing from charts/reactive-loop/README.md: {missing}"
