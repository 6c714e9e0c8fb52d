"""Fixtures of the kind tier (`make test-kind`; docs/testing.md).

The tier runs after `make kind-up deploy demo`: the cluster, the release and
the example loops are the README's quickstart, made by the Makefile exactly as
a user makes them. If that cluster is not there, every test here fails with
the reason; none is skipped.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from kind.kindcluster import Kind, KindError

CLUSTER = os.environ.get("KIND_CLUSTER", "reactive-loop")
RELEASE = os.environ.get("RELEASE", "reactive-loop")
RELEASE_NAMESPACE = os.environ.get("RELEASE_NAMESPACE", "reactive-loop-system")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")


@pytest.fixture(scope="session")
def kind() -> Kind:
    cluster = Kind(CLUSTER)
    try:
        contexts = cluster.kubectl("config", "get-contexts", "-o", "name").stdout.split()
        if cluster.context not in contexts:
            raise KindError(f"no kube context {cluster.context}")
        cluster.kubectl("get", "--raw", "/readyz", timeout=20)
    except (KindError, OSError) as e:
        pytest.fail(
            f"the kind cluster {CLUSTER} is not up ({e}): run `make kind-up deploy demo`",
            pytrace=False,
        )
    return cluster


@pytest.fixture
def namespace(kind: Kind, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that enforces the `restricted` Pod Security Standard."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"k-{base}-{secrets.token_hex(2)}"
    kind.kubectl("create", "namespace", name)
    kind.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    yield name
    kind.kubectl("delete", "namespace", name, "--wait=false", check=False)
