"""Ingress NetworkPolicy (networking.k8s.io/v1) for the test kubelet's pods.

`ingress_rules` is pure: given a pod, every NetworkPolicy, every pod (with its
IP) and every namespace, it says which sources and ports the pod admits, or
None when no Ingress policy selects it (not isolated). `restore_text` turns
that into an iptables-restore input for the pod's own chain `RL-NETPOL`,
jumped to from INPUT after `RL-FAULT` (faults insert theirs at position 1).

Semantics (as the Kubernetes API documents them): a pod selected by at least
one policy whose policyTypes include Ingress accepts a new inbound connection
only if some rule of some such policy allows its source and port.
Established/related traffic, loopback and the bridge gateway (the node: kubelet
probes, the apiserver, a Prometheus on the host) are always allowed, as real
CNIs allow the node. Egress policies are ignored. ipBlocks are IPv4 only
(pods have IPv4 addresses); `except` is applied by subtracting the ranges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
CHAIN = "RL-NETPOL"


@dataclass(frozen=True)
class Rule:
    """Allow new connections from `sources` (None: any) to `ports` (None: any)."""

    sources: tuple[str, ...] | None
    ports: tuple[tuple[str, str | None], ...] | None  # (protocol, "80" / "80:90" / None)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions); empty or {} matches everything."""
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _labels(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def ingress_policy(policy: Obj) -> bool:
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    return "Ingress" in types if types else True


def _cidrs(block: Obj) -> list[str]:
    try:
        nets = [ipaddress.IPv4Network(block["cidr"], strict=False)]
    except (KeyError, ValueError):  # IPv6 too: pods have IPv4 addresses only
        return []
    for ex in block.get("except") or []:
        try:
            cut = ipaddress.IPv4Network(ex, strict=False)
        except ValueError:
            continue
        out: list[ipaddress.IPv4Network] = []
        for net in nets:
            if not cut.overlaps(net):
                out.append(net)
            elif not net.subnet_of(cut):
                out.extend(net.address_exclude(cut))
        nets = out
    return [str(n) for n in sorted(nets)]


def _peer_sources(
    peer: Obj, policy_ns: str, pods: Iterable[Obj], namespaces: Mapping[str, Mapping[str, str]]
) -> list[str]:
    if "ipBlock" in peer:
        return _cidrs(peer["ipBlock"])
    if "podSelector" not in peer and "namespaceSelector" not in peer:
        return []
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    out = []
    for p in pods:
        ns = p.get("metadata", {}).get("namespace", "")
        ip = (p.get("status") or {}).get("podIP")
        if not ip:
            continue
        if ns_sel is None:
            if ns != policy_ns:
                continue
        elif not selector_matches(ns_sel, namespaces.get(ns, {})):
            continue
        if selector_matches(pod_sel, _labels(p)):
            out.append(f"{ip}/32")
    return out


def _named_ports(pod: Obj) -> dict[str, tuple[str, int]]:
    out = {}
    for c in pod.get("spec", {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name"):
                out[p["name"]] = (p.get("protocol", "TCP"), int(p["containerPort"]))
    return out


def _ports(entries: list[Obj], pod: Obj) -> tuple[tuple[str, str | None], ...]:
    named = _named_ports(pod)
    out: list[tuple[str, str | None]] = []
    for e in entries:
        proto = e.get("protocol", "TCP")
        port = e.get("port")
        if port is None:
            out.append((proto, None))
        elif isinstance(port, str) and not port.isdigit():
            if port in named and named[port][0] == proto:
                out.append((proto, str(named[port][1])))
        elif e.get("endPort"):
            out.append((proto, f"{int(port)}:{int(e['endPort'])}"))
        else:
            out.append((proto, str(int(port))))
    return tuple(out)


def ingress_rules(
    pod: Obj,
    policies: Iterable[Obj],
    pods: Iterable[Obj],
    namespaces: Mapping[str, Mapping[str, str]],
) -> list[Rule] | None:
    """What `pod` admits: None if no Ingress policy selects it, else the allow rules.

    `pods` carry `status.podIP`; `namespaces` maps a namespace's name to its labels.
    """
    meta = pod.get("metadata", {})
    ns = meta.get("namespace", "")
    selecting = [
        pol
        for pol in policies
        if pol.get("metadata", {}).get("namespace") == ns
        and ingress_policy(pol)
        and selector_matches((pol.get("spec") or {}).get("podSelector") or {}, _labels(pod))
    ]
    if not selecting:
        return None
    all_pods = list(pods)
    rules: list[Rule] = []
    for pol in selecting:
        for rule in (pol.get("spec") or {}).get("ingress") or []:
            ports = _ports(rule["ports"], pod) if rule.get("ports") else None
            if ports == ():
                continue  # only named ports this pod does not have
            peers = rule.get("from") or []
            if not peers:
                rules.append(Rule(None, ports))
                continue
            sources = sorted(
                {s for peer in peers for s in _peer_sources(peer, ns, all_pods, namespaces)}
            )
            if sources:
                rules.append(Rule(tuple(sources), ports))
    return rules


def restore_text(rules: list[Rule] | None, gateway_ip: str) -> str:
    """iptables-restore --noflush input that rebuilds `RL-NETPOL` atomically."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    if rules is not None:
        lines += [
            f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
            f"-A {CHAIN} -i lo -j RETURN",
            f"-A {CHAIN} -s {gateway_ip}/32 -j RETURN",
        ]
        for rule in rules:
            srcs: tuple[str | None, ...] = rule.sources if rule.sources is not None else (None,)
            ports: tuple[tuple[str | None, str | None], ...] = (
                rule.ports if rule.ports is not None else ((None, None),)
            )
            for src in srcs:
                for proto, port in ports:
                    parts = ["-A", CHAIN]
                    if src is not None:
                        parts += ["-s", src]
                    if proto is not None:
                        parts += ["-p", proto.lower()]
                        if port is not None:
                            parts += ["--dport", port]
                    lines.append(" ".join([*parts, "-j", "RETURN"]))
        lines.append(f"-A {CHAIN} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
