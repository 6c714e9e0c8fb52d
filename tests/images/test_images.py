"""The built images, run with docker as Kubernetes runs them: their numeric
non-root user, a read-only root filesystem, no capabilities.

Needs `make images` (tag from IMAGE_TAG, default 0.1.0). Without docker or
the images every test fails with the reason; none is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import TypedDict, cast

import pytest
import yaml
from chart.helmchart import CHART

IMAGE_TAG = os.environ.get("IMAGE_TAG", "0.1.0")
COMPONENTS = ("node", "operator")
# How Kubernetes runs them (the chart's and the operator's securityContext).
RESTRICTED = (
    *("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"),
    *("--security-opt", "no-new-privileges", "--network", "none"),
)

# Run in an image's venv python: what it holds, as JSON.
INVENTORY = """
import importlib.util, json, os, sys
venv = sys.prefix
missing_pyc = []
for root, _dirs, files in os.walk(os.path.join(venv, "lib")):
    for f in files:
        if f.endswith(".py"):
            pyc = f"{f[:-3]}.{sys.implementation.cache_tag}.pyc"
            if not os.path.exists(os.path.join(root, "__pycache__", pyc)):
                missing_pyc.append(os.path.join(root, f))
mods = ("reactive_node", "reactive_operator", "kopf", "kubernetes_asyncio", "pip",
        "setuptools", "wheel", "pytest", "mypy", "ruff", "hypothesis", "kmock")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "venv": venv,
    "modules": [m for m in mods if importlib.util.find_spec(m)],
    "bin": sorted(os.listdir(os.path.join(venv, "bin"))),
    "missing_pyc": missing_pyc[:5],
}))
"""


class Inventory(TypedDict):
    uid: int
    gid: int
    venv: str
    modules: list[str]
    bin: list[str]
    missing_pyc: list[str]


HEALTH = """
import urllib.request
for path in ("/healthz", "/readyz"):
    with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=2) as r:
        print(path, r.status, r.read().decode())
"""


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    if not shutil.which("docker"):
        pytest.fail("no docker command: these tests run the built images", pytrace=False)
    if (info := docker("info", "--format", "{{.ServerVersion}}", timeout=30)).returncode:
        pytest.fail(f"no Docker daemon answers: {info.stderr.strip()}", pytrace=False)
    found = {c: f"reactive-loop-{c}:{IMAGE_TAG}" for c in COMPONENTS}
    absent = [i for i in found.values() if docker("image", "inspect", i).returncode]
    if absent:
        pytest.fail(f"images not built: {', '.join(absent)} (run `make images`)", pytrace=False)
    return found


def run_python(image: str, code: str) -> str:
    proc = docker("run", "--rm", *RESTRICTED, "--entrypoint", "python", image, "-c", code)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def inventory(images: dict[str, str]) -> dict[str, Inventory]:
    return {c: cast(Inventory, json.loads(run_python(i, INVENTORY))) for c, i in images.items()}


def expected_uid(component: str) -> int:
    if component == "node":
        from reactive_operator import builders

        return builders.NODE_UID
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return int(values["operator"]["securityContext"]["runAsUser"])


@pytest.mark.parametrize("component", COMPONENTS)
def test_runs_as_its_numeric_non_root_user(
    images: dict[str, str], inventory: dict[str, Inventory], component: str
) -> None:
    user = docker("image", "inspect", "--format", "{{.Config.User}}", images[component])
    uid = expected_uid(component)
    assert user.stdout.strip() == f"{uid}:{uid}"
    assert (inventory[component]["uid"], inventory[component]["gid"]) == (uid, uid)


@pytest.mark.parametrize("component", COMPONENTS)
def test_venv_is_compiled_and_holds_no_install_or_dev_tools(
    inventory: dict[str, Inventory], component: str
) -> None:
    held = inventory[component]
    assert held["venv"] == "/opt/venv"
    assert held["missing_pyc"] == [], "bytecode not compiled at build time"
    bins = held["bin"]
    assert not [b for b in bins if b.startswith(("pip", "activate", "Activate", "wheel"))], bins
    tools = {"pip", "setuptools", "wheel", "pytest", "mypy", "ruff", "hypothesis", "kmock"}
    assert not tools & set(held["modules"])


def test_node_image_holds_the_node_only(inventory: dict[str, Inventory]) -> None:
    node = inventory["node"]
    assert node["modules"] == ["reactive_node"]
    assert "reactive-loop" in node["bin"]
    assert "reactive-loop-operator" not in node["bin"]


def test_operator_image_imports_the_operator(images: dict[str, str]) -> None:
    run_python(images["operator"], "import reactive_operator.main, kubernetes_asyncio.client")


@pytest.fixture
def node_container(images: dict[str, str]) -> Iterator[str]:
    proc = docker("run", "--detach", *RESTRICTED, images["node"], "node", "--state-dir", "/tmp/s")
    assert proc.returncode == 0, proc.stderr
    cid = proc.stdout.strip()
    yield cid
    docker("rm", "--force", cid)


def test_node_serves_health_with_a_read_only_root(node_container: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        proc = docker("exec", node_container, "python", "-c", HEALTH)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    out = docker("logs", node_container)
    logs = out.stdout + out.stderr
    assert proc.returncode == 0, f"{proc.stderr}\nnode log:\n{logs}"
    assert "/healthz 200" in proc.stdout
    assert "/readyz 200" in proc.stdout
    assert "Read-only file system" not in logs
