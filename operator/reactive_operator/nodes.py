"""HTTP to the node pods: ask for `/v1/state` (read-only).

The requests are the node package's client (reactive_node.runtime.client),
shared with local mode; this module adds the operator's policy: pods are
asked by IP at the loop's port and each request is bounded by the operator's
node timeout. A node that cannot be asked, or answers something that is not a
state document, gives a `NodeError` (logged at debug level); the reconciler
counts it as not answered and shows a bad answer (one with status 200) as the
node's problem in the status. One aiohttp session per operator process (made
in `main`, closed there). Targets are not sent to nodes over HTTP: the
operator writes them to a node pod's inject annotation through the API server
(`Kube.write_injection`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument
from reactive_node.runtime import client
from reactive_node.runtime.client import NodeError

__all__ = ["NodeClient", "NodeError"]

log = logging.getLogger(__name__)


class NodeClient:
    """Reads the nodes' `/v1/state`."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float, port: int = c.DEFAULT_PORT
    ) -> None:
        self._client = client.NodeClient(session, timeout)
        self._port = port

    async def state(self, ip: str) -> StateDocument | None:
        """The node's `/v1/state` document, or None when it cannot be asked."""
        answer = (await self.states({ip: ip}))[ip]
        return None if isinstance(answer, NodeError) else answer

    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | NodeError]:
        """Ask many nodes at once: {pod name: document, or why there is none}."""
        answers = await self._client.states(
            {name: client.node_address(ip, self._port) for name, ip in ips.items()}
        )
        for name, answer in answers.items():
            if isinstance(answer, NodeError):
                log.debug("node %s not answered: %s", name, answer)
        return answers
