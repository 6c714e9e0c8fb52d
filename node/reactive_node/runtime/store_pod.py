"""The pod-annotation store: the only module of the node that talks to Kubernetes.

The node's RBAC allows get, patch and watch on its own pod and nothing else,
so this store reads its pod, patches one annotation with the pod's
resourceVersion as a precondition (a conflict means someone else wrote: the
store re-reads and the node decides again), and watches its own pod through a
`metadata.name` field selector to pick up `kubectl annotate` and the
operator-owned annotations: the replica count, the suspended flag and the
injected target (`reactive-loop.dev/inject`, handed on as text; the node
validates it). The watch is already open for those, so an injection costs the
API server no request of its own. It never creates Events: an invalid
annotation is reported by the node in `/v1/state` and metrics, and the
operator raises the Event and condition.

It speaks to the API server with aiohttp (`KubeClient`), not a generated
client: those three calls are all it needs, and importing a full Kubernetes
client costs a node process about a second of CPU and 25-35 MB at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import pathlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Final

import aiohttp

from ..core import contract
from ..core.backoff import Backoff
from .store import Snapshot, StoreConflict, StoreError, parse_replicas

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = 10.0
"""Connect + whole-request bound of a GET or PATCH, in seconds."""
WATCH_SECONDS: Final = 300
"""How long the API server keeps one watch open (`timeoutSeconds`)."""
WATCH_SLACK: Final = 30.0
"""A watch that outlives `WATCH_SECONDS` by this much is cut by the client."""
TOKEN_REFRESH_SECONDS: Final = 60.0
"""Projected ServiceAccount tokens rotate: the token file is re-read this often."""
WATCH_BACKOFF: Final = (0.5, 30.0)
"""Base and cap of the delay between failed watch attempts, in seconds."""
MAX_LINE_BYTES: Final = 4 * 1024 * 1024
"""A longer watch event line is a protocol error (an object is at most ~1.5 MB)."""
BODY_CHARS: Final = 200
"""Response bodies in errors and logs are cut to this many characters."""
ERROR_BODY_BYTES: Final = 64 * 1024
"""At most this much of an error response is read (to find a Status message)."""
_RECENT_WRITES: Final = 8


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


def _status_error(what: str, status: int, reason: str, body: str) -> KubeStatusError:
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
            raise _status_error(what, response.status, response.reason or "", _message(text))
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


# --- the store -----------------------------------------------------------------------
def _rv_int(rv: str | None) -> int | None:
    return int(rv) if rv is not None and rv.isdigit() else None


def _metadata(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _snapshot(pod: Mapping[str, Any]) -> Snapshot:
    annotations = _metadata(pod).get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    replicas, replicas_error = parse_replicas(annotations.get(contract.REPLICAS_ANNOTATION))
    raw = annotations.get(contract.STATE_ANNOTATION)
    error = None
    if raw is not None and not isinstance(raw, str):
        raw, error = None, f"annotation {contract.STATE_ANNOTATION} is not a string"
    suspended = annotations.get(contract.SUSPENDED_ANNOTATION) == "true"
    inject = annotations.get(contract.INJECT_ANNOTATION)
    return Snapshot(
        raw,
        replicas,
        error=error,
        replicas_error=replicas_error,
        suspended=suspended,
        # The API server keeps only strings; anything else is no injection.
        inject=inject if isinstance(inject, str) else None,
    )


class PodStore:
    """State in `reactive-loop.dev/state` on the node's own pod."""

    def __init__(self, namespace: str, pod: str, *, api: KubeClient | None = None) -> None:
        self.namespace = namespace
        self.pod = pod
        self._api_client = api
        self._owns_client = api is None
        self._rv: str | None = None
        self._own_rv: str | None = None
        self._own_texts: collections.deque[str] = collections.deque(maxlen=_RECENT_WRITES)

    @property
    def _pods(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def _api(self) -> KubeClient:
        if self._api_client is None:
            self._api_client = KubeClient.in_cluster()
        return self._api_client

    async def _read(self) -> dict[str, Any]:
        what = f"cannot read pod {self.namespace}/{self.pod}"
        return await self._api().request(what, "GET", f"{self._pods}/{self.pod}")

    async def load(self) -> Snapshot:
        pod = await self._read()
        self._rv = _metadata(pod).get("resourceVersion")
        return _snapshot(pod)

    async def save(self, text: str) -> None:
        metadata: dict[str, Any] = {"annotations": {contract.STATE_ANNOTATION: text}}
        if self._rv is not None:
            metadata["resourceVersion"] = self._rv
        what = f"cannot patch pod {self.namespace}/{self.pod}"
        try:
            pod = await self._api().request(
                what,
                "PATCH",
                f"{self._pods}/{self.pod}",
                body={"metadata": metadata},
                content_type=MERGE_PATCH,
            )
        except KubeConflict as e:
            log.info("pod %s changed since it was read; re-reading", self.pod)
            raise StoreConflict(await self.load()) from e
        self._rv = self._own_rv = _metadata(pod).get("resourceVersion")
        self._own_texts.append(text)

    def _is_stale_echo(self, rv: str | None, raw: str | None) -> bool:
        """An event older than our own last write must not undo it."""
        own, seen = _rv_int(self._own_rv), _rv_int(rv)
        if own is not None and seen is not None:
            return seen < own
        return raw is not None and raw in self._own_texts and raw != self._own_texts[-1]

    def _accept(self, pod: Mapping[str, Any]) -> Snapshot | None:
        """The snapshot of a pod seen by the watch, or None if it is not news."""
        metadata = _metadata(pod)
        if metadata.get("name") != self.pod:
            return None
        rv = metadata.get("resourceVersion")
        snapshot = _snapshot(pod)
        if self._is_stale_echo(rv, snapshot.raw):
            return None
        if _rv_int(rv) is None or (_rv_int(rv) or 0) >= (_rv_int(self._rv) or 0):
            self._rv = rv
        return snapshot

    async def watch(self) -> AsyncIterator[Snapshot]:
        """Read the pod, then watch it from that resourceVersion, resuming from
        the last event or bookmark; 410 Gone re-reads; failures back off."""
        backoff = Backoff(*WATCH_BACKOFF)
        resume: str | None = None
        what = f"cannot watch pod {self.namespace}/{self.pod}"
        gone = 0
        while True:
            started, seen = time.monotonic(), False
            try:
                if resume is None:
                    pod = await self._read()
                    resume = _metadata(pod).get("resourceVersion")
                    snapshot = self._accept(pod)
                    if snapshot is not None:
                        yield snapshot
                params = {
                    "watch": "true",
                    "fieldSelector": f"metadata.name={self.pod}",
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                if resume is not None:
                    params["resourceVersion"] = resume
                events = self._api().stream(what, self._pods, params, WATCH_SECONDS)
                async with contextlib.aclosing(events):
                    async for event in events:
                        seen = True
                        gone = 0
                        backoff.reset()
                        kind, obj = event.get("type"), event.get("object")
                        if not isinstance(obj, dict):
                            continue
                        if kind == "ERROR":
                            code = obj.get("code")
                            raise _status_error(
                                what,
                                code if isinstance(code, int) else 500,
                                str(obj.get("reason", "")),
                                str(obj.get("message", "")),
                            )
                        rv = _metadata(obj).get("resourceVersion")
                        if isinstance(rv, str) and rv:
                            resume = rv
                        if kind in ("ADDED", "MODIFIED"):
                            snapshot = self._accept(obj)
                            if snapshot is not None:
                                yield snapshot
                if not seen and time.monotonic() - started < 1.0:
                    # Ended at once with nothing said: do not spin on it.
                    await asyncio.sleep(backoff.next_delay())
            except KubeGone as e:
                log.info("pod %s: watch expired (%s); re-reading", self.pod, e.reason or e.status)
                resume = None
                gone += 1
                if gone > 1:  # expired again straight after a fresh read
                    await asyncio.sleep(backoff.next_delay())
            except (KubeStatusError, KubeUnreachable, KubeConfigError) as e:
                delay = backoff.next_delay()
                log.warning("pod %s: %s; watching again in %.1f s", self.pod, e, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._owns_client and self._api_client is not None:
            await self._api_client.close()
            self._api_client = None
