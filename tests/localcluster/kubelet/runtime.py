"""One `PodWorker` per pod: its sandbox, its containers, probes and deletion.

The sandbox is a network namespace (address from the `IpPool`, veth on the
bridge) plus a directory `.local-cluster/pods/<uid>/` holding the files each
container's mount namespace bind-mounts: `hosts`, `resolv.conf`, `sa/`
(ServiceAccount token, ca.crt, namespace) and volumes. Files are rewritten in
place, never renamed, so the bind mounts see every update.

A container is `ip netns exec <ns> unshare --uts -- sh -c <mounts; exec cmd>`:
the same PID from `ip` to the container's own program, started in its own
session so signals reach its whole process group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from localcluster.config import ClusterConfig
from localcluster.kubelet import specs
from localcluster.kubelet.api import Api, ApiError
from localcluster.network import PodNet, pod_setup_commands, pod_teardown_commands

log = logging.getLogger("kubelet.runtime")
Obj = dict[str, Any]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Staging mount points (on the host's /run, empty there: the binds live only
#: in containers' private mount namespaces) for host roots a volume covers.
KEEP_DIR = Path("/run/reactive-loop-keep")


def host_roots(cfg: ClusterConfig) -> list[Path]:
    """Host directories every container runs from: the checkout (venv), the
    cluster's state (pod files) and the interpreter's installation."""
    python_home = Path(os.path.realpath(cfg.venv_bin / "python")).parents[1]
    roots: list[Path] = []
    for r in sorted({cfg.root, cfg.state_dir, python_home}, key=lambda p: len(p.parts)):
        if not any(r.is_relative_to(kept) for kept in roots):
            roots.append(r)
    return roots


MAX_BACKOFF = 10.0


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def run_cmd(args: list[str], check: bool = True) -> tuple[int, str]:
    """Run a helper command; if cancelled (e.g. by a timeout) it is killed and reaped."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    text = out.decode(errors="replace").strip()
    rc = proc.returncode if proc.returncode is not None else -1
    if check and rc != 0:
        raise RuntimeError(f"{' '.join(args)}: {text}")
    return rc, text


