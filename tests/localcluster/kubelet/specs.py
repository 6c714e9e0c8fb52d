"""Pure functions of the test kubelet: what a container's environment, a
pod's /etc/hosts and resolv.conf, and a pod's status should be.

No I/O here: the runtime gathers the inputs (pods, services, ConfigMaps,
Secrets, process states) and writes the results.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


class ConfigError(ValueError):
    """A container cannot start because a referenced object or key is missing."""


# --- environment -----------------------------------------------------------
def field_ref(pod: Obj, path: str) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion; $$ escapes, unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def _lookup(
    kind: str, objs: Mapping[str, Obj], name: str, key: str | None, optional: bool
) -> dict[str, str] | None:
    obj = objs.get(name)
    if obj is None:
        if optional:
            return None
        raise ConfigError(f"{kind} {name!r} not found")
    data: dict[str, str] = dict(obj.get("data") or {})
    if kind == "secret":
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
    if key is not None and key not in data:
        if optional:
            return None
        raise ConfigError(f"key {key!r} not found in {kind} {name!r}")
    return data


def container_env(
    pod: Obj,
    container: Obj,
    base: Mapping[str, str],
    configmaps: Mapping[str, Obj],
    secrets: Mapping[str, Obj],
) -> dict[str, str]:
    """The process environment: `base`, then envFrom, then env (with fieldRefs)."""
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, ref_key, objs in (
            ("configmap", "configMapRef", configmaps),
            ("secret", "secretRef", secrets),
        ):
            ref = src.get(ref_key)
            if ref is None:
                continue
            data = _lookup(kind, objs, ref["name"], None, bool(ref.get("optional")))
            for k, v in (data or {}).items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = _expand(str(var["value"]), env)
            continue
        vf = var.get("valueFrom") or {}
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "configmap" if "configMapKeyRef" in vf else "secret"
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            objs = configmaps if kind == "configmap" else secrets
            data = _lookup(kind, objs, ref["name"], ref["key"], bool(ref.get("optional")))
            if data is not None:
                env[name] = data[ref["key"]]
        elif "resourceFieldRef" in vf:
            env[name] = "0"  # no resource accounting on the test node
        else:
            env[name] = ""
    return env


def referenced_objects(pod: Obj) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's containers and volumes use."""
    cms: set[str] = set()
    secs: set[str] = set()
    spec = pod.get("spec", {})
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                cms.add(src["configMapRef"]["name"])
            if "secretRef" in src:
                secs.add(src["secretRef"]["name"])
        for var in c.get("env") or []:
            vf = var.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                cms.add(vf["configMapKeyRef"]["name"])
            if "secretKeyRef" in vf:
                secs.add(vf["secretKeyRef"]["name"])
    for vol in spec.get("volumes") or []:
        if "configMap" in vol:
            cms.add(vol["configMap"]["name"])
        if "secret" in vol:
            secs.add(vol["secret"]["secretName"])
    return cms, secs


