"""`up`, `down` and `status` of the local control plane.

It is etcd, kube-apiserver and kube-controller-manager from the Go-built
binaries, and nothing else: no node, no pod ever runs. Pods, images,
NetworkPolicy and faults are the kind tier's (tests/kind); this control plane
serves the tests that need only a real API server (CRD schema and CEL,
admission, RBAC) and starts in seconds.

`up` is idempotent: a cluster whose recorded processes all live and whose
apiserver answers /readyz is reused; anything else (a crashed earlier run,
half a cluster) is torn down first and started afresh. Each step waits for
its component with a deadline and fails with the component's log tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import pki, procs
from localcluster.config import ClusterConfig

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")


class ClusterError(RuntimeError):
    """The cluster could not be brought up; the message says why."""


def say(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


# --- small synchronous API client (admin identity) ----------------------------
def _ssl_context(cfg: ClusterConfig, stem: str = "admin") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(cfg.pki_dir / f"{stem}.crt"), str(cfg.pki_dir / f"{stem}.key"))
    return ctx


def api_get(cfg: ClusterConfig, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET `path` on the apiserver as admin: (status, body); status 0 if unreachable."""
    req = urllib.request.Request(cfg.apiserver_url + path)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_ssl_context(cfg)) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
    except (OSError, ssl.SSLError):
        return 0, ""


def api_json(cfg: ClusterConfig, path: str) -> dict[str, Any] | None:
    code, body = api_get(cfg, path)
    if code != 200:
        return None
    data: dict[str, Any] = json.loads(body)
    return data


