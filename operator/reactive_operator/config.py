"""Operator configuration, read once at start from `RLO_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from reactive_node.runtime.config import allowed_host

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

    token_webhook_allowed_hosts: tuple[str, ...] = ()
    """Hosts a loop's token webhook may be on (`RLO_TOKEN_WEBHOOK_ALLOWED_HOSTS`,
    comma-separated; empty: any). Passed to every node, which refuses to start
    with a webhook on another host."""

    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain (`RLO_CLUSTER_DOMAIN`): nodes reach their peers at
    `<pod>.<loop>.<namespace>.svc.<domain>`."""

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
    `k=v,k2=v2`); empty means no scraper rule (never "any namespace"; the chart
    passes the release namespace by default)."""

    scraper_pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "prometheus"),)
    """Labels of the scraper pods (`RLO_SCRAPER_POD_LABELS`)."""

    operator_pod_labels: tuple[tuple[str, str], ...] = (
        ("app.kubernetes.io/name", "reactive-loop-operator"),
    )
    """Labels of the operator's own pods, allowed to reach the nodes (`RLO_OPERATOR_POD_LABELS`)."""

    operator_namespace_labels: tuple[tuple[str, str], ...] = ()
    """Labels of the operator's namespace (`RLO_OPERATOR_NAMESPACE_LABELS`): the
    operator's pods are admitted to the nodes only there. Unset: the namespace
    named `RLO_LEASE_NAMESPACE` (the chart passes the release namespace); never empty."""

    node_egress: bool = True
    """Limit the node pods' egress to their loop, DNS, the API server and the
    token webhook (`RLO_NODE_EGRESS`); false leaves egress open."""

    dns_namespace_labels: tuple[tuple[str, str], ...] = (
        ("kubernetes.io/metadata.name", "kube-system"),
    )
    """Labels of the cluster DNS namespace (`RLO_DNS_NAMESPACE_LABELS`); empty: only `dns_cidrs`."""

    dns_pod_labels: tuple[tuple[str, str], ...] = (("k8s-app", "kube-dns"),)
    """Labels of the cluster DNS pods (`RLO_DNS_POD_LABELS`)."""

    dns_cidrs: tuple[str, ...] = ()
    """More DNS servers by address, e.g. NodeLocal DNSCache (`RLO_DNS_CIDRS`)."""

    dns_port: int = 53
    """Port of the DNS servers, UDP and TCP (`RLO_DNS_PORT`)."""

    api_server_cidrs: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    """Where the nodes may reach the API server (`RLO_API_SERVER_CIDRS`): not a
    pod, so only by address; any address by default, on `api_server_ports` only."""

    api_server_ports: tuple[int, ...] = (443, 6443)
    """TCP ports of the API server: the `kubernetes` Service's and its endpoints'
    (`RLO_API_SERVER_PORTS`)."""

    webhook_cidrs: tuple[str, ...] = ()
    """Where a token webhook named by a DNS host may be reached (`RLO_WEBHOOK_CIDRS`);
    a webhook whose host is an IP address is allowed at that address only."""

    @property
    def node_network(self) -> NodeNetwork:
        """What each loop's NetworkPolicy admits and allows (builders.network_policy)."""
        return NodeNetwork(
            operator_pod_labels=self.operator_pod_labels,
            operator_namespace_labels=self.operator_namespace_labels
            or (("kubernetes.io/metadata.name", self.lease_namespace),),
            scraper_pod_labels=self.scraper_pod_labels,
            scraper_namespace_labels=self.scraper_namespace_labels,
            egress=self.node_egress,
            dns_namespace_labels=self.dns_namespace_labels,
            dns_pod_labels=self.dns_pod_labels,
            dns_cidrs=self.dns_cidrs,
            dns_port=self.dns_port,
            api_server_cidrs=self.api_server_cidrs,
            api_server_ports=self.api_server_ports,
            webhook_cidrs=self.webhook_cidrs,
        )


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class NodeNetwork:
    """Who may reach a loop's nodes, and where they may connect (docs/operator.md,
    "What each node may do"). No peer is ever "any namespace": a rule whose
    namespace labels are empty is left out."""

    operator_pod_labels: Labels
    operator_namespace_labels: Labels
    scraper_pod_labels: Labels = ()
    scraper_namespace_labels: Labels = ()
    egress: bool = True
    dns_namespace_labels: Labels = ()
    dns_pod_labels: Labels = ()
    dns_cidrs: tuple[str, ...] = ()
    dns_port: int = 53
    api_server_cidrs: tuple[str, ...] = ()
    api_server_ports: tuple[int, ...] = ()
    webhook_cidrs: tuple[str, ...] = ()


