"""`python -m localcluster.kubelet --root CHECKOUT --bin-dir BIN` (started by `up`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from localcluster.config import ClusterConfig
from localcluster.kubelet.agent import Agent
from localcluster.kubelet.api import Api


async def amain(cfg: ClusterConfig) -> None:
    version_file = cfg.bin_dir / ".kube-apiserver.version"
    version = version_file.read_text().strip() if version_file.exists() else "v0.0.0"
    async with Api(cfg) as api:
        await Agent(cfg, api, version).run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="localcluster.kubelet")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--bin-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(amain(ClusterConfig(root=args.root, bin_dir=args.bin_dir)))


if __name__ == "__main__":
    main()
