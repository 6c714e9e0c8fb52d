"""HTTP to the node pods: ask for `/v1/state`, inject a target by a round trip.

One aiohttp session per operator process (made in `main`, closed there). The
operator talks to a node exactly like a peer does, through the pod IP.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from reactive_node import codec
from reactive_node import contract as c


@dataclass(frozen=True)
class InjectResult:
    ok: bool
    status: int | None
    detail: str
    state: Mapping[str, Any] | None = None


class NodeClient:
    """Talks to nodes; `boot` and `seq` make every injection newer than the last."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float, port: int = c.DEFAULT_PORT
    ) -> None:
        self._session = session
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.boot = time.time_ns()
        self._seq = itertools.count(1)

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

    async def inject(
        self, ip: str, *, loop: str, state: Mapping[str, Any], hmac_key: bytes | None
    ) -> InjectResult:
        """Round-trip `state` to the node as sender `reactive-loop-operator`."""
        request = codec.make_request(
            loop, c.OPERATOR_SENDER, self.boot, next(self._seq), dict(state)
        )
        body = codec.encode(request)
        headers = {"Content-Type": "application/json"}
        if hmac_key is not None:
            headers[c.SIGNATURE_HEADER] = codec.sign(hmac_key, body)
        url = f"http://{_host(ip)}:{self._port}{c.ROUNDTRIP_PATH}"
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout
            ) as r:
                answer = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            return InjectResult(False, None, f"{type(e).__name__}: {e}".strip(": "))
        if status != 200 or not isinstance(answer, Mapping):
            detail = str(answer.get("error", answer) if isinstance(answer, Mapping) else answer)
            return InjectResult(False, status, detail[:200])
        new = answer.get("state")
        return InjectResult(True, status, "ok", new if isinstance(new, Mapping) else None)


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
