"""Fixtures for the operator's tests on the local cluster.

- `crd` (session): applies charts/reactive-loop/crds/reactiveloops.yaml with
  the real kubectl and waits until it is Established.

The operator's end-to-end and uninstall tests run on kind (tests/kind).
"""

from __future__ import annotations

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
