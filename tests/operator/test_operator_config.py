"""Operator configuration from RLO_* variables; leader-election decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from reactive_operator.config import ConfigError, load
from reactive_operator.kube import LeaseRecord
from reactive_operator.leader import may_take


def test_defaults() -> None:
    cfg = load({})
    assert cfg.namespaces == ()
    assert cfg.leader_election is True
    assert cfg.resync_seconds == 2.0


def test_values_are_read() -> None:
    cfg = load(
        {
            "RLO_NAMESPACES": "a, b",
            "RLO_NODE_IMAGE": "img:1",
            "RLO_RESYNC_SECONDS": "2.5",
            "RLO_LEADER_ELECTION": "false",
            "RLO_SCRAPER_POD_LABELS": "app=prom,team=x",
        }
    )
    assert cfg.namespaces == ("a", "b")
    assert cfg.node_image == "img:1"
    assert cfg.resync_seconds == 2.5
    assert cfg.leader_election is False
    assert cfg.scraper_pod_labels == (("app", "prom"), ("team", "x"))


@pytest.mark.parametrize(
    "env",
    [
        {"RLO_RESYNC_SECONDS": "soon"},
        {"RLO_RESYNC_SECONDS": "0"},
        {"RLO_NODE_IMAGE_PULL_POLICY": "Sometimes"},
        {"RLO_LEADER_ELECTION": "maybe"},
        {"RLO_SCRAPER_POD_LABELS": "novalue"},
    ],
)
def test_bad_values_fail_clearly(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="RLO_"):
        load(env)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def lease(holder: str | None, age: float, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, NOW - timedelta(seconds=age), duration, "1", 0)


def test_lease_decisions() -> None:
    assert may_take(None, "me", NOW)
    assert may_take(lease("me", 100), "me", NOW)
    assert may_take(lease(None, 0), "me", NOW)
    assert not may_take(lease("other", 5), "me", NOW)
    assert may_take(lease("other", 15), "me", NOW)