class IpPool:
    """Pod addresses from the bridge subnet, handed out round-robin so a
    just-freed address is not reused while stale /etc/hosts may name it."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self._net = ipaddress.ip_network(cfg.bridge_cidr)
        self._gateway = ipaddress.ip_address(cfg.gateway_ip)
        self._used: set[str] = set()
        self._next = 2

    def allocate(self) -> str:
        size = self._net.num_addresses
        for _ in range(size):
            cand = self._net.network_address + self._next
            self._next = self._next + 1 if self._next + 1 < size - 1 else 2
            if cand != self._gateway and str(cand) not in self._used:
                self._used.add(str(cand))
                return str(cand)
        raise RuntimeError("pod address pool exhausted")

    def release(self, ip: str) -> None:
        self._used.discard(ip)


def write_in_place(path: Path, content: str, mode: int = 0o644) -> bool:
    """Rewrite `path` keeping its inode (bind mounts follow); False if unchanged."""
    with contextlib.suppress(OSError):
        if path.read_text() == content:
            return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        data = content.encode()
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)
    return True


class PodWorker:
    """Runs one pod until it is deleted."""

    def __init__(
        self,
        cfg: ClusterConfig,
        api: Api,
        pod: Obj,
        pool: IpPool,
        render_hosts: Callable[[Obj], str],
        probes: aiohttp.ClientSession,
        render_netpol: Callable[[Obj], str] | None = None,
    ) -> None:
        self.cfg, self.api, self.pod, self.pool = cfg, api, pod, pool
        self.render_netpol = render_netpol  # pod -> iptables-restore text of RL-NETPOL
        self.probes = probes  # one session for every HTTP probe, like the kubelet's prober
        self.render_hosts = render_hosts
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = cfg.pods_dir / self.uid
        self.ip: str | None = None
        self.net: PodNet | None = None
        self.sandbox_ready = False
        self.terminating = False
        self.start_time = now_iso()
        spec = pod.get("spec", {})
        self.views: dict[str, specs.ContainerView] = {
            c["name"]: specs.ContainerView(name=c["name"], image=c.get("image", ""))
            for c in spec.get("containers") or []
        }
        self.init_views: dict[str, specs.ContainerView] = {
            c["name"]: specs.ContainerView(name=c["name"], image=c.get("image", ""))
            for c in spec.get("initContainers") or []
        }
        self.initialized = not self.init_views
        self.init_failed = False
        for v in self.views.values() if self.init_views else ():
            v.reason = "PodInitializing"
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.liveness_killed: set[str] = set()
        self.dirty = asyncio.Event()
        self.dirty.set()
        self.tasks: list[asyncio.Task[None]] = []
        self.container_tasks: list[asyncio.Task[bool]] = []
        self.main: asyncio.Task[None] | None = None
        self.term_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self.last_status: Obj | None = None
        self.removed_from_api = False
        self.redirects: list[tuple[int, int]] = []
        self.netpol: str | None = None  # the RL-NETPOL rules last applied
        self.netns_up = False

    # --- entry points used by the agent ------------------------------------------
    def start(self) -> None:
        self.main = asyncio.create_task(self._run(), name=f"pod {self.ns}/{self.name}")

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
            self.term_task = asyncio.create_task(self.terminate(float(grace), delete=True))

    def gone(self) -> None:
        """The pod object vanished (force deletion): stop at once."""
        self.removed_from_api = True
        if not self.terminating:
            self.term_task = asyncio.create_task(self.terminate(2.0, delete=False))

    # --- lifecycle ------------------------------------------------------------------
    async def _run(self) -> None:
        self.tasks.append(asyncio.create_task(self._status_loop()))
        try:
            await self._setup_sandbox()
        except Exception as e:  # keep the pod Pending with the reason
            log.exception("sandbox for %s/%s failed", self.ns, self.name)
            for v in self.views.values():
                v.reason, v.message = "ContainerCreating", f"sandbox setup failed: {e}"
            self.dirty.set()
            return
        for c in self.pod.get("spec", {}).get("initContainers") or []:
            if self.terminating:
                return
            if not await self._container_loop(c, init=True):
                self.init_failed = not self.terminating
                self.dirty.set()
                return
        self.initialized = True
        self.dirty.set()
        if self.terminating:
            return
        for c in self.pod.get("spec", {}).get("containers") or []:
            self.container_tasks.append(asyncio.create_task(self._container_loop(c)))

    async def _setup_sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.ip = self.pool.allocate()
        self.net = PodNet.for_uid(self.uid, self.ip, self.cfg.prefix)
        self._write_state()
        for cmd in pod_setup_commands(self.cfg, self.net):
            await run_cmd(cmd)
        self.netns_up = True
        if self.render_netpol is not None:  # isolate before any container starts
            await self.apply_netpol(self.render_netpol(self.pod))
        write_in_place(
            self.dir / "resolv.conf", specs.resolv_conf(self.ns, self.cfg.cluster_domain)
        )
        self.refresh_hosts()
        (self.dir / "sa").mkdir(exist_ok=True)
        os.chmod(self.dir / "sa", 0o755)
        ca = (self.cfg.pki_dir / "ca.crt").read_text()
        write_in_place(self.dir / "sa" / "ca.crt", ca)
        write_in_place(self.dir / "sa" / "namespace", self.ns)
        if self.pod.get("spec", {}).get("automountServiceAccountToken", True) is not False:
            ttl = await self._request_token_until_done()
            self.tasks.append(asyncio.create_task(self._token_refresher(ttl)))
        self.sandbox_ready = True
        self._write_state()
        self.dirty.set()

    async def _request_token_until_done(self) -> float:
        delay = 0.2
        while not self.terminating:
            try:
                return await self._request_token()
            except (TimeoutError, ApiError, aiohttp.ClientError) as e:
                for v in self.views.values():
                    v.reason, v.message = "ContainerCreating", f"ServiceAccount token: {e}"
                self.dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return 0.0

    async def _request_token(self) -> float:
        spec = self.pod.get("spec", {})
        sa = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3607,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token"
        answer = await self.api.request("POST", path, body)
        write_in_place(self.dir / "sa" / "token", answer["status"]["token"])
        expiry = dt.datetime.fromisoformat(answer["status"]["expirationTimestamp"])
        return max(60.0, (expiry - dt.datetime.now(dt.UTC)).total_seconds())

    async def _token_refresher(self, ttl: float) -> None:
        while not self.terminating:
            await asyncio.sleep(ttl * 0.8)
            with contextlib.suppress(ApiError, aiohttp.ClientError, asyncio.TimeoutError):
                ttl = await self._request_token()

    def refresh_hosts(self) -> None:
        if self.ip is None:
            return
        pod = dict(self.pod)
        pod["status"] = dict(pod.get("status") or {}, podIP=self.ip)
        write_in_place(self.dir / "hosts", self.render_hosts(pod))

    async def apply_redirects(self, wanted: list[tuple[int, int]]) -> None:
        """Make the pod's netns redirect Service ports to their target ports."""
        if wanted == self.redirects or self.net is None or not self.sandbox_ready:
            return
        ipt = ["ip", "netns", "exec", self.net.netns, "iptables", "-w", "-t", "nat"]
        if not self.redirects:
            await run_cmd([*ipt, "-N", "RL-SVC"], check=False)
            await run_cmd([*ipt, "-A", "PREROUTING", "-j", "RL-SVC"], check=False)
            await run_cmd([*ipt, "-A", "OUTPUT", "-j", "RL-SVC"], check=False)
        await run_cmd([*ipt, "-F", "RL-SVC"], check=False)
        for port, target in wanted:
            await run_cmd(
                [
                    *ipt,
                    "-A",
                    "RL-SVC",
                    "-p",
                    "tcp",
                    "-d",
                    str(self.ip),
                    "--dport",
                    str(port),
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    str(target),
                ],
                check=False,
            )
        self.redirects = wanted

    async def apply_netpol(self, text: str) -> None:
        """Rebuild the pod's RL-NETPOL chain atomically (iptables-restore --noflush)."""
        if self.net is None or not self.netns_up or self.terminating or text == self.netpol:
            return
        ipt = ["ip", "netns", "exec", self.net.netns]
        proc = await asyncio.create_subprocess_exec(
            *ipt,
            "iptables-restore",
            "--noflush",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(text.encode())
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore in {self.net.netns}: {out.decode().strip()}")
        if self.netpol is None:  # after RL-FAULT, which faults insert at position 1
            check = [*ipt, "iptables", "-w", "-C", "INPUT", "-j", "RL-NETPOL"]
            if (await run_cmd(check, check=False))[0] != 0:
                await run_cmd([*ipt, "iptables", "-w", "-A", "INPUT", "-j", "RL-NETPOL"])
        self.netpol = text

    # --- containers ------------------------------------------------------------------
    def _security(self, c: Obj) -> tuple[int | None, int]:
        pod_sc = self.pod.get("spec", {}).get("securityContext") or {}
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        uid = sc.get("runAsUser")
        if uid is None and sc.get("runAsNonRoot"):
            uid = 65534  # an image's non-root USER is unknown here: run as nobody
        gid = int(sc.get("runAsGroup", 0))
        return (None if uid is None or int(uid) == 0 else int(uid)), gid

    async def _volumes(self) -> dict[str, str]:
        """Prepare every volume's directory; volume name -> host path."""
        out: dict[str, str] = {}
        for vol in self.pod.get("spec", {}).get("volumes") or []:
            name = vol["name"]
            path = self.dir / "volumes" / name
            if "projected" in vol and any(
                "serviceAccountToken" in s for s in vol["projected"].get("sources") or []
            ):
                out[name] = str(self.dir / "sa")
                continue
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777 if "emptyDir" in vol else 0o755)
            files: dict[str, str] = {}
            if "configMap" in vol:
                cm = await self.api.get(
                    f"/api/v1/namespaces/{self.ns}/configmaps/{vol['configMap']['name']}"
                )
                files = dict((cm or {}).get("data") or {})
            elif "secret" in vol:
                sec = await self.api.get(
                    f"/api/v1/namespaces/{self.ns}/secrets/{vol['secret']['secretName']}"
                )
                files = {
                    k: base64.b64decode(v).decode(errors="replace")
                    for k, v in ((sec or {}).get("data") or {}).items()
                }
            for key, text in files.items():
                write_in_place(path / key, text)
            out[name] = str(path)
        return out

    async def _env(self, c: Obj, workdir: Path) -> dict[str, str]:
        cms_names, sec_names = specs.referenced_objects(self.pod)
        cms = {n: o for n in cms_names if (o := await self._get("configmaps", n)) is not None}
        secs = {n: o for n in sec_names if (o := await self._get("secrets", n)) is not None}
        hostname = self.pod.get("spec", {}).get("hostname") or self.name
        base = {
            "PATH": f"{self.cfg.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
            "/sbin:/bin",
            "HOSTNAME": hostname,
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": self.cfg.gateway_ip,
            "KUBERNETES_SERVICE_PORT": str(self.cfg.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.cfg.apiserver_port),
            "KUBERNETES_PORT": f"tcp://{self.cfg.gateway_ip}:{self.cfg.apiserver_port}",
        }
        pod = dict(self.pod)
        pod["status"] = dict(pod.get("status") or {}, podIP=self.ip, hostIP=self.cfg.gateway_ip)
        return specs.container_env(pod, c, base, cms, secs)

    async def _get(self, kind: str, name: str) -> Obj | None:
        return await self.api.get(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")

    def _launch_argv(self, c: Obj, workdir: Path, volumes: dict[str, str]) -> list[str]:
        assert self.net is not None
        hostname = self.pod.get("spec", {}).get("hostname") or self.name
        q = shlex.quote
        mounts = [
            (vm, volumes[vm["name"]]) for vm in c.get("volumeMounts") or [] if vm["name"] in volumes
        ]
        # A volume may be mounted over a host directory the container itself
        # runs from: an emptyDir on /tmp hides a checkout (venv, pod files)
        # living under /tmp. Such host roots are first bound to a staging
        # point, sources are taken from there, and each root is bound back
        # inside any volume that covers it.
        roots = [
            r
            for r in host_roots(self.cfg)
            if any(r.is_relative_to(vm["mountPath"]) for vm, _ in mounts)
        ]
        keep = {r: KEEP_DIR / str(i) for i, r in enumerate(roots)}

        def src(path: Path | str) -> str:
            for r, k in keep.items():
                if Path(path).is_relative_to(r):
                    return str(k / Path(path).relative_to(r))
            return str(path)

        lines = ["set -e", f"hostname {q(hostname[:63])}"]
        for r, k in keep.items():
            k.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount --bind {q(str(r))} {q(str(k))}")
        lines += [
            f"mount --bind {q(src(self.dir / 'hosts'))} /etc/hosts",
            f"mount --bind {q(src(self.dir / 'resolv.conf'))} /etc/resolv.conf",
        ]
        for vm, vsrc in mounts:
            dst = vm["mountPath"]
            lines.append(f"mkdir -p {q(dst)}")
            lines.append(f"mount --bind {q(src(vsrc))} {q(dst)}")
            if vm.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {q(dst)}")
            for r, k in keep.items():
                if r.is_relative_to(dst):
                    lines.append(f"mkdir -p {q(str(r))}")
                    lines.append(f"mount --bind {q(str(k))} {q(str(r))}")
        lines.append(f"cd {q(c.get('workingDir') or str(workdir))}")
        uid, gid = self._security(c)
        if uid is not None:
            # An image's non-root USER has a passwd entry; emulate that, so
            # getpass.getuser() and friends work for any runAsUser.
            passwd, group = self._identity_files(uid, gid, workdir)
            lines.append(f"mount --bind {q(src(passwd))} /etc/passwd")
            lines.append(f"mount --bind {q(src(group))} /etc/group")
        if uid is None:
            lines.append('exec "$@"')
        else:
            lines.append(f'exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@"')
        cmd = [*(c.get("command") or []), *(c.get("args") or [])]
        return [
            "ip",
            "netns",
            "exec",
            self.net.netns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            "\n".join(lines),
            "container",
            *cmd,
        ]

    def _identity_files(self, uid: int, gid: int, home: Path) -> tuple[Path, Path]:
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not any(line.split(":")[2:3] == [str(uid)] for line in passwd.splitlines()):
            passwd += f"user{uid}:x:{uid}:{gid}:pod user:{home}:/bin/sh\n"
        if not any(line.split(":")[2:3] == [str(gid)] for line in group.splitlines()):
            group += f"group{gid}:x:{gid}:\n"
        paths = (self.dir / f"passwd-{uid}", self.dir / f"group-{uid}")
        write_in_place(paths[0], passwd)
        write_in_place(paths[1], group)
        return paths

    async def _container_loop(self, c: Obj, init: bool = False) -> bool:
        """Run container `c` under the restart policy; True if it ended in success.

        An init container is restarted on failure unless restartPolicy is Never
        and ends the loop on its first success.
        """
        name = c["name"]
        view = self.init_views[name] if init else self.views[name]
        if not c.get("command"):
            view.state, view.reason = "waiting", "NoCommand"
            view.message = (
                f"the test kubelet runs only an explicit command; container {name!r} has none "
                f"(image {c.get('image', '')!r} is recorded, never pulled)"
            )
            self.dirty.set()
            return False
        policy = self.pod.get("spec", {}).get("restartPolicy", "Always")
        backoff = 0.5
        workdir = self.dir / "work" / name
        workdir.mkdir(parents=True, exist_ok=True)
        uid, gid = self._security(c)
        if uid is not None:
            os.chown(workdir, uid, gid)
        logfile = self.cfg.pod_logs_dir / f"{self.ns}_{self.name}_{name}.log"
        while not self.terminating:
            try:
                env = await self._env(c, workdir)
                volumes = await self._volumes()
            except specs.ConfigError as e:
                view.state, view.reason, view.message = (
                    "waiting",
                    "CreateContainerConfigError",
                    str(e),
                )
                self.dirty.set()
                await asyncio.sleep(1.0)
                continue
            except (TimeoutError, ApiError, aiohttp.ClientError) as e:
                view.state, view.reason, view.message = "waiting", "ContainerCreating", str(e)
                self.dirty.set()
                await asyncio.sleep(1.0)
                continue
            with logfile.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *self._launch_argv(c, workdir, volumes),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self.procs[name] = proc
            began = time.monotonic()
            view.state, view.reason, view.message = "running", "", ""
            view.started_at, view.pid, view.started = now_iso(), proc.pid, True
            view.ready = c.get("readinessProbe") is None
            view.exit_code = None
            self._write_state()
            self.dirty.set()
            probes = [
                asyncio.create_task(self._probe_loop(kind, c[key], view, proc))
                for kind, key in (("readiness", "readinessProbe"), ("liveness", "livenessProbe"))
                if c.get(key)
            ]
            rc = await proc.wait()
            for t in probes:
                t.cancel()
            code = rc if rc >= 0 else 128 - rc
            killed_by_probe = name in self.liveness_killed
            self.liveness_killed.discard(name)
            view.state, view.exit_code, view.ready, view.pid = "terminated", code, False, None
            view.finished_at = now_iso()
            view.reason = "Completed" if code == 0 else "Error"
            view.message = "liveness probe failed" if killed_by_probe else ""
            self.dirty.set()
            if self.terminating:
                return False
            if init and code == 0:
                return True
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if init:
                restart = code != 0 and policy != "Never"
            if not restart:
                return code == 0
            if time.monotonic() - began > 2 * MAX_BACKOFF:
                backoff = 0.5
            view.last_terminated = view.status()["state"]["terminated"]
            view.state, view.reason = "waiting", "CrashLoopBackOff"
            view.message = f"back-off {backoff:.1f}s restarting failed container {name}"
            self.dirty.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            view.restart_count += 1
        return False

    # --- probes -----------------------------------------------------------------------
    def _port(self, c: Obj, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port!r}")

    async def _probe_once(self, c: Obj, probe: Obj) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                hg = probe["httpGet"]
                host = hg.get("host") or self.ip
                scheme = hg.get("scheme", "HTTP").lower()
                url = f"{scheme}://{host}:{self._port(c, hg['port'])}{hg.get('path', '/')}"
                headers = {h["name"]: h["value"] for h in hg.get("httpHeaders") or []}
                async with self.probes.get(
                    url, headers=headers, ssl=False, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                port = self._port(c, probe["tcpSocket"]["port"])
                _, w = await asyncio.wait_for(asyncio.open_connection(self.ip, port), timeout)
                w.close()
                return True
            if "exec" in probe and self.net is not None:
                path = f"PATH={self.cfg.venv_bin}:/usr/local/bin:/usr/bin:/bin"
                argv = [
                    "ip",
                    "netns",
                    "exec",
                    self.net.netns,
                    "env",
                    path,
                    *probe["exec"]["command"],
                ]
                async with asyncio.timeout(timeout):
                    rc, _ = await run_cmd(argv, check=False)
                return rc == 0
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return False
        return True  # grpc probes are not run on the test node

    async def _probe_loop(
        self, kind: str, probe: Obj, view: specs.ContainerView, proc: asyncio.subprocess.Process
    ) -> None:
        c = next(x for x in self.pod["spec"]["containers"] if x["name"] == view.name)
        period = float(probe.get("periodSeconds", 10))
        fail_max = int(probe.get("failureThreshold", 3))
        ok_min = int(probe.get("successThreshold", 1))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        oks = fails = 0
        while True:
            ok = await self._probe_once(c, probe)
            oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
            if kind == "readiness":
                if ok and oks >= ok_min and not view.ready:
                    view.ready = True
                    self.dirty.set()
                elif not ok and fails >= fail_max and view.ready:
                    view.ready = False
                    self.dirty.set()
            elif fails >= fail_max:
                self.liveness_killed.add(view.name)
                await self._signal_and_wait(proc, self._grace())
                return
            # Until a container is first ready, probe readiness faster than its
            # period, so pods become Ready promptly on the test node.
            fast = kind == "readiness" and not view.ready
            await asyncio.sleep(min(period, 0.25) if fast else period)

    def _grace(self) -> float:
        return float(self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    @staticmethod
    async def _signal_and_wait(proc: asyncio.subprocess.Process, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), wait)

    # --- termination -------------------------------------------------------------------
    async def terminate(self, grace: float, delete: bool) -> None:
        if self.terminating:
            return
        self.terminating = True
        log.info("terminating %s/%s (grace %.0fs)", self.ns, self.name, grace)
        await asyncio.gather(
            *(self._signal_and_wait(p, grace) for p in self.procs.values()),
            return_exceptions=True,
        )
        for t in self.container_tasks:
            t.cancel()
        await asyncio.gather(*self.container_tasks, return_exceptions=True)
        if self.main is not None:
            self.main.cancel()
        await self._teardown_sandbox()
        if delete and not self.removed_from_api:
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            with contextlib.suppress(ApiError, aiohttp.ClientError, asyncio.TimeoutError):
                await self.api.request(
                    "DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}", body
                )
        for task in self.tasks:
            task.cancel()
        self.finished.set()

    async def _teardown_sandbox(self) -> None:
        if self.net is not None:
            _, pids = await run_cmd(["ip", "netns", "pids", self.net.netns], check=False)
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            for cmd in pod_teardown_commands(self.net):
                await run_cmd(cmd, check=False)
        if self.ip is not None:
            self.pool.release(self.ip)
        state = self.dir / "state.json"
        with contextlib.suppress(OSError):
            data = json.loads(state.read_text())
            data["terminated"] = True
            state.write_text(json.dumps(data))

    # --- status ------------------------------------------------------------------------
    def _write_state(self) -> None:
        """`state.json`: what the fault injector and `down` need to find this pod."""
        data = {
            "namespace": self.ns,
            "name": self.name,
            "uid": self.uid,
            "ip": self.ip,
            "netns": self.net.netns if self.net else None,
            "host_veth": self.net.host_veth if self.net else None,
            "containers": {n: p.pid for n, p in self.procs.items() if p.returncode is None},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state.json").write_text(json.dumps(data))

    async def _status_loop(self) -> None:
        while True:
            await self.dirty.wait()
            await asyncio.sleep(0.02)  # coalesce bursts into one PATCH
            self.dirty.clear()
            if self.terminating and self.finished.is_set():
                return
            status = specs.pod_status(
                self.pod,
                list(self.views.values()),
                self.sandbox_ready,
                self.ip,
                self.cfg.gateway_ip,
                self.start_time,
                now_iso(),
                self.pod.get("status"),
                init_views=list(self.init_views.values()),
                initialized=self.initialized,
                init_failed=self.init_failed,
            )
            if status == self.last_status:
                continue
            try:
                # A merge patch replaces lists whole: podIPs after a kubelet
                # restart gave the pod a new address must not be merged.
                await self.api.patch(
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                    {"status": status},
                    strategic=False,
                )
                self.last_status = status
            except ApiError as e:
                if e.status == 404:
                    return
                log.warning("status of %s/%s: %s", self.ns, self.name, e)
                await asyncio.sleep(0.5)
                self.dirty.set()
            except (TimeoutError, aiohttp.ClientError) as e:
                log.warning("status of %s/%s: %s", self.ns, self.name, e)
                await asyncio.sleep(0.5)
                self.dirty.set()
