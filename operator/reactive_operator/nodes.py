"""HTTP to the node pods: ask for `/v1/state` (read-only).

The requests are the node package's client (reactive_node.runtime.client),
shared with local mode; this module adds the operator's policy: pods are
asked by IP at the loop's port, each request is bounded by the operator's
node timeout, and a node that cannot be asked, or answers something that is
not a state document, counts as not answered (None; the reason, e.g. what is
malformed where, is logged at debug level). One aiohttp session per operator
process (made in `main`, closed there). Targets are not sent to nodes over HTTP: the operator writes
them to a node pod's inject annotation through the API server
(`Kube.write_injection`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from reactive_node.core import contract as c
from reactive_node.core.codec import StateDocument
from reactive_node.runtime import client

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
        return (await self.states({ip: ip}))[ip]

    async def states(self, ips: Mapping[str, str]) -> dict[str, StateDocument | None]:
        """Ask many nodes at once: {pod name: document or None}."""
        answers = await self._client.states(
            {name: client.node_address(ip, self._port) for name, ip in ips.items()}
        )
        out: dict[str, StateDocument | None] = {}
        for name, answer in answers.items():
            if isinstance(answer, client.NodeError):
                log.debug("node %s not answered: %s", name, answer)
                out[name] = None
            else:
                out[name] = answer
        return out