def wait_until(what: str, check: Callable[[], bool], timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n  " + "\n  ".join(log.read_text(errors="replace").splitlines()[-15:])
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


# --- components ----------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    name: str
    args: list[str]
    env: dict[str, str] | None = None


def _kubeconfig_path(cfg: ClusterConfig, stem: str) -> Path:
    return cfg.state_dir / "kubeconfigs" / f"{stem}.kubeconfig"


def component_specs(cfg: ClusterConfig) -> list[Component]:
    p = cfg.pki_dir
    etcd_url = f"http://127.0.0.1:{cfg.etcd_client_port}"
    peer_url = f"http://127.0.0.1:{cfg.etcd_peer_port}"
    kcm_kc = str(_kubeconfig_path(cfg, "controller-manager"))
    return [
        Component(
            "etcd",
            [
                str(cfg.binary("etcd")),
                "--name=rl",
                f"--data-dir={cfg.etcd_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=rl={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        ),
        Component(
            "kube-apiserver",
            [
                str(cfg.binary("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={cfg.apiserver_port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
                "DefaultTolerationSeconds,Priority,ResourceQuota,PodSecurity,"
                "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                f"--service-account-issuer=https://kubernetes.default.svc.{cfg.cluster_domain}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={cfg.service_cidr}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        ),
        Component(
            "kube-controller-manager",
            [
                str(cfg.binary("kube-controller-manager")),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={cfg.service_cidr}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={cfg.kcm_port}",
                "--profiling=false",
                "--v=1",
            ],
        ),
    ]


def pidfile(cfg: ClusterConfig, name: str) -> Path:
    return cfg.pids_dir / f"{name}.pid"


def log_path(cfg: ClusterConfig, name: str) -> Path:
    return cfg.logs_dir / f"{name}.log"


def component_record(cfg: ClusterConfig, name: str) -> procs.ProcRecord | None:
    rec = procs.read_pidfile(pidfile(cfg, name))
    return rec if rec is not None and rec.alive() else None


# --- readiness checks -------------------------------------------------------------
def etcd_healthy(cfg: ClusterConfig) -> bool:
    try:
        url = f"http://127.0.0.1:{cfg.etcd_client_port}/health"
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def apiserver_ready(cfg: ClusterConfig) -> bool:
    return api_get(cfg, "/readyz")[0] == 200


def default_sa_exists(cfg: ClusterConfig) -> bool:
    return api_json(cfg, "/api/v1/namespaces/default/serviceaccounts/default") is not None


def healthy(cfg: ClusterConfig) -> bool:
    return all(component_record(cfg, c) is not None for c in COMPONENTS) and apiserver_ready(cfg)


# --- host preparation ---------------------------------------------------------------
def check_prerequisites(cfg: ClusterConfig) -> None:
    missing = [b for b in BINARIES if not os.access(cfg.binary(b), os.X_OK)]
    if missing:
        raise ClusterError(
            f"missing binaries in {cfg.bin_dir}: {', '.join(missing)} (run: make tools)"
        )
    for tool in ("openssl",):
        if shutil.which(tool) is None:
            raise ClusterError(f"missing host tool {tool!r} (run: make system-deps)")
    if not cfg.venv_bin.is_dir():
        raise ClusterError(f"no virtualenv at {cfg.venv_bin.parent} (run: make venv)")


def write_configs(cfg: ClusterConfig) -> None:
    for d in (cfg.state_dir, cfg.logs_dir, cfg.pids_dir):
        d.mkdir(parents=True, exist_ok=True)
    pki.ensure_pki(cfg)
    pki.write_kubeconfig(cfg, cfg.kubeconfig, "admin", cfg.apiserver_url)
    pki.write_kubeconfig(
        cfg, _kubeconfig_path(cfg, "controller-manager"), "controller-manager", cfg.apiserver_url
    )
    cfg.config_file.write_text(cfg.to_json())
    cfg.env_file.write_text(
        "# source me: the local cluster's kubeconfig and the built kubectl/helm\n"
        f"export KUBECONFIG={cfg.kubeconfig}\n"
        f'export PATH={cfg.bin_dir}:{cfg.venv_bin}:"$PATH"\n'
    )


# --- up / down / status --------------------------------------------------------------
READY_CHECKS: dict[str, tuple[Callable[[ClusterConfig], bool], float]] = {
    "etcd": (etcd_healthy, 30.0),
    "kube-apiserver": (apiserver_ready, 90.0),
}


@contextlib.contextmanager
def exclusive(cfg: ClusterConfig) -> Iterator[None]:
    """One `up`/`down` at a time per checkout (concurrent pytest sessions share it)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.state_dir / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(cfg: ClusterConfig) -> float:
    """Start (or reuse) the cluster; returns the seconds it took."""
    with exclusive(cfg):
        return _up(cfg)


def _up(cfg: ClusterConfig) -> float:
    t0 = time.monotonic()
    if healthy(cfg):
        say("cluster already running; reusing it")
        return time.monotonic() - t0
    check_prerequisites(cfg)
    if any(procs.read_pidfile(pidfile(cfg, c)) for c in COMPONENTS):
        say("found leftovers of an earlier run; cleaning up first")
        _down(cfg, quiet=True)
    write_configs(cfg)
    for comp in component_specs(cfg):
        log = log_path(cfg, comp.name)
        rec = procs.spawn(comp.args, log, comp.env)
        procs.write_pidfile(pidfile(cfg, comp.name), rec)
        say(f"started {comp.name} (pid {rec.pid}, log {log})")
        if comp.name in READY_CHECKS:
            check, timeout = READY_CHECKS[comp.name]
            ready = functools.partial(_ready_or_dead, cfg, rec, check, comp.name)
            wait_until(f"{comp.name} to become ready", ready, timeout, log)
    wait_until(
        "the default ServiceAccount (kube-controller-manager)",
        lambda: default_sa_exists(cfg) or _fail_if_dead(cfg),
        60,
        log_path(cfg, "kube-controller-manager"),
    )
    took = time.monotonic() - t0
    say(f"cluster ready in {took:.1f}s; run: source {cfg.env_file}")
    return took


def restart(cfg: ClusterConfig, name: str) -> None:
    """Restart one component of a running cluster with the current code/flags.

    etcd data, objects and the other components stay.
    """
    if name not in COMPONENTS:
        raise ClusterError(f"unknown component {name!r} (one of {', '.join(COMPONENTS)})")
    with exclusive(cfg):
        rec = procs.read_pidfile(pidfile(cfg, name))
        if rec is not None:
            procs.stop(rec)
        for port in _ports(cfg, name):
            wait_until(f"port {port} of {name} to be free",
                       functools.partial(procs.port_free, port), 10, None)  # fmt: skip
        write_configs(cfg)
        comp = next(c for c in component_specs(cfg) if c.name == name)
        log = log_path(cfg, name)
        new = procs.spawn(comp.args, log, comp.env)
        procs.write_pidfile(pidfile(cfg, name), new)
        say(f"restarted {name} (pid {new.pid})")
        if name in READY_CHECKS:
            check, timeout = READY_CHECKS[name]
            ready = functools.partial(_ready_or_dead, cfg, new, check, name)
            wait_until(f"{name} to become ready", ready, timeout, log)


def _ports(cfg: ClusterConfig, name: str) -> tuple[int, ...]:
    """The ports `name` listens on."""
    return {
        "etcd": (cfg.etcd_client_port, cfg.etcd_peer_port),
        "kube-apiserver": (cfg.apiserver_port,),
        "kube-controller-manager": (cfg.kcm_port,),
    }[name]


def _ready_or_dead(
    cfg: ClusterConfig, rec: procs.ProcRecord, check: Callable[[ClusterConfig], bool], name: str
) -> bool:
    if not rec.alive():
        tail = "\n  ".join(log_path(cfg, name).read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(f"{name} exited during start-up:\n  {tail}")
    return check(cfg)


def _fail_if_dead(cfg: ClusterConfig) -> bool:
    for name in COMPONENTS:
        if component_record(cfg, name) is None:
            tail = "\n  ".join(log_path(cfg, name).read_text(errors="replace").splitlines()[-15:])
            raise ClusterError(f"{name} is not running:\n  {tail}")
    return False


def down(cfg: ClusterConfig, quiet: bool = False) -> list[str]:
    """Stop everything recorded and remove every host artefact; idempotent."""
    with exclusive(cfg):
        return _down(cfg, quiet)


def _down(cfg: ClusterConfig, quiet: bool) -> list[str]:
    report: list[str] = []
    for name in reversed(COMPONENTS):
        rec = procs.read_pidfile(pidfile(cfg, name))
        if rec is not None and rec.alive():
            procs.stop(rec)
            report.append(f"stopped {name} (pid {rec.pid})")
        pidfile(cfg, name).unlink(missing_ok=True)
    shutil.rmtree(cfg.etcd_dir, ignore_errors=True)
    if not quiet:
        for line in report or ["nothing was running"]:
            say(line)
    return report


def status(cfg: ClusterConfig) -> dict[str, Any]:
    """What runs: each component's pid (or None), apiserver readiness."""
    comps: dict[str, int | None] = {}
    for name in COMPONENTS:
        rec = component_record(cfg, name)
        comps[name] = rec.pid if rec else None
    result: dict[str, Any] = {"components": comps, "apiserver_ready": False}
    if comps["kube-apiserver"] and apiserver_ready(cfg):
        result["apiserver_ready"] = True
    result["kubeconfig"] = str(cfg.kubeconfig)
    return result
