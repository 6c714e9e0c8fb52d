"""Helpers of the chart tests: the real `helm` binary and a renderer.

The tests run `helm template` and `helm lint --strict` of the real helm that
`make tools` builds (found on PATH or in the tool cache). Without it they fail
with the reason; they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "reactive-loop"
#: helm built from Go modules has no Kubernetes version stamped in; the chart
#: requires >= 1.28, so tell helm which version to render for.
KUBE_VERSION = "1.35.0"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


def find_helm() -> str:
    cache = Path(os.environ.get("RL_CACHE", Path.home() / ".cache" / "reactive-loop")) / "bin"
    found = shutil.which("helm") or shutil.which("helm", path=str(cache))
    if not found:
        pytest.fail(f"helm not found on PATH or in {cache}: run `make tools`", pytrace=False)
    return found


def run_helm(helm: str, *args: str) -> str:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def render_chart(
    helm: str,
    *,
    values: Manifest | None = None,
    values_files: Sequence[Path] = (),
    sets: Sequence[str] = (),
    release: str = "rl",
    namespace: str = "rl-system",
    tmp: Path | None = None,
) -> list[Manifest]:
    """`helm template` the chart and return the manifests (empty documents dropped)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    files = list(values_files)
    if values is not None:
        assert tmp is not None, "values need a temporary directory"
        path = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        files.append(path)
    for f in files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(helm, *args)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [m for m in by_kind(manifests, kind) if m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[m['metadata']['name'] for m in found]}"
    )
    return found[0]
