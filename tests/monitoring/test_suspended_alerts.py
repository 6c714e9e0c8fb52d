"""The alerts leave suspended nodes out (`spec.suspend`: a node makes no round
trip on purpose), checked with `promtool test rules` on the rendered rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from monitoring.promql import promtool


def rule_expr(rules: dict[str, Any], alert: str) -> str:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return str(rule["expr"])
    raise AssertionError(f"no alert {alert}")


def test_stalled_and_token_lost_skip_suspended_nodes(
    prometheus_binaries: tuple[str, str], rendered_monitoring: dict[str, Any], tmp_path: Path
) -> None:
    rules = rendered_monitoring["rules"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    node = 'namespace="ns",loop="{0}",node="{0}-0"'
    series = []
    for loop, suspended in (("paused", 1), ("stuck", 0), ("tpaused", 1), ("tlost", 0)):
        labels = node.format(loop)
        series += [
            {"series": f"reactive_loop_last_loop_timestamp_seconds{{{labels}}}", "values": "0x10"},
            {
                "series": f'reactive_loop_node_phase{{{labels},phase="suspended"}}',
                "values": f"{suspended}x10",
            },
        ]
        if loop.startswith("t"):
            series += [
                {"series": f"reactive_loop_token_holder{{{labels}}}", "values": "0x10"},
                {
                    "series": f'reactive_loop_node_info{{{labels},behavior="token"}}',
                    "values": "1x10",
                },
            ]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": rule_expr(rules, "ReactiveLoopStalled"),
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": "{" + node.format(loop) + "}", "value": 300}
                            for loop in ("stuck", "tlost")
                        ],
                    },
                    {
                        "expr": rule_expr(rules, "ReactiveLoopTokenLost"),
                        "eval_time": "5m",
                        "exp_samples": [{"labels": '{namespace="ns",loop="tlost"}', "value": 0}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = promtool(prometheus_binaries[1], "test", "rules", str(tmp_path / "tests.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
