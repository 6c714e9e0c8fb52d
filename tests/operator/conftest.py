"""Fixtures for the operator's tests on the local cluster.

- `crd` (session): applies charts/reactive-loop/crds/reactiveloops.yaml with
  the real kubectl and waits until it is Established.
- `loops_ns` (session): a namespace that enforces Pod Security `restricted`,
  where the operator and every test loop run.

The operator itself and the per-test loop helper live in test_operator_e2e.py
(a conftest in this folder cannot be imported by name: tests/conftest.py is).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "reactive-loop" / "crds" / "reactiveloops.yaml"


@pytest.fixture(scope="session")
def crd(local_cluster: Cluster) -> str:
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    local_cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/reactiveloops.reactive-loop.dev",
        "--timeout=60s",
    )
    return "reactiveloops.reactive-loop.dev"


@pytest.fixture(scope="session")
def loops_ns(local_cluster: Cluster, crd: str) -> Iterator[str]:
    name = f"rl-op-{secrets.token_hex(3)}"
    local_cluster.create_namespace(
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "reactive-loop.dev/test=true",
    )
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
