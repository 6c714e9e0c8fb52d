"""Fixtures of the monitoring tests: real local loops scraped by a real Prometheus.

The Prometheus is the one `make tools` builds from the Go module
github.com/prometheus/prometheus into ~/.cache/reactive-loop/bin (or
$RL_CACHE/bin), with its promtool. Without it the tests fail; they never skip.

No cluster: `reactive-loop run` starts real node processes on
127.0.0.1; Prometheus scrapes them with static targets that carry a
`namespace` label, as Kubernetes service discovery would add, and a
`cluster` label, as a multi-cluster setup's relabelling would. The rules and
the dashboard come from the chart rendered by the real helm. The same
expressions run on kind through the real Prometheus Operator in
tests/kind/test_monitoring.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from chart.helmchart import find_helm, render_chart
from monitoring.localloops import (
    CLUSTER,
    NAMESPACE,
    REACTIVE_LOOP,
    LocalLoop,
    resume,
    start_loop,
    stop_loop,
)
from monitoring.promql import TEST_RULE_VALUES, Prometheus, find_prometheus, promtool


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[str, str]:
    try:
        return find_prometheus()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def rendered_monitoring(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The PrometheusRule spec and the dashboard, rendered by the real helm."""
    manifests = render_chart(
        find_helm(), sets=TEST_RULE_VALUES, tmp=tmp_path_factory.mktemp("render")
    )
    rule = next(m for m in manifests if m["kind"] == "PrometheusRule")
    cm = next(
        m
        for m in manifests
        if m["kind"] == "ConfigMap" and "grafana_dashboard" in m["metadata"]["labels"]
    )
    return {"rules": rule["spec"], "dashboard": json.loads(cm["data"]["reactive-loop.json"])}


@pytest.fixture(scope="session")
def local_loops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalLoop]]:
    """A converge ring, a token ring, and a small ring the stall test cuts."""
    workdir = tmp_path_factory.mktemp("loops")
    loops: dict[str, LocalLoop] = {}
    try:
        for name, behavior, nodes in (
            ("conv", "converge", 3),
            ("tok", "token", 3),
            ("stall", "converge", 2),
        ):
            loops[name] = start_loop(workdir, name, behavior, nodes, interval=0.5)
        # A real target, so generations and state writes move.
        subprocess.run(
            [
                REACTIVE_LOOP,
                "set-target",
                '{"message": "hello"}',
                "--state-dir",
                str(loops["conv"].state_dir),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield loops
    finally:
        for loop in loops.values():
            resume(loop)
            stop_loop(loop)


@pytest.fixture(scope="session")
def prometheus(
    prometheus_binaries: tuple[str, str],
    rendered_monitoring: dict[str, Any],
    local_loops: dict[str, LocalLoop],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rendered_monitoring["rules"]))
    targets = [a for loop in local_loops.values() for a in loop.addresses]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "reactive-loop-nodes",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": targets, "labels": {"namespace": NAMESPACE, "cluster": CLUSTER}}
                ],
            }
        ],
    }
    prom = Prometheus(prometheus_binaries[0], workdir, config)
    checked = promtool(prometheus_binaries[1], "check", "config", str(prom.config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    prom.start()
    try:
        # Ready when every target is up and rates have two samples to work with.
        up = prom.poll(
            'sum(up{job="reactive-loop-nodes"})',
            60,
            lambda r: r and float(r[0]["value"][1]) == len(targets),
        )
        assert up, "no target was scraped"
        assert float(up[0]["value"][1]) == len(targets), f"targets not up: {up}"
        prom.poll("sum(rate(reactive_loop_loops_total[10s])) > 0", 60)
        yield prom
    finally:
        prom.stop()
