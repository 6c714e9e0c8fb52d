"""Where the local control plane keeps its files and which ports it uses.

One frozen value describes a cluster instance; every other module takes it as
an argument instead of reading globals, so tests can build one for a temporary
directory and the CLI builds the real one for the checkout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def checkout_root() -> Path:
    """The repository root (this file lives in tests/localcluster/)."""
    return Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    """The cache the Go-built binaries live in (hack/build-tools.sh)."""
    cache = os.environ.get("RL_CACHE") or str(Path.home() / ".cache" / "reactive-loop")
    return Path(cache) / "bin"


@dataclass(frozen=True)
class ClusterConfig:
    """Addresses, names and paths of one local cluster."""

    root: Path
    """The checkout (its `.venv/bin` goes on the tools' PATH)."""
    bin_dir: Path
    """Directory holding etcd, kube-*, kubectl and helm."""
    state_root: Path | None = None
    """Where `.local-cluster` state goes; None: `<root>/.local-cluster`."""
    service_cidr: str = "10.96.0.0/16"
    kubernetes_service_ip: str = "10.96.0.1"
    apiserver_port: int = 6443
    etcd_client_port: int = 12379
    etcd_peer_port: int = 12380
    kcm_port: int = 10257
    cluster_domain: str = "cluster.local"

    @classmethod
    def default(cls) -> ClusterConfig:
        """The checkout's cluster, or the one RL_CLUSTER_CONFIG (a JSON file) names."""
        path = os.environ.get("RL_CLUSTER_CONFIG")
        if path:
            return cls.from_json(Path(path).read_text())
        return cls(root=checkout_root(), bin_dir=tools_bin())

    @classmethod
    def scratch(cls, state_root: Path, index: int = 1) -> ClusterConfig:
        """A second instance beside the default one: its own state directory
        and ports (index 1..5)."""
        return cls(
            root=checkout_root(),
            bin_dir=tools_bin(),
            state_root=state_root,
            apiserver_port=6443 + 10000 * index,
            etcd_client_port=12379 + 1000 * index,
            etcd_peer_port=12380 + 1000 * index,
            kcm_port=10257 + 10000 * index,
        )

    def to_json(self) -> str:
        data: dict[str, Any] = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> ClusterConfig:
        data = json.loads(text)
        for key in ("root", "bin_dir", "state_root"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)

    # --- layout under <root>/.local-cluster --------------------------------
    @property
    def state_dir(self) -> Path:
        return self.state_root or self.root / ".local-cluster"

    @property
    def config_file(self) -> Path:
        """This config as JSON (`python -m localcluster scratch-config`)."""
        return self.state_dir / "cluster.json"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def venv_bin(self) -> Path:
        return self.root / ".venv" / "bin"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name
