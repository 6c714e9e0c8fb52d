"""HTTP to the node pods: ask for `/v1/state` (read-only).

One aiohttp session per operator process (made in `main`, closed there),
through the pod IP. Targets are not sent to nodes over HTTP: the operator
writes them to a node pod's inject annotation through the API server
(`Kube.write_injection`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from reactive_node.core import contract as c


class NodeClient:
    """Reads the nodes' `/v1/state`."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float, port: int = c.DEFAULT_PORT
    ) -> None:
        self._session = session
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def state(self, ip: str) -> Mapping[str, Any] | None:
        """The node's `/v1/state` document, or None when it cannot be asked."""
        url = f"http://{_host(ip)}:{self._port}{c.STATE_PATH}"
        try:
            async with self._session.get(url, timeout=self._timeout) as r:
                if r.status != 200:
                    return None
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, Mapping) else None

    async def states(self, ips: Mapping[str, str]) -> dict[str, Mapping[str, Any] | None]:
        """Ask many nodes at once: {pod name: document or None}."""
        names = list(ips)
        answers = await asyncio.gather(*(self.state(ips[n]) for n in names))
        return dict(zip(names, answers, strict=True))


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
