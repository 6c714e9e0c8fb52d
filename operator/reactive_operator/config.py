"""Operator configuration, read once at start from `RLO_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ENV_PREFIX = "RLO_"


class ConfigError(ValueError):
    """A configuration variable has a value the operator cannot use."""


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces (`RLO_NAMESPACES`, comma-separated)."""

    node_image: str = "reactive-loop-node:0.1.0"
    """Image of the node pods when a ReactiveLoop does not name one (`RLO_NODE_IMAGE`)."""

    node_image_pull_policy: str = "IfNotPresent"
    """Default pull policy of the node image (`RLO_NODE_IMAGE_PULL_POLICY`)."""

    port: int = 8080
    """Port of /healthz, /readyz and /metrics (`RLO_PORT`)."""

    bind: str = "0.0.0.0"
    """Address the health and metrics server binds (`RLO_BIND`)."""

    resync_seconds: float = 2.0
    """Period of the status poll and healing resync (`RLO_RESYNC_SECONDS`)."""

    node_timeout_seconds: float = 1.0
    """HTTP timeout asking a node for its state or injecting (`RLO_NODE_TIMEOUT_SECONDS`)."""

    lease_name: str = "reactive-loop-operator"
    """Name of the Lease that elects the active replica (`RLO_LEASE_NAME`)."""

    lease_namespace: str = "default"
    """Namespace of that Lease, normally the operator's own (`RLO_LEASE_NAMESPACE`)."""

    lease_seconds: float = 15.0
    """Lease duration; a standby takes over after it expires (`RLO_LEASE_SECONDS`)."""

    identity: str = field(default_factory=lambda: os.uname().nodename)
    """Holder identity written into the Lease (`RLO_IDENTITY`, default the host name)."""

    pod_uid: str | None = None
    """UID of the operator's own pod (`RLO_POD_UID`, the chart sets it); when set,
    the Lease this replica writes is owned by its pod, so the garbage collector
    removes it once that pod is gone (an uninstall leaves no Lease behind)."""

    leader_election: bool = True
    """Whether to elect a leader through the Lease (`RLO_LEADER_ELECTION`)."""

    scraper_namespace_labels: tuple[tuple[str, str], ...] = ()
    """Labels of namespaces whose pods may scrape node metrics (`RLO_SCRAPER_NAMESPACE_LABELS`,
    `k=v,k2=v2`); empty with empty pod labels means no scraper rule."""

    scraper_pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "prometheus"),)
    """Labels of the scraper pods (`RLO_SCRAPER_POD_LABELS`)."""

    operator_pod_labels: tuple[tuple[str, str], ...] = (
        ("app.kubernetes.io/name", "reactive-loop-operator"),
    )
    """Labels of the operator's own pods, allowed to reach the nodes (`RLO_OPERATOR_POD_LABELS`)."""


def _labels(raw: str, name: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{name}: expected k=v[,k=v…], got {raw!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: not a number: {raw!r}") from e
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def load(env: Mapping[str, str]) -> OperatorConfig:
    """Build the configuration from an environment mapping (normally `os.environ`)."""
    defaults = OperatorConfig()
    p = ENV_PREFIX
    namespaces = tuple(n.strip() for n in env.get(p + "NAMESPACES", "").split(",") if n.strip())
    policy = env.get(p + "NODE_IMAGE_PULL_POLICY", defaults.node_image_pull_policy)
    if policy not in ("Always", "IfNotPresent", "Never"):
        raise ConfigError(
            f"{p}NODE_IMAGE_PULL_POLICY: Always, IfNotPresent or Never, got {policy!r}"
        )
    election = env.get(p + "LEADER_ELECTION", "true").lower()
    if election not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{p}LEADER_ELECTION: true or false, got {election!r}")
    return OperatorConfig(
        namespaces=namespaces,
        node_image=env.get(p + "NODE_IMAGE", defaults.node_image),
        node_image_pull_policy=policy,
        port=int(_number(env, p + "PORT", defaults.port, 0)),
        bind=env.get(p + "BIND", defaults.bind),
        resync_seconds=_number(env, p + "RESYNC_SECONDS", defaults.resync_seconds, 0.2),
        node_timeout_seconds=_number(
            env, p + "NODE_TIMEOUT_SECONDS", defaults.node_timeout_seconds, 0.05
        ),
        lease_name=env.get(p + "LEASE_NAME", defaults.lease_name),
        lease_namespace=env.get(p + "LEASE_NAMESPACE", defaults.lease_namespace),
        lease_seconds=_number(env, p + "LEASE_SECONDS", defaults.lease_seconds, 2),
        identity=env.get(p + "IDENTITY") or defaults.identity,
        pod_uid=env.get(p + "POD_UID") or None,
        leader_election=election in ("true", "1", "yes"),
        scraper_namespace_labels=_labels(
            env.get(p + "SCRAPER_NAMESPACE_LABELS", ""), p + "SCRAPER_NAMESPACE_LABELS"
        ),
        scraper_pod_labels=_labels(
            env.get(p + "SCRAPER_POD_LABELS", "app.kubernetes.io/name=prometheus"),
            p + "SCRAPER_POD_LABELS",
        ),
        operator_pod_labels=_labels(
            env.get(p + "OPERATOR_POD_LABELS", "app.kubernetes.io/name=reactive-loop-operator"),
            p + "OPERATOR_POD_LABELS",
        ),
    )