def _labels(raw: str, name: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{name}: expected k=v[,k=v…], got {raw!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _cidrs(raw: str, name: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (a bare address is one host), normalised."""
    found: list[str] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError as e:
            raise ConfigError(f"{name}: not a CIDR: {item!r}") from e
    return tuple(found)


def _ports(raw: str, name: str) -> tuple[int, ...]:
    found: list[int] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ConfigError(f"{name}: not a port (1-65535): {item!r}")
        found.append(int(item))
    return tuple(found)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name}: true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


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


def _hosts(raw: str) -> tuple[str, ...]:
    """Comma-separated host names or IP addresses, checked as a node checks them."""
    try:
        return tuple(allowed_host(h) for h in raw.split(",") if h.strip())
    except ValueError as e:
        raise ConfigError(str(e)) from None


_DOMAIN_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _domain(raw: str, default: str) -> str:
    """A DNS domain (lower-case labels separated by dots; a trailing dot is dropped)."""
    domain = raw.strip().lower().removesuffix(".") or default
    if len(domain) > 253 or not all(_DOMAIN_LABEL.match(part) for part in domain.split(".")):
        raise ConfigError(
            f"{ENV_PREFIX}CLUSTER_DOMAIN: a DNS domain such as cluster.local, got {raw!r}"
        )
    return domain


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
    lease_namespace = env.get(p + "LEASE_NAMESPACE", defaults.lease_namespace)
    operator_ns = defaults.operator_namespace_labels
    if p + "OPERATOR_NAMESPACE_LABELS" in env:
        operator_ns = _labels(env[p + "OPERATOR_NAMESPACE_LABELS"], p + "OPERATOR_NAMESPACE_LABELS")
        if not operator_ns:
            raise ConfigError(
                f"{p}OPERATOR_NAMESPACE_LABELS: empty would admit the operator's labels in"
                " any namespace; name the operator's namespace (or leave it unset)"
            )
    api_cidrs = _cidrs(
        env.get(p + "API_SERVER_CIDRS", ",".join(defaults.api_server_cidrs)),
        p + "API_SERVER_CIDRS",
    )
    api_ports = _ports(
        env.get(p + "API_SERVER_PORTS", ",".join(map(str, defaults.api_server_ports))),
        p + "API_SERVER_PORTS",
    )
    if not api_cidrs or not api_ports:
        raise ConfigError(
            f"{p}API_SERVER_CIDRS and {p}API_SERVER_PORTS: the nodes need the API server"
            " (their state is in their pod): name at least one address and one port"
        )
    dns_port = _ports(env.get(p + "DNS_PORT") or str(defaults.dns_port), p + "DNS_PORT")
    if len(dns_port) != 1:
        raise ConfigError(f"{p}DNS_PORT: one port, got {env.get(p + 'DNS_PORT')!r}")
    return OperatorConfig(
        namespaces=namespaces,
        cluster_domain=_domain(env.get(p + "CLUSTER_DOMAIN", ""), defaults.cluster_domain),
        node_image=env.get(p + "NODE_IMAGE", defaults.node_image),
        node_image_pull_policy=policy,
        token_webhook_allowed_hosts=_hosts(env.get(p + "TOKEN_WEBHOOK_ALLOWED_HOSTS", "")),
        port=int(_number(env, p + "PORT", defaults.port, 0)),
        bind=env.get(p + "BIND", defaults.bind),
        resync_seconds=_number(env, p + "RESYNC_SECONDS", defaults.resync_seconds, 0.2),
        node_timeout_seconds=_number(
            env, p + "NODE_TIMEOUT_SECONDS", defaults.node_timeout_seconds, 0.05
        ),
        lease_name=env.get(p + "LEASE_NAME", defaults.lease_name),
        lease_namespace=lease_namespace,
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
        operator_namespace_labels=operator_ns,
        node_egress=_bool(env, p + "NODE_EGRESS", defaults.node_egress),
        dns_namespace_labels=_labels(
            env.get(p + "DNS_NAMESPACE_LABELS", "kubernetes.io/metadata.name=kube-system"),
            p + "DNS_NAMESPACE_LABELS",
        ),
        dns_pod_labels=_labels(
            env.get(p + "DNS_POD_LABELS", "k8s-app=kube-dns"), p + "DNS_POD_LABELS"
        ),
        dns_cidrs=_cidrs(env.get(p + "DNS_CIDRS", ""), p + "DNS_CIDRS"),
        dns_port=dns_port[0],
        api_server_cidrs=api_cidrs,
        api_server_ports=api_ports,
        webhook_cidrs=_cidrs(env.get(p + "WEBHOOK_CIDRS", ""), p + "WEBHOOK_CIDRS"),
    )