# --- DNS: /etc/hosts and resolv.conf ------------------------------------------
def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _is_ready(pod: Obj) -> bool:
    conds = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def service_endpoints(service: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """The pods a Service's DNS names resolve to, as the endpointslice
    controller would list them as ready: selected, with an IP, not terminal,
    and Ready and not terminating unless publishNotReadyAddresses is set."""
    spec = service.get("spec", {})
    selector = spec.get("selector") or {}
    if not selector:
        return []
    ns = service["metadata"]["namespace"]
    publish = bool(spec.get("publishNotReadyAddresses"))
    out = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        if meta.get("namespace") != ns or not _matches(selector, meta.get("labels") or {}):
            continue
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        if publish or (_is_ready(pod) and not meta.get("deletionTimestamp")):
            out.append(pod)
    return out


@dataclass(frozen=True)
class ServiceEndpoints:
    """A Service and the pods its names resolve to (computed once per change)."""

    namespace: str
    name: str
    ips: tuple[str, ...]
    hostnames: tuple[tuple[str, str], ...]  # (hostname, ip) of headless members


def endpoint_index(pods: Iterable[Obj], services: Iterable[Obj]) -> list[ServiceEndpoints]:
    """Every Service's endpoints, sorted by namespace and name."""
    by_ns: dict[str, list[Obj]] = {}
    for p in pods:
        by_ns.setdefault(p.get("metadata", {}).get("namespace", ""), []).append(p)
    out = []
    for svc in services:
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        eps = service_endpoints(svc, by_ns.get(ns, []))
        hosts = tuple(
            (ep["spec"]["hostname"], ep["status"]["podIP"])
            for ep in eps
            if ep.get("spec", {}).get("hostname") and ep["spec"].get("subdomain") == name
        )
        out.append(ServiceEndpoints(ns, name, tuple(ep["status"]["podIP"] for ep in eps), hosts))
    return sorted(out, key=lambda e: (e.namespace, e.name))


def hosts_file(pod: Obj, pods: Iterable[Obj], services: Iterable[Obj], domain: str) -> str:
    """/etc/hosts for `pod`: itself, every Service name and headless hostname."""
    return render_hosts(pod, endpoint_index(pods, services), domain)


def render_hosts(pod: Obj, index: Iterable[ServiceEndpoints], domain: str) -> str:
    """/etc/hosts for `pod` from a precomputed `endpoint_index`.

    Names of the pod's own namespace also get their short forms (`svc`,
    `host.svc`), standing in for resolv.conf's search list, which /etc/hosts
    lookups do not apply. A Service name lists every endpoint; the order is
    a stable shuffle per pod so clients that take the first address spread.
    """
    meta, spec = pod["metadata"], pod.get("spec", {})
    own_ns, uid = meta["namespace"], meta.get("uid", "")
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    hostname = spec.get("hostname") or meta["name"]
    ip = pod.get("status", {}).get("podIP")
    if ip:
        own = [hostname]
        if spec.get("subdomain"):
            sub = spec["subdomain"]
            own.insert(0, f"{hostname}.{sub}.{own_ns}.svc.{domain}")
        lines.append(f"{ip}\t{' '.join(own)}")

    def order(addr: str) -> str:
        return hashlib.sha256((uid + addr).encode()).hexdigest()

    for entry in index:
        name, ns = entry.name, entry.namespace
        names = [f"{name}.{ns}.svc.{domain}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == own_ns:
            names.append(name)
        for addr in sorted(entry.ips, key=order):
            lines.append(f"{addr}\t{' '.join(names)}")
        for host, addr in entry.hostnames:
            hnames = [f"{host}.{name}.{ns}.svc.{domain}", f"{host}.{name}.{ns}.svc"]
            if ns == own_ns:
                hnames.append(f"{host}.{name}")
            lines.append(f"{addr}\t{' '.join(hnames)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, domain: str) -> str:
    # No cluster DNS server: every cluster name is in /etc/hosts, and a name
    # that is not fails fast against the unused loopback nameserver.
    return (
        f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
        "nameserver 127.0.0.1\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )


# --- status -----------------------------------------------------------------------
@dataclass
class ContainerView:
    """What the runtime knows about one container, enough to report its status."""

    name: str
    image: str
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    last_terminated: Obj | None = None
    pid: int | None = None
    extra: Obj = field(default_factory=dict)

    def status(self) -> Obj:
        if self.state == "running":
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {
                "terminated": {
                    "exitCode": self.exit_code if self.exit_code is not None else 0,
                    "reason": self.reason,
                    "message": self.message or None,
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                }
            }
        else:
            state = {"waiting": {"reason": self.reason, "message": self.message or None}}
        out: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": f"localproc://{self.pid}" if self.pid else None,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        return out


def pod_phase(views: list[ContainerView], restart_policy: str, sandbox_ready: bool) -> str:
    if not sandbox_ready or not views:
        return "Pending"
    if any(v.state == "running" for v in views):
        return "Running"
    if all(v.state == "terminated" for v in views):
        codes = [v.exit_code or 0 for v in views]
        if all(c == 0 for c in codes) and restart_policy != "Always":
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    # Waiting to (re)start: Running if any has ever run, else Pending.
    if any(v.restart_count > 0 or v.started_at for v in views):
        return "Running"
    return "Pending"


def pod_status(
    pod: Obj,
    views: list[ContainerView],
    sandbox_ready: bool,
    pod_ip: str | None,
    host_ip: str,
    start_time: str,
    now: str,
    previous: Obj | None = None,
    init_views: list[ContainerView] | None = None,
    initialized: bool = True,
    init_failed: bool = False,
) -> Obj:
    """The `status` to PATCH, with lastTransitionTime kept where nothing changed."""
    policy = pod.get("spec", {}).get("restartPolicy", "Always")
    if init_failed:
        phase = "Failed"
    elif not initialized:
        phase = "Pending"
    else:
        phase = pod_phase(views, policy, sandbox_ready)
    all_ready = bool(views) and all(v.ready for v in views)
    if phase in ("Succeeded", "Failed"):
        all_ready = False
    truth = {
        "PodReadyToStartContainers": sandbox_ready,
        "Initialized": initialized,
        "ContainersReady": all_ready,
        "Ready": all_ready,
    }
    prev = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    conditions = []
    for ctype, ok in truth.items():
        s = "True" if ok else "False"
        old = prev.get(ctype)
        ltt = old["lastTransitionTime"] if old and old.get("status") == s else now
        cond: Obj = {"type": ctype, "status": s, "lastTransitionTime": ltt, "lastProbeTime": None}
        if not ok and ctype in ("ContainersReady", "Ready"):
            not_ready = [v.name for v in views if not v.ready]
            cond["reason"] = (
                "PodCompleted" if phase in ("Succeeded", "Failed") else ("ContainersNotReady")
            )
            cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        conditions.append(cond)
    # Conditions others own (PodScheduled from the scheduler, readiness gates)
    # are kept: the status is sent as a JSON merge patch, which replaces lists.
    conditions += [c for t, c in prev.items() if t not in truth]
    status: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [v.status() for v in views],
    }
    if init_views:
        status["initContainerStatuses"] = [v.status() for v in init_views]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def port_redirects(pod: Obj, services: Iterable[Obj]) -> list[tuple[int, int]]:
    """(service port, target port) pairs that differ, for Services selecting `pod`.

    Service names resolve straight to pod addresses (there is no kube-proxy),
    so a client connects to podIP:port; the pod's netns redirects that port
    to the targetPort.
    """
    meta = pod["metadata"]
    named: dict[str, int] = {}
    for c in pod.get("spec", {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name"):
                named[p["name"]] = int(p["containerPort"])
    out: set[tuple[int, int]] = set()
    for svc in services:
        spec = svc.get("spec", {})
        selector = spec.get("selector") or {}
        if svc["metadata"]["namespace"] != meta["namespace"] or not selector:
            continue
        if not _matches(selector, meta.get("labels") or {}):
            continue
        for port in spec.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP":
                continue
            target = port.get("targetPort", port["port"])
            tport = named.get(target) if isinstance(target, str) and not target.isdigit() else None
            if tport is None:
                tport = int(target) if str(target).isdigit() else None
            if tport is not None and tport != int(port["port"]):
                out.add((int(port["port"]), tport))
    return sorted(out)
