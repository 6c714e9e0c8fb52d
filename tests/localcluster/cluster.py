"""`Cluster`: what a test holds to use the local control plane.

It runs the real `kubectl` and `helm` with the cluster's admin kubeconfig and
waits for conditions with a deadline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from localcluster import control
from localcluster.config import ClusterConfig

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """`Cluster.wait_for` ran out of time; the message names the condition."""


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `condition` until it returns something truthy; return that value.

    Raises `WaitTimeout` (an AssertionError) naming `what` and the last
    exception the condition raised, if any. Shared by every cluster the tests
    use (this one and kind's).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # the condition may race with object creation
            last_error = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


class Cluster:
    """A running local cluster (see tests/conftest.py for the fixtures)."""

    def __init__(self, cfg: ClusterConfig | None = None) -> None:
        self.cfg = cfg or ClusterConfig.default()

    @property
    def kubeconfig(self) -> Path:
        return self.cfg.kubeconfig

    @property
    def env(self) -> dict[str, str]:
        """The environment for tools: KUBECONFIG and PATH with kubectl/helm first."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.cfg.kubeconfig)
        env["PATH"] = f"{self.cfg.bin_dir}:{self.cfg.venv_bin}:{env.get('PATH', '')}"
        env.setdefault("HELM_CACHE_HOME", str(self.cfg.state_dir / "helm" / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(self.cfg.state_dir / "helm" / "config"))
        env.setdefault("HELM_DATA_HOME", str(self.cfg.state_dir / "helm" / "data"))
        return env

    def _tool(
        self, tool: str, args: tuple[str, ...], check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.cfg.binary(tool)), *args]
        proc = subprocess.run(
            argv,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl; with check=True a non-zero exit raises with its stderr."""
        return self._tool("kubectl", args, check, input, timeout)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run the real helm against the cluster."""
        return self._tool("helm", args, check, input, timeout)

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        """`kubectl apply -f -` of a YAML string."""
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def create_namespace(self, name: str, *labels: str) -> None:
        """Create namespace `name` with `labels` ("key=value") and wait until
        its `default` ServiceAccount exists (pods need it)."""
        self.kubectl("create", "namespace", name)
        if labels:
            self.kubectl("label", "namespace", name, *labels)
        self.wait_for(
            lambda: self.get("serviceaccount", "default", name),
            timeout=30,
            what=f"the default ServiceAccount of namespace {name}",
        )

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        """`kubectl get -o json` parsed; None if the object does not exist."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(f"kubectl {shlex.join(args)}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def wait_for(
        self,
        condition: Callable[[], T | None],
        timeout: float = 30.0,
        interval: float = 0.2,
        what: str = "condition",
    ) -> T:
        """`wait_for` below, for brevity in tests."""
        return wait_for(condition, timeout, interval, what)

    def status(self) -> dict[str, Any]:
        return control.status(self.cfg)
