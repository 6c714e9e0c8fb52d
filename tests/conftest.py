"""Shared pytest fixtures: the local control plane (docs/testing.md).

Mark cluster tests `@pytest.mark.cluster` (a test that uses the fixtures gets
the marker automatically). They are never skipped: if the control plane cannot
start, the session fails with the reason, in CI (CI=true) and outside.

The local cluster is a real etcd, kube-apiserver and kube-controller-manager
with no node: tests here use the API (schema, CEL, admission, RBAC), never
pods. Tests with pods run on kind (tests/kind, its own conftest).

Fixtures
- `local_cluster` (session) -> `localcluster.Cluster`: starts the control plane
  like `make cluster-up` or reuses a running one. It is left running at the
  end (other sessions may share it; `make cluster-down` stops it), unless
  RL_CLUSTER_TEARDOWN=1 and this session started it.
- `cluster` -> the same `Cluster`, for brevity.
- `namespace` -> str: a fresh namespace for this test (its `default`
  ServiceAccount already exists), deleted afterwards.

`Cluster` API (tests/localcluster/cluster.py)
- `kubeconfig: Path`, `env: dict` (KUBECONFIG + PATH with kubectl/helm),
  `cfg: ClusterConfig` (paths, ports)
- `kubectl(*args, check=True, input=None, timeout=60) -> CompletedProcess[str]`
- `helm(*args, check=True, input=None, timeout=180) -> CompletedProcess[str]`
- `create_namespace(name, *labels)` (waits for its default ServiceAccount),
  `apply(yaml_text, namespace=None)`, `get(kind, name=None, namespace=None) -> dict | None`
- `wait_for(condition, timeout=30, interval=0.2, what="...") -> value`: polls until
  truthy, raises `WaitTimeout` (an AssertionError) with `what` otherwise
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from localcluster import Cluster, control
from localcluster.config import ClusterConfig

CLUSTER_FIXTURES = {"local_cluster", "cluster", "namespace"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[Cluster]:
    cfg = ClusterConfig.default()
    started = False
    if not control.healthy(cfg):
        try:
            control.up(cfg)
        except (control.ClusterError, OSError) as e:
            where = "in CI" if os.environ.get("CI") == "true" else "here"
            pytest.fail(f"the local cluster could not start {where}: {e}", pytrace=False)
        started = True
    yield Cluster(cfg)
    if started and os.environ.get("RL_CLUSTER_TEARDOWN") == "1":
        control.down(cfg)


@pytest.fixture
def cluster(local_cluster: Cluster) -> Cluster:
    return local_cluster


@pytest.fixture
def namespace(local_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(2)}"
    local_cluster.create_namespace(name, "reactive-loop.dev/test=true")
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
