"""The token webhook: `POST {node, epoch, event}` on every acquire and release.

Best effort and bounded (docs/node.md, "The token webhook"):

* one call lasts at most `contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS` (connect,
  send and the answer's status and body together), then it has failed;
* redirects are not followed: a 3xx is a failed call, logged, and the
  `Location` is never contacted (so a redirect cannot lead the node to a host
  the allowed list or the NetworkPolicy's egress would not admit);
* with the loop's HMAC key the body is signed like a round trip, from the node
  to `contract.TOKEN_WEBHOOK_RECIPIENT`, so a receiver holding the key can
  check who called it and refuse a replay;
* the host is checked against the allowed hosts when the node starts
  (`config.webhook_host`, `RL_TOKEN_WEBHOOK_ALLOWED_HOSTS`).

A failed call is logged and not retried: the next acquire or release is the
next call. The node never waits for the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import aiohttp
import yarl

from ..core import auth, contract

log = logging.getLogger(__name__)

#: Most bytes of a webhook's answer read (the rest is dropped with the connection).
MAX_ANSWER_BYTES = 64 * 1024
#: Most calls in flight at once; an event beyond them is logged and dropped.
MAX_PENDING = 16


def webhook_request(
    url: str,
    *,
    node: str,
    event: str,
    epoch: list[int],
    keyring: auth.Keyring | None,
    now: float,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one call: compact JSON, signed when there is a key.

    The signature covers method `POST`, the URL's path as sent (decoded, dot
    segments resolved, without the query: what aiohttp's `request.path` shows
    the receiver), the sender (this node), the recipient `token-webhook`, the
    time and the body as sent."""
    body = json.dumps(
        {"node": node, "epoch": list(epoch), "event": event}, separators=(",", ":")
    ).encode()
    headers = {"Content-Type": "application/json"}
    if keyring is not None:
        headers[contract.SIGNATURE_HEADER] = auth.sign(
            keyring,
            sender=node,
            recipient=contract.TOKEN_WEBHOOK_RECIPIENT,
            body=body,
            now=now,
            method="POST",
            path=yarl.URL(url).path or "/",
        )
    return body, headers


class TokenWebhook:
    """Calls the webhook in the background; `notify` is the node's token listener."""

    def __init__(
        self,
        url: str,
        node: str,
        session: aiohttp.ClientSession,
        *,
        keyring: Callable[[], auth.Keyring | None] = lambda: None,
        timeout: float = contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.node = node
        self.session = session
        self.keyring = keyring
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.clock = clock
        self.tasks: set[asyncio.Task[str | None]] = set()

    async def call(self, event: str, epoch: list[int]) -> str | None:
        """One call; None if it was answered 2xx, else why it failed (also logged)."""
        failure: str | None = None
        try:
            body, headers = webhook_request(
                self.url,
                node=self.node,
                event=event,
                epoch=epoch,
                keyring=self.keyring(),
                now=self.clock(),
            )
            async with self.session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as r:
                received = 0  # read the answer to its end (within the bound), or 64 KiB
                async for chunk in r.content.iter_chunked(16 * 1024):
                    received += len(chunk)
                    if received >= MAX_ANSWER_BYTES:
                        break
                if 300 <= r.status < 400:
                    failure = f"answered {r.status}: redirects are not followed"
                elif not 200 <= r.status < 300:
                    failure = f"answered {r.status}"
        except TimeoutError:
            failure = f"no answer within {self.timeout.total:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as e:
            failure = f"{type(e).__name__}: {e}"
        if failure is not None:
            log.warning("node %s: token webhook %s %s failed: %s", self.node, event, epoch, failure)
        return failure

    def notify(self, event: str, epoch: list[int]) -> asyncio.Task[str | None] | None:
        """Start the call in the background; the task (None if it was dropped)."""
        log.info("node %s: token %s epoch %s", self.node, event, epoch)
        if len(self.tasks) >= MAX_PENDING:
            log.warning(
                "node %s: token webhook %s %s dropped: %d calls pending",
                self.node,
                event,
                epoch,
                len(self.tasks),
            )
            return None
        task = asyncio.get_running_loop().create_task(
            self.call(event, list(epoch)), name=f"token-webhook-{event}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self, grace: float = 0.0) -> None:
        """Let the calls in flight finish for up to `grace` seconds, then cancel them."""
        tasks = list(self.tasks)
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def log_only(node: str) -> Callable[[str, list[int]], None]:
    """The token listener without a webhook: a log line per acquire and release
    (done at once: it returns None)."""

    def notify(event: str, epoch: list[int]) -> None:
        log.info("node %s: token %s epoch %s", node, event, epoch)

    return notify
