"""`python -m localcluster.kubelet --config .local-cluster/cluster.json` (started by `up`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import aiohttp

from localcluster.config import ClusterConfig
from localcluster.kubelet.agent import Agent
from localcluster.kubelet.api import Api


async def amain(cfg: ClusterConfig) -> None:
    version_file = cfg.bin_dir / ".kube-apiserver.version"
    version = version_file.read_text().strip() if version_file.exists() else "v0.0.0"
    # Probes open a new connection each time (force_close), as the kubelet does.
    connector = aiohttp.TCPConnector(force_close=True, limit=100)
    async with Api(cfg) as api, aiohttp.ClientSession(connector=connector) as probes:
        await Agent(cfg, api, version, probes).run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="localcluster.kubelet")
    parser.add_argument("--config", type=Path, required=True, help="ClusterConfig as JSON")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(amain(ClusterConfig.from_json(args.config.read_text())))


if __name__ == "__main__":
    main()
