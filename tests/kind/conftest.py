"""Fixtures of the kind tier (`make test-kind`; docs/testing.md).

The tier runs after `make kind-up deploy demo`: the cluster, the release and
the example loops are the README's quickstart, made by the Makefile exactly as
a user makes them. If that cluster is not there, every test here fails with
the reason; none is skipped.

Fixtures
- `kind` (session) -> `Kind`: the cluster, through its own kube context.
- `namespace` -> str: a fresh namespace enforcing PSS `restricted`, deleted
  afterwards (the quickstart's operator, which watches every namespace, runs
  the loops made there).
- `fence` (session) -> str: a ValidatingAdmissionPolicy refusing every write
  of the quickstart's operator in namespaces labelled `FENCE_LABEL`, for the
  tests that install an operator of their own (`fenced_namespace`, the e2e
  session's namespace): what happens there is their operator's doing alone.
- `fenced_namespace` -> str: like `namespace`, fenced.
- `operator` (session) -> `e2e.Operator`: the session's own operator release
  (`OPERATOR_RELEASE`) in a fenced `restricted` namespace, watching only it.
- `loops` -> `e2e.Loops`: applies ReactiveLoops in that namespace and deletes
  them (and waits for their pods to go) afterwards.

`install_operator` installs the chart as a user does, with the images loaded
into kind, watching one namespace.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from kind.e2e import OPERATOR_RELEASE, RESYNC_SECONDS, Loops, Operator
from kind.kindcluster import REPO, Kind, KindError

CLUSTER = os.environ.get("KIND_CLUSTER", "reactive-loop")
RELEASE = os.environ.get("RELEASE", "reactive-loop")
RELEASE_NAMESPACE = os.environ.get("RELEASE_NAMESPACE", "reactive-loop-system")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")
CHART = REPO / "charts" / "reactive-loop"
RESTRICTED_LABELS = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/warn=restricted",
)
#: Namespaces where the quickstart's operator may not write (see `fence`).
FENCE_LABEL = "reactive-loop.dev/test-fence=own-operator"


def namespace_name(prefix: str, request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"{prefix}-{base}-{secrets.token_hex(2)}"


def install_operator(kind: Kind, release: str, namespace: str, *sets: str) -> None:
    """`helm install` the chart into `namespace`, watching only it, with the
    images `make deploy` loaded into kind (the CRD is the quickstart's)."""
    args = [
        f"watchNamespaces={{{namespace}}}",
        "operator.image.repository=reactive-loop-operator",
        f"operator.image.tag={IMAGE_TAG}",
        "node.image.repository=reactive-loop-node",
        f"node.image.tag={IMAGE_TAG}",
        "operator.readinessProbe.initialDelaySeconds=0",
        "operator.readinessProbe.periodSeconds=1",
        *sets,
    ]
    kind.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        *(x for a in args for x in ("--set", a)),
    )


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
    name = namespace_name("k", request)
    kind.create_namespace(name, *RESTRICTED_LABELS)
    yield name
    kind.kubectl("delete", "namespace", name, "--wait=false", check=False)


def quickstart_operator_user(kind: Kind) -> str:
    """The user name the quickstart's operator talks to the API server as."""
    deployment = kind.get("deployment", "-n", RELEASE_NAMESPACE, RELEASE)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{account}"


def fenced_out(kind: Kind, user: str, namespace: str) -> bool:
    """Whether the API server refuses a (dry-run) write by `user` in `namespace`."""
    proc = kind.kubectl(
        "create", "service", "clusterip", "fence-probe", "--tcp=80:80", "-n", namespace,
        "--dry-run=server", f"--as={user}",
        check=False,
    )  # fmt: skip
    return proc.returncode != 0 and "fenced out" in proc.stderr


@pytest.fixture(scope="session")
def fence(kind: Kind) -> Iterator[str]:
    """Keep the quickstart's (cluster-wide) operator out of `FENCE_LABEL` namespaces.

    An admission policy takes effect a moment after it is created (the API
    server compiles it and sees its binding), so this waits until a write by
    that operator into a fenced probe namespace is refused."""
    user = quickstart_operator_user(kind)
    with kind.fence_out(user, FENCE_LABEL):
        probe = f"rl-fence-probe-{secrets.token_hex(2)}"
        kind.create_namespace(probe, FENCE_LABEL)
        try:
            kind.wait_for(
                lambda: fenced_out(kind, user, probe), timeout=60, what="the fence to hold"
            )
        finally:
            kind.kubectl("delete", "namespace", probe, "--wait=false", check=False)
        yield FENCE_LABEL


@pytest.fixture
def fenced_namespace(kind: Kind, fence: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh `restricted` namespace the quickstart's operator cannot write in."""
    name = namespace_name("kf", request)
    kind.create_namespace(name, *RESTRICTED_LABELS, fence)
    yield name
    kind.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(kind: Kind, fence: str) -> Iterator[Operator]:
    ns = f"rl-op-{secrets.token_hex(3)}"
    kind.create_namespace(ns, *RESTRICTED_LABELS, fence)
    try:
        # The fence holds: the quickstart's operator may not write here.
        assert fenced_out(kind, quickstart_operator_user(kind), ns), "not fenced out"
        install_operator(kind, OPERATOR_RELEASE, ns, f"operator.resyncSeconds={RESYNC_SECONDS}")
        handle = Operator(kind, ns)
        handle.settle(1)
        yield handle
    finally:
        kind.helm("uninstall", OPERATOR_RELEASE, "--namespace", ns, "--wait", check=False)
        kind.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def loops(kind: Kind, operator: Operator) -> Iterator[Loops]:
    handle = Loops(kind, operator.namespace)
    try:
        yield handle
    finally:
        handle.cleanup()
