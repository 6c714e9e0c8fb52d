"""The kubelet's agent: registers the Node, keeps it Ready, dispatches pods.

One watch over all pods and one over all Services feed two caches. Pods bound
to this node get a `PodWorker`; every change of a pod or Service re-renders
each running pod's /etc/hosts (debounced), so Service and headless hostnames
follow pods as they come, go and change readiness. Watches over
NetworkPolicies and namespaces (listed before pods start) feed the ingress
rules (`netpol`), recomputed for every running pod on the same debounced loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import signal
from typing import Any

import aiohttp

from localcluster.config import ClusterConfig
from localcluster.kubelet import netpol, server, specs
from localcluster.kubelet.api import Api, ApiError, informer
from localcluster.kubelet.runtime import IpPool, PodWorker, now_iso, run_cmd
from localcluster.network import list_pod_netns

log = logging.getLogger("kubelet.agent")
Obj = dict[str, Any]
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
STATUS_EVERY = 20.0


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Agent:
    def __init__(
        self, cfg: ClusterConfig, api: Api, version: str, probes: aiohttp.ClientSession
    ) -> None:
        self.cfg, self.api, self.version = cfg, api, version
        self.probes = probes
        self.pods: dict[str, Obj] = {}  # uid -> pod, every namespace
        self.services: dict[tuple[str, str], Obj] = {}
        self.policies: dict[tuple[str, str], Obj] = {}  # NetworkPolicies
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self.policies_listed = asyncio.Event()
        self.namespaces_listed = asyncio.Event()
        self.workers: dict[str, PodWorker] = {}
        self.pool = IpPool(cfg)
        self.dns_dirty = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._index: list[specs.ServiceEndpoints] | None = None

    # --- node ------------------------------------------------------------------------
    def node_status(self) -> Obj:
        now = now_iso()
        conds = [
            ("Ready", "True", "KubeletReady", "test kubelet is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
        ]
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "500Gi"}
        return {
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": m,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for t, s, r, m in conds
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.cfg.gateway_ip},
                {"type": "Hostname", "address": self.cfg.node_name},
            ],
            "capacity": capacity,
            "allocatable": capacity,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "reactive-loop test node",
                "containerRuntimeVersion": "localproc://0.1",
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        name = self.cfg.node_name
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "reactive-loop-test",
                },
            },
            "spec": {},
        }
        with contextlib.suppress(ApiError):
            await self.api.request("POST", "/api/v1/nodes", node)
        await self.api.patch(f"/api/v1/nodes/{name}/status", {"status": self.node_status()})

    async def heartbeat(self) -> None:
        name = self.cfg.node_name
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        since_status = 0.0
        while True:
            try:
                node = await self.api.get(f"/api/v1/nodes/{name}")
                if node is None:
                    await self.register()
                    node = await self.api.get(f"/api/v1/nodes/{name}")
                lease = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": name,
                                "uid": (node or {}).get("metadata", {}).get("uid", ""),
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": LEASE_SECONDS,
                        "renewTime": micro_now(),
                    },
                }
                if await self.api.get(path) is None:
                    await self.api.request(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        lease,
                    )
                else:
                    await self.api.patch(path, {"spec": lease["spec"]}, strategic=False)
                since_status += LEASE_RENEW
                if since_status >= STATUS_EVERY:
                    since_status = 0.0
                    await self.api.patch(
                        f"/api/v1/nodes/{name}/status", {"status": self.node_status()}
                    )
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(LEASE_RENEW)

    # --- pods and services ---------------------------------------------------------------
    def _mine(self, pod: Obj) -> bool:
        return bool(pod.get("spec", {}).get("nodeName") == self.cfg.node_name)

    async def pods_synced(self, items: list[Obj]) -> None:
        seen = set()
        for pod in items:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            await self.pod_event("MODIFIED", pod)
        for uid in list(self.pods):
            if uid not in seen:
                await self.pod_event("DELETED", self.pods[uid])

    async def pod_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
            worker = self.workers.pop(uid, None)
            if worker is not None:
                worker.gone()
        else:
            self.pods[uid] = pod
            if self._mine(pod):
                worker = self.workers.get(uid)
                if worker is None and pod.get("status", {}).get("phase") not in (
                    "Succeeded",
                    "Failed",
                ):
                    worker = PodWorker(
                        self.cfg,
                        self.api,
                        pod,
                        self.pool,
                        self.render_hosts,
                        self.probes,
                        self.render_netpol,
                    )
                    self.workers[uid] = worker
                    worker.start()
                    task = asyncio.create_task(self._forget_when_done(worker))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                if worker is not None:
                    worker.update(pod)
        self._index = None
        self.dns_dirty.set()

    async def _forget_when_done(self, worker: PodWorker) -> None:
        await worker.finished.wait()
        if self.workers.get(worker.uid) is worker:
            self.workers.pop(worker.uid, None)

    async def services_synced(self, items: list[Obj]) -> None:
        self.services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in items}
        self._index = None
        self.dns_dirty.set()

    async def service_event(self, kind: str, svc: Obj) -> None:
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = svc
        self._index = None
        self.dns_dirty.set()

    async def policies_synced(self, items: list[Obj]) -> None:
        self.policies = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in items}
        self.policies_listed.set()
        self.dns_dirty.set()

    async def policy_event(self, kind: str, policy: Obj) -> None:
        key = (policy["metadata"]["namespace"], policy["metadata"]["name"])
        if kind == "DELETED":
            self.policies.pop(key, None)
        else:
            self.policies[key] = policy
        self.dns_dirty.set()

    async def namespaces_synced(self, items: list[Obj]) -> None:
        self.namespaces = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in items}
        self.namespaces_listed.set()
        self.dns_dirty.set()

    async def namespace_event(self, kind: str, ns: Obj) -> None:
        if kind == "DELETED":
            self.namespaces.pop(ns["metadata"]["name"], None)
        else:
            self.namespaces[ns["metadata"]["name"]] = ns["metadata"].get("labels") or {}
        self.dns_dirty.set()

    def _pods_with_ips(self) -> list[Obj]:
        """Every pod, with the address its worker allocated before the status says so."""
        out = []
        for uid, pod in self.pods.items():
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            worker = self.workers.get(uid)
            if worker is not None and worker.ip and not worker.terminating:
                pod = dict(pod, status=dict(pod.get("status") or {}, podIP=worker.ip))
            out.append(pod)
        return out

    def render_netpol(self, pod: Obj) -> str:
        rules = netpol.ingress_rules(
            pod, self.policies.values(), self._pods_with_ips(), self.namespaces
        )
        return netpol.restore_text(rules, self.cfg.gateway_ip)

    def render_hosts(self, pod: Obj) -> str:
        if self._index is None:
            self._index = specs.endpoint_index(self.pods.values(), self.services.values())
        return specs.render_hosts(pod, self._index, self.cfg.cluster_domain)

    async def dns_loop(self) -> None:
        while True:
            await self.dns_dirty.wait()
            await asyncio.sleep(0.05)
            self.dns_dirty.clear()
            self._index = None  # recomputed once for every pod below
            for worker in list(self.workers.values()):
                try:
                    worker.refresh_hosts()
                    wanted = specs.port_redirects(worker.pod, self.services.values())
                    await worker.apply_redirects(wanted)
                    await worker.apply_netpol(self.render_netpol(worker.pod))
                except (OSError, RuntimeError):
                    log.exception("hosts of %s/%s", worker.ns, worker.name)

    # --- main ----------------------------------------------------------------------------
    async def cleanup_stale(self) -> None:
        """Netns left by an earlier kubelet: their processes and the netns go."""
        for ns in list_pod_netns(self.cfg.prefix):
            _, pids = await run_cmd(["ip", "netns", "pids", ns], check=False)
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            await run_cmd(["ip", "netns", "del", ns], check=False)

    async def run(self) -> None:
        await self.cleanup_stale()
        runner = await server.serve(self.cfg)
        delay = 0.2
        while True:  # the apiserver may be restarting: retry until it answers
            try:
                await self.register()
                break
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("registering the node: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        tasks = [
            asyncio.create_task(self.heartbeat()),
            asyncio.create_task(self.dns_loop()),
            asyncio.create_task(
                informer(self.api, "/api/v1/services", {}, self.services_synced, self.service_event)
            ),
            asyncio.create_task(
                informer(
                    self.api,
                    "/apis/networking.k8s.io/v1/networkpolicies",
                    {},
                    self.policies_synced,
                    self.policy_event,
                )
            ),
            asyncio.create_task(
                informer(
                    self.api, "/api/v1/namespaces", {}, self.namespaces_synced, self.namespace_event
                )
            ),
        ]
        # Policies and namespaces first, so no pod starts unisolated by mistake.
        listed = asyncio.gather(self.policies_listed.wait(), self.namespaces_listed.wait())
        try:
            await asyncio.wait_for(listed, 15.0)
        except TimeoutError:
            log.warning("NetworkPolicies/namespaces not listed after 15s (RBAC?); starting pods")
        tasks.append(
            asyncio.create_task(
                informer(self.api, "/api/v1/pods", {}, self.pods_synced, self.pod_event)
            )
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
