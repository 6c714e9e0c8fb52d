"""The one HTTP client for talking to nodes: read `/v1/state` and `/v1/history`,
and inject a converge target by a round trip (signed when there is a key).

Local mode (`set-target`, the supervisor, `reactive-loop chaos`) and the
operator (reactive_operator.nodes) use it. It owns no session: the caller makes
one aiohttp session, keeps it for as long as it polls, and closes it.

Every failure is a `NodeError` whose message says what went wrong at which
address: no connection, no answer in time, an HTTP error status, an answer that
is not JSON or not an object. Nothing else escapes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from ..core import auth, codec, contract
from ..core.codec import BadStateDocument, StateDocument, decode_state_document

#: Longest part of a bad answer's body quoted in an error.
QUOTED_CHARS: Final = 200


class NodeError(Exception):
    """A node could not be asked, or its answer is not usable.

    `address` is the node's host:port, `reason` what went wrong (the message is
    "address: reason"), `status` the HTTP status when the node answered one,
    `kind` a short label for a table cell (e.g. "state answered 503",
    "TimeoutError")."""

    def __init__(
        self, address: str, reason: str, status: int | None = None, kind: str | None = None
    ) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.status = status
        self.kind = reason if kind is None else kind


def node_address(host: str, port: int = contract.DEFAULT_PORT) -> str:
    """`host:port` (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "…"


def _object(address: str, path: str, body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        what = path.split("?")[0].rsplit("/", 1)[-1]
        reason = f"{path} answered {type(body).__name__}, not a JSON object"
        raise NodeError(address, reason, 200, f"{what} answered non-object")
    return body


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer's bytes, to its end or to just past `limit`."""
    raw = bytearray()
    async for chunk in content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            break
    return bytes(raw)


class NodeClient:
    """Asks nodes over one aiohttp session.

    `timeout` bounds each request (connect, send and the whole answer), in
    seconds; None leaves the session's own timeout."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float | None = None) -> None:
        self._session = session
        self._seconds = timeout
        self._timeout = None if timeout is None else aiohttp.ClientTimeout(total=timeout)

    async def _request(
        self,
        method: str,
        address: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON of a 200 answer; raises NodeError for anything else."""
        url = f"http://{address}{path}"
        what = path.split("?")[0].rsplit("/", 1)[-1]
        kwargs: dict[str, Any] = {}
        if self._timeout is not None:
            kwargs["timeout"] = self._timeout
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, **kwargs
            ) as r:
                raw = await _read_bounded(r.content, contract.MAX_NODE_ANSWER_BYTES)
                status = r.status
        except TimeoutError as e:
            within = "" if self._seconds is None else f" within {self._seconds:g}s"
            raise NodeError(address, f"{path}: no answer{within}", kind="TimeoutError") from e
        except (aiohttp.ClientError, OSError) as e:
            reason = f"{path}: {type(e).__name__} {e}".strip()
            raise NodeError(address, reason, kind=type(e).__name__) from e
        if len(raw) > contract.MAX_NODE_ANSWER_BYTES:
            limit = contract.MAX_NODE_ANSWER_BYTES
            reason = f"{path} answered {status} with more than {limit} bytes"
            raise NodeError(address, reason, status, f"{what} answered too much")
        text = raw.decode("utf-8", "replace")
        if status != 200:
            detail = f": {_quote(text)}" if text.strip() else ""
            reason = f"{path} answered {status}{detail}"
            raise NodeError(address, reason, status, f"{what} answered {status}")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as e:
            reason = f"{path} answered 200 but not JSON: {_quote(text)}"
            raise NodeError(address, reason, 200, f"{what} answered non-JSON") from e

    async def _object(self, address: str, path: str) -> Mapping[str, Any]:
        return _object(address, path, await self._request("GET", address, path))

    async def state(self, address: str) -> StateDocument:
        """The node's `/v1/state` document; a malformed one is a NodeError that
        says what is wrong where (`codec.decode_state_document`)."""
        body = await self._object(address, contract.STATE_PATH)
        try:
            return decode_state_document(body)
        except BadStateDocument as e:
            reason = f"{contract.STATE_PATH} answered {e}"
            raise NodeError(address, reason, 200, "state answered malformed") from e

    async def states(self, addresses: Mapping[str, str]) -> dict[str, StateDocument | NodeError]:
        """Ask many nodes at once: {name: document, or the NodeError it gave}."""
        names = list(addresses)

        async def one(name: str) -> StateDocument | NodeError:
            try:
                return await self.state(addresses[name])
            except NodeError as e:
                return e

        answers = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, answers, strict=True))

    async def history(self, address: str, since: int | None = None) -> Mapping[str, Any]:
        """A `/v1/history` page (entries changed after `since`; all without it).
        Reading it back is `core.history.merge_page`, which checks the rest."""
        query = "" if since is None else f"?since={since}"
        return await self._object(address, contract.HISTORY_PATH + query)

    async def inject(
        self,
        address: str,
        *,
        loop: str,
        recipient: str,
        boot: int,
        seq: int,
        state: Any,
        keys: auth.Keyring | None = None,
        now: float | None = None,
    ) -> Mapping[str, Any]:
        """Send `state` to the node at `address` by a round trip from
        `contract.OPERATOR_SENDER`, version 1 (every node version accepts it),
        identified by the sender's `(boot, seq)`; with `keys` it is signed with
        the primary key, addressed to `recipient` (the node's name). Returns the
        node's answer (a JSON object)."""
        try:
            request = codec.make_request(loop, contract.OPERATOR_SENDER, boot, seq, state)
        except codec.BadBody as e:
            raise NodeError(address, f"cannot make the round trip: {e}") from e
        data = codec.encode(request)
        headers = {"Content-Type": "application/json"}
        if keys is not None:
            try:
                headers[contract.SIGNATURE_HEADER] = auth.sign(
                    keys,
                    sender=contract.OPERATOR_SENDER,
                    recipient=recipient,
                    body=data,
                    now=time.time() if now is None else now,
                )
            except ValueError as e:
                raise NodeError(address, f"cannot sign: {e}") from e
        answer = await self._request(
            "POST", address, contract.ROUNDTRIP_PATH, data=data, headers=headers
        )
        return _object(address, contract.ROUNDTRIP_PATH, answer)
