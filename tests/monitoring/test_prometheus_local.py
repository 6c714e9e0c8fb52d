"""Stage 1: the shipped PromQL against a real Prometheus scraping real local nodes.

Every expression of the alert rules (each side of the final comparison, see
docs/monitoring.md) and every target of the dashboard must return data. The
operator's expressions need a running operator, which needs Kubernetes; here
they must be valid PromQL, and tests/kind/test_monitoring.py checks on kind,
through the real Prometheus Operator, that they return data.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring.localloops import CLUSTER, NAMESPACE, LocalLoop, resume
from monitoring.promql import (
    Expression,
    Prometheus,
    dashboard_expressions,
    promtool,
    rule_expressions,
    split_comparison,
    variable_queries,
)
from reactive_node.core import contract

pytestmark = [pytest.mark.prometheus, pytest.mark.processes]


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def check_returns_data(prometheus: Prometheus, expressions: list[Expression]) -> None:
    empty = []
    for e in expressions:
        if e.needs_operator:
            prometheus.query(e.expr)  # valid PromQL; data is checked on the cluster
            continue
        if not prometheus.poll(e.expr, deadline_s=20):
            empty.append(f"{e.origin}: {e.expr}")
    assert not empty, "expressions without data:\n" + "\n".join(empty)


def test_split_comparison_finds_the_top_level_operator_only() -> None:
    assert split_comparison('sum(rate(x{a=~"b>c"}[5m])) > 0') == (
        'sum(rate(x{a=~"b>c"}[5m]))',
        ">",
        "0",
    )
    assert split_comparison("a - b >= c") == ("a - b", ">=", "c")
    assert split_comparison("sum by (x) (a)") is None


def test_promtool_accepts_the_rendered_rules(
    prometheus_binaries: tuple[str, str], rendered_monitoring: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered_monitoring["rules"]))
    proc = promtool(prometheus_binaries[1], "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = sum(len(g["rules"]) for g in rendered_monitoring["rules"]["groups"])
    assert f"{count} rules found" in proc.stdout


def test_prometheus_evaluates_every_rule_without_error(
    prometheus: Prometheus, rendered_monitoring: dict[str, Any]
) -> None:
    wanted = {r["alert"] for g in rendered_monitoring["rules"]["groups"] for r in g["rules"]}

    def evaluated(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            r["name"]: r
            for g in groups
            for r in g["rules"]
            if r.get("lastEvaluation", "").startswith("2")
        }

    rules: dict[str, dict[str, Any]] = {}
    for _ in range(40):  # bounded: a rule group evaluates every second
        rules = evaluated(prometheus.api("rules")["groups"])
        if wanted <= set(rules):
            break
        prometheus.poll("vector(1)", 0.5, lambda r: False)
    assert wanted <= set(rules), f"not evaluated: {wanted - set(rules)}"
    for name in wanted:
        assert rules[name]["health"] == "ok", (name, rules[name].get("lastError"))


def test_every_alert_expression_returns_data(
    prometheus: Prometheus, rendered_monitoring: dict[str, Any]
) -> None:
    expressions = rule_expressions(rendered_monitoring["rules"])
    assert len(expressions) >= 7
    check_returns_data(prometheus, expressions)


def test_every_dashboard_expression_returns_data(
    prometheus: Prometheus, rendered_monitoring: dict[str, Any]
) -> None:
    expressions = dashboard_expressions(rendered_monitoring["dashboard"])
    assert len(expressions) >= 20
    assert all("$" not in e.expr for e in expressions), "a Grafana variable was left"
    check_returns_data(prometheus, expressions)


def test_dashboard_variables_list_the_namespace_and_the_loops(
    prometheus: Prometheus, rendered_monitoring: dict[str, Any]
) -> None:
    found = {}
    for name, series, label in variable_queries(rendered_monitoring["dashboard"]):
        result = prometheus.poll(series, 20)
        found[name] = {s["metric"].get(label) for s in result}
    assert found["cluster"] == {CLUSTER}
    assert found["namespace"] == {NAMESPACE}
    assert found["loop"] == {"conv", "tok", "stall"}


def test_the_dashboard_follows_the_selected_cluster_and_namespace(
    prometheus: Prometheus, rendered_monitoring: dict[str, Any]
) -> None:
    """Selected by name, every node expression still returns data; selecting
    another cluster or namespace empties every one of them (none ignores it)."""
    dashboard = rendered_monitoring["dashboard"]
    chosen = {"$cluster": CLUSTER, "$namespace": NAMESPACE, "$loop": "conv|tok|stall"}
    check_returns_data(prometheus, dashboard_expressions(dashboard, chosen))
    for other in ({"$cluster": "elsewhere"}, {"$namespace": "elsewhere"}):
        for e in dashboard_expressions(dashboard, {**chosen, **other}):
            # Aggregations of nothing are nothing (`time() - max(...)` too).
            assert not prometheus.query(e.expr), (other, e.origin)


def test_the_numbers_behind_the_panels_are_those_of_a_healthy_loop(
    prometheus: Prometheus,
) -> None:
    loops = prometheus.poll(
        "sum by (loop) (rate(reactive_loop_loops_total[10s])) > 0", 30, lambda r: len(r) == 3
    )
    assert {s["metric"]["loop"] for s in loops} == {"conv", "tok", "stall"}
    reasons = prometheus.query('count by (reason) (reactive_loop_waits_total{loop="conv"})')
    assert {s["metric"]["reason"] for s in reasons} == set(contract.WAIT_REASONS)
    # set-target gave generation 1 or more; the whole ring converges on it.
    spread = prometheus.poll(
        'max(reactive_loop_converge_generation{loop="conv"}) - '
        'min(reactive_loop_converge_generation{loop="conv"})',
        30,
        lambda r: r and value(r[0]) == 0,
    )
    assert value(spread[0]) == 0
    generation = prometheus.query('min(reactive_loop_converge_generation{loop="conv"})')
    assert value(generation[0]) >= 1
    writes = prometheus.query('sum(reactive_loop_state_writes_total{loop="conv", result="ok"})')
    assert value(writes[0]) >= 3  # every node persisted the new target
    holders = prometheus.poll(
        'sum(reactive_loop_token_holder{loop="tok"})', 30, lambda r: r and value(r[0]) == 1
    )
    assert value(holders[0]) == 1
    p50 = prometheus.query(
        "histogram_quantile(0.5, sum by (le) (rate(reactive_loop_roundtrip_duration_seconds_bucket"
        '{loop="conv"}[10s])))'
    )
    assert 0 < value(p50[0]) < 1.0


def firing(prometheus: Prometheus, alert: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == alert
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def test_stall_alert_fires_when_a_node_is_cut_off_and_resolves(
    prometheus: Prometheus, local_loops: dict[str, LocalLoop]
) -> None:
    stall = local_loops["stall"]
    pids = stall.pids()
    victim = pids[1]
    assert victim is not None
    assert not firing(prometheus, "ReactiveLoopStalled", loop="stall")
    # Freeze stall-1: stall-0's round trips time out, it can only wait.
    os.kill(victim, signal.SIGSTOP)
    try:
        alerts = prometheus.poll(
            'ALERTS{alertname="ReactiveLoopStalled", alertstate="firing", loop="stall"}',
            60,
        )
        assert [a["metric"]["node"] for a in alerts] == ["stall-0"], alerts
        assert firing(prometheus, "ReactiveLoopStalled", loop="stall", node="stall-0")
        # Only the stalled node: the healthy ring stays quiet.
        assert not firing(prometheus, "ReactiveLoopStalled", loop="conv")
        waits = prometheus.query(
            'sum(increase(reactive_loop_waits_total{loop="stall", node="stall-0"}[10s]))'
        )
        assert value(waits[0]) > 0
    finally:
        resume(stall)
    cleared = prometheus.poll(
        'ALERTS{alertname="ReactiveLoopStalled", alertstate="firing", loop="stall"}',
        60,
        lambda r: not r,
    )
    assert not cleared, "the alert did not resolve after the node came back"
