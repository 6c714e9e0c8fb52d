"""Health/metrics server of the operator, and the pod view the handlers build."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from reactive_node.core import contract as c
from reactive_operator.main import Health, create_app
from reactive_operator.metrics import OperatorMetrics
from reactive_operator.plan import pod_view


@pytest.fixture
async def served() -> AsyncIterator[
    tuple[TestClient[web.Request, web.Application], Health, OperatorMetrics]
]:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    health = Health()
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(registry, health))
    )
    await client.start_server()
    try:
        yield client, health, metrics
    finally:
        await client.close()


async def test_readiness_follows_the_phase(
    served: tuple[TestClient[web.Request, web.Application], Health, OperatorMetrics],
) -> None:
    client, health, _ = served
    assert (await client.get(c.HEALTH_PATH)).status == 200
    assert (await client.get(c.READY_PATH)).status == 503  # starting
    health.phase = "standby"
    assert (await client.get(c.READY_PATH)).status == 200
    health.phase = "leading"
    r = await client.get(c.READY_PATH)
    assert r.status == 503  # kopf not ready yet
    health.kopf_ready.set()
    r = await client.get(c.READY_PATH)
    assert r.status == 200
    assert (await r.json())["phase"] == "leading"


async def test_metrics_use_the_contract_names(
    served: tuple[TestClient[web.Request, web.Application], Health, OperatorMetrics],
) -> None:
    client, _, metrics = served
    metrics.reconciles.labels(result="ok").inc(3)
    metrics.namespace_seen("team-a")
    metrics.injections.labels("team-a", "failed").inc()
    metrics.set_loops(["team-a", "team-a"])
    metrics.reconcile_seconds.labels("team-a", "ok").observe(0.02)
    text = await (await client.get(c.METRICS_PATH)).text()
    assert f'{c.M_OP_RECONCILES}{{result="ok"}} 3.0' in text
    assert f'{c.M_OP_RECONCILES}{{result="error"}} 0.0' in text
    assert f'{c.M_OP_INJECTIONS}{{loop_namespace="team-a",result="failed"}} 1.0' in text
    assert f'{c.M_OP_INJECTIONS}{{loop_namespace="team-a",result="ok"}} 0.0' in text
    assert f'{c.M_OP_LOOPS}{{loop_namespace="team-a"}} 2.0' in text
    count = f"{c.M_OP_RECONCILE_SECONDS}_count"
    assert f'{count}{{loop_namespace="team-a",result="ok"}} 1.0' in text
    assert f'{count}{{loop_namespace="team-a",result="error"}} 0.0' in text
    metrics.set_loops([])  # the last loop of the namespace went: 0, not a vanished series
    text = await (await client.get(c.METRICS_PATH)).text()
    assert f'{c.M_OP_LOOPS}{{loop_namespace="team-a"}} 0.0' in text


def test_pod_view_reads_labels_annotations_and_status() -> None:
    view = pod_view(
        "demo-3",
        {c.ORDINAL_LABEL: "3", c.LOOP_LABEL: "demo"},
        {c.SPEC_HASH_ANNOTATION: "abc", c.REPLICAS_ANNOTATION: "5"},
        {"deletionTimestamp": None},
        {
            "phase": "Running",
            "podIP": "10.77.0.9",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    assert view is not None
    assert view.ordinal == 3
    assert view.spec_hash == "abc"
    assert view.replicas_annotation == "5"
    assert view.ready is True
    assert view.deleting is False
    assert view.ip == "10.77.0.9"
    gone = pod_view("demo-3", {c.ORDINAL_LABEL: "3"}, {}, {"deletionTimestamp": "t"}, {})
    assert gone is not None
    assert gone.deleting is True
    assert gone.ready is False
    assert pod_view("x", {c.ORDINAL_LABEL: "three"}, {}, {}, {}) is None
