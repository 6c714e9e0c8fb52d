"""The Kubernetes API client of the node: just enough HTTP for one pod.

`KubeClient` speaks to the API server with aiohttp, not a generated client:
GET, merge PATCH and WATCH are all the pod store (`pod_store.py`) needs, and
importing a full Kubernetes client costs a node process about a second of CPU
and 25-35 MB at start-up. It takes its configuration from the pod
(`KubeClient.in_cluster`: the service environment variables, the
ServiceAccount token and CA), re-reads the projected token as it rotates, and
turns every failure into a `StoreError` the node already handles.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final

import aiohttp

from .store import StoreError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = 10.0
"""Connect + whole-request bound of a GET or PATCH, in seconds."""
WATCH_SLACK: Final = 30.0
"""A watch that outlives the `seconds` the server was asked for by this much is cut."""
TOKEN_REFRESH_SECONDS: Final = 60.0
"""Projected ServiceAccount tokens rotate: the token file is re-read this often."""
MAX_LINE_BYTES: Final = 4 * 1024 * 1024
"""A longer watch event line is a protocol error (an object is at most ~1.5 MB)."""
BODY_CHARS: Final = 200
"""Response bodies in errors and logs are cut to this many characters."""
ERROR_BODY_BYTES: Final = 64 * 1024
"""At most this much of an error response is read (to find a Status message)."""


# --- errors ------------------------------------------------------------------------
class KubeConfigError(StoreError):
    """No usable in-cluster configuration (environment or ServiceAccount files)."""


class KubeUnreachable(StoreError):
    """The API server could not be reached or did not answer in time."""


class KubeStatusError(StoreError):
    """The API server answered with an error status (body truncated)."""

    def __init__(self, what: str, status: int, reason: str, body: str) -> None:
        self.status = status
        self.reason = reason
        self.body = body[:BODY_CHARS]
        super().__init__(f"{what}: {status} {reason}: {self.body}")


class KubeConflict(KubeStatusError):
    """409: the object's resourceVersion is not the one the request carried."""


class KubeGone(KubeStatusError):
    """410: the watch's resourceVersion is too old; re-read and watch from there."""


def status_error(what: str, status: int, reason: str, body: str) -> KubeStatusError:
    kind = {409: KubeConflict, 410: KubeGone}.get(status, KubeStatusError)
    return kind(what, status, reason, body)


# --- the API client ----------------------------------------------------------------
class KubeClient:
    """Just enough of the Kubernetes API for one pod: GET, merge PATCH, WATCH.

    Bearer-token auth from a token (fixed) or a token file (re-read every
    `token_refresh` seconds, and at once after a 401), TLS from `ssl`
    (a context, or False for plain HTTP test servers).
    """

    def __init__(
        self,
        server: str,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        token: str | None = None,
        token_file: pathlib.Path | None = None,
        token_refresh: float = TOKEN_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._token = token
        self._token_file = token_file
        self._token_refresh = token_refresh
        self._token_read_at: float | None = None
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def in_cluster(
        cls, env: Mapping[str, str] | None = None, sa_dir: pathlib.Path = SERVICE_ACCOUNT_DIR
    ) -> KubeClient:
        """The pod's own ServiceAccount: `KUBERNETES_SERVICE_HOST/PORT`, token and CA files."""
        env = os.environ if env is None else env
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        port = env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise KubeConfigError("not in a pod: KUBERNETES_SERVICE_HOST/PORT are not set")
        token_file, ca_file = sa_dir / "token", sa_dir / "ca.crt"
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise KubeConfigError(f"cannot load the cluster CA {ca_file}: {e}") from e
        if not token_file.is_file():
            raise KubeConfigError(f"no ServiceAccount token at {token_file}")
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", ssl_context=context, token_file=token_file)

    def _authorization(self, *, force: bool = False) -> str | None:
        if self._token_file is not None:
            now = self._clock()
            stale = self._token_read_at is None or now - self._token_read_at >= self._token_refresh
            if force or stale:
                try:
                    self._token = self._token_file.read_text(encoding="utf-8").strip()
                except OSError as e:
                    if self._token is None:
                        raise KubeConfigError(f"cannot read {self._token_file}: {e}") from e
                    log.warning(
                        "cannot re-read %s, keeping the last token: %s", self._token_file, e
                    )
                self._token_read_at = now
        return f"Bearer {self._token}" if self._token else None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _open(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        limits: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """Send a request and return the 2xx response (caller releases it); a 401
        re-reads the token once and retries."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            auth = self._authorization(force=attempt == 2)
            if auth is not None:
                headers["Authorization"] = auth
            try:
                response = await self._client().request(
                    method,
                    self.server + path,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=limits,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                raise KubeUnreachable(f"{what}: cannot reach the API server: {e!r}") from e
            if response.status < 300:
                return response
            try:
                text = (await response.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")
            except (aiohttp.ClientError, OSError, TimeoutError):
                text = ""
            finally:
                response.release()
            if response.status == 401 and attempt == 1 and self._token_file is not None:
                log.info("%s: 401 Unauthorized; re-reading the token and retrying", what)
                continue
            raise status_error(what, response.status, response.reason or "", _message(text))
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """One bounded request whose answer is a JSON object."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        response = await self._open(
            what, method, path, body=body, content_type=content_type, limits=timeout
        )
        try:
            async with response:
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeUnreachable(f"{what}: the answer was cut: {e!r}") from e
        try:
            answer = json.loads(text)
        except ValueError as e:
            raise KubeStatusError(what, response.status, "not JSON", text) from e
        if not isinstance(answer, dict):
            raise KubeStatusError(what, response.status, "not a JSON object", text)
        return answer

    async def stream(
        self, what: str, path: str, params: Mapping[str, str], seconds: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON objects of a watch, one a line, until the server ends it
        (or `seconds` + slack pass)."""
        timeout = aiohttp.ClientTimeout(total=seconds + WATCH_SLACK, sock_connect=REQUEST_TIMEOUT)
        response = await self._open(what, "GET", path, params=params, limits=timeout)
        buffer = b""
        try:
            async with response:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > MAX_LINE_BYTES:
                        raise KubeStatusError(what, response.status, "event too long", "")
                    for line in lines:
                        if line.strip():
                            yield _event(what, line)
            if buffer.strip():
                yield _event(what, buffer)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeUnreachable(f"{what}: the watch was cut: {e!r}") from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(text: str) -> str:
    """A `Status` body's message, else the text itself."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    message = doc.get("message") if isinstance(doc, dict) else None
    return message if isinstance(message, str) else text


def _event(what: str, line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as e:
        raise KubeStatusError(what, 200, "bad watch event", line.decode("utf-8", "replace")) from e
    if not isinstance(event, dict):
        raise KubeStatusError(what, 200, "bad watch event", line.decode("utf-8", "replace"))
    return event
