"""The pod store's own Kubernetes client (aiohttp) against a scripted fake API
server: 409 conflicts, 410 Gone on a watch (status and ERROR event), watch
resume from events and bookmarks, reconnects after a cut, the token file
re-read (periodically and after a 401), in-cluster configuration, and errors
that are named, chained and short."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from node.nodesupport import eventually
from reactive_node.core import contract
from reactive_node.runtime.kube import (
    BODY_CHARS,
    KubeClient,
    KubeConfigError,
    KubeConflict,
    KubeStatusError,
    KubeUnreachable,
)
from reactive_node.runtime.pod_store import PodStore
from reactive_node.runtime.store import Snapshot, StoreConflict, StoreError

NS, POD = "loops", "demo-1"
POD_PATH = f"/api/v1/namespaces/{NS}/pods/{POD}"
LIST_PATH = f"/api/v1/namespaces/{NS}/pods"

Watcher = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class FakeAPI:
    """One pod, GET/PATCH with resourceVersion preconditions, and watches served
    by the next scripted handler (the last one repeats)."""

    rv: int = 10
    state: str | None = '{"generation":1,"target":"a"}'
    token: str | None = None
    requests: list[tuple[str, str, dict[str, str], str | None]] = dataclasses.field(
        default_factory=list
    )
    watchers: list[Watcher] = dataclasses.field(default_factory=list)

    def pod(self) -> dict[str, Any]:
        annotations = {} if self.state is None else {contract.STATE_ANNOTATION: self.state}
        return {
            "kind": "Pod",
            "metadata": {
                "name": POD,
                "namespace": NS,
                "resourceVersion": str(self.rv),
                "annotations": annotations,
            },
        }

    def event(self, kind: str = "MODIFIED") -> bytes:
        return json.dumps({"type": kind, "object": self.pod()}).encode() + b"\n"

    def _record(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization")
        self.requests.append((request.method, request.path, dict(request.query), auth))
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return None

    async def get(self, request: web.Request) -> web.StreamResponse:
        return self._record(request) or web.json_response(self.pod())

    async def patch(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._record(request)) is not None:
            return denied
        assert request.content_type == "application/merge-patch+json"
        metadata = (await request.json())["metadata"]
        if metadata.get("resourceVersion") not in (None, str(self.rv)):
            message = "the object has been modified; " + "x" * 5000
            body = {"kind": "Status", "code": 409, "reason": "Conflict", "message": message}
            return web.json_response(body, status=409)
        self.state = metadata["annotations"][contract.STATE_ANNOTATION]
        self.rv += 1
        return web.json_response(self.pod())

    async def watch(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._record(request)) is not None:
            return denied
        assert request.query["watch"] == "true"
        assert request.query["fieldSelector"] == f"metadata.name={POD}"
        handler = self.watchers.pop(0) if len(self.watchers) > 1 else self.watchers[0]
        return await handler(request)

    def watches(self) -> list[dict[str, str]]:
        return [q for m, p, q, _ in self.requests if m == "GET" and p == LIST_PATH]

    def gets(self) -> int:
        return sum(1 for m, p, _, _ in self.requests if m == "GET" and p == POD_PATH)


async def stream(request: web.Request, *lines: bytes, hold: bool = False) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for line in lines:
        await response.write(line)
    if hold:
        await asyncio.sleep(3600)
    await response.write_eof()
    return response


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAPI, KubeClient]]:
    api = FakeAPI()
    app = web.Application()
    app.router.add_get(POD_PATH, api.get)
    app.router.add_patch(POD_PATH, api.patch)
    app.router.add_get(LIST_PATH, api.watch)
    async with TestServer(app, host="127.0.0.1") as server:
        client = KubeClient(str(server.make_url("")), ssl_context=False)
        try:
            yield api, client
        finally:
            await client.close()


async def collect(store: PodStore, seen: list[Snapshot]) -> None:
    async for snapshot in store.watch():
        seen.append(snapshot)


@pytest.fixture
async def watching() -> AsyncIterator[Callable[[PodStore], list[Snapshot]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(store: PodStore) -> list[Snapshot]:
        seen: list[Snapshot] = []
        tasks.append(asyncio.create_task(collect(store, seen)))
        return seen

    yield start
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- GET / PATCH --------------------------------------------------------------------
async def test_conflict_is_named_chained_short_and_reread(
    fake: tuple[FakeAPI, KubeClient],
) -> None:
    api, client = fake
    store = PodStore(NS, POD, api=client)
    await store.load()
    api.state, api.rv = '{"generation":5,"target":"hand"}', 11  # someone else wrote
    with pytest.raises(StoreConflict) as info:
        await store.save('{"generation":2,"target":"b"}')
    assert info.value.current.raw == '{"generation":5,"target":"hand"}'
    cause = info.value.__cause__
    assert isinstance(cause, KubeConflict)
    assert cause.status == 409
    assert cause.body.startswith("the object has been modified")
    assert len(cause.body) == BODY_CHARS
    await store.save('{"generation":6,"target":"c"}')  # re-read: the fresh version is used
    patches = [r for r in api.requests if r[0] == "PATCH"]
    assert len(patches) == 2
    assert api.state == '{"generation":6,"target":"c"}'


async def test_other_errors_are_store_errors(fake: tuple[FakeAPI, KubeClient]) -> None:
    api, client = fake
    api.token = "right"
    with pytest.raises(KubeStatusError) as info:
        await PodStore(NS, POD, api=client).load()
    assert info.value.status == 401
    assert isinstance(info.value, StoreError)
    closed = KubeClient("http://127.0.0.1:1", ssl_context=False)
    try:
        with pytest.raises(KubeUnreachable) as unreachable:
            await PodStore(NS, POD, api=closed).load()
        assert unreachable.value.__cause__ is not None
    finally:
        await closed.close()


# --- token -----------------------------------------------------------------------------
async def test_token_file_is_reread_periodically_and_after_a_401(
    fake: tuple[FakeAPI, KubeClient], tmp_path: pathlib.Path
) -> None:
    api, plain = fake
    token_file = tmp_path / "token"
    token_file.write_text("one\n")
    now = [0.0]
    client = KubeClient(
        plain.server,
        ssl_context=False,
        token_file=token_file,
        token_refresh=60,
        clock=lambda: now[0],
    )
    try:
        store = PodStore(NS, POD, api=client)
        await store.load()
        token_file.write_text("two")
        now[0] = 30.0
        await store.load()  # within the minute: the cached token
        now[0] = 61.0
        await store.load()  # re-read
        assert [r[3] for r in api.requests] == ["Bearer one", "Bearer one", "Bearer two"]
        # The token rotated and the server already wants the new one: a 401
        # re-reads the file at once and retries.
        token_file.write_text("three")
        api.token = "three"
        now[0] = 62.0
        await store.load()
        assert [r[3] for r in api.requests[-2:]] == ["Bearer two", "Bearer three"]
    finally:
        await client.close()


def test_in_cluster_configuration(tmp_path: pathlib.Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeClient.in_cluster({}, tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match=r"ca\.crt"):
        KubeClient.in_cluster(env, tmp_path)
    ca = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
    if not ca.exists():
        pytest.fail("no system CA bundle to stand in for the cluster CA")
    (tmp_path / "ca.crt").write_bytes(ca.read_bytes())
    with pytest.raises(KubeConfigError, match="token"):
        KubeClient.in_cluster(env, tmp_path)
    (tmp_path / "token").write_text("abc")
    assert KubeClient.in_cluster(env, tmp_path).server == "https://10.96.0.1:443"
    env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    assert KubeClient.in_cluster(env, tmp_path).server == "https://[fd00::1]:443"


# --- watch -------------------------------------------------------------------------------
async def test_watch_resumes_from_events_and_bookmarks_after_the_server_ends_it(
    fake: tuple[FakeAPI, KubeClient], watching: Callable[[PodStore], list[Snapshot]]
) -> None:
    api, client = fake

    async def first(request: web.Request) -> web.StreamResponse:
        api.rv, api.state = 12, '{"generation":2,"target":"b"}'
        bookmark = {
            "type": "BOOKMARK",
            "object": {"kind": "Pod", "metadata": {"resourceVersion": "40"}},
        }
        return await stream(request, api.event(), json.dumps(bookmark).encode() + b"\n")

    async def second(request: web.Request) -> web.StreamResponse:
        api.rv, api.state = 41, '{"generation":3,"target":"c"}'
        # An event split across writes, and one without a trailing newline.
        line = api.event()
        return await stream(request, line[:20], line[20:-1], hold=False)

    async def idle(request: web.Request) -> web.StreamResponse:
        return await stream(request, hold=True)

    api.watchers = [first, second, idle]
    seen = watching(PodStore(NS, POD, api=client))
    await eventually(lambda: len(api.watches()) == 3, what="three watches")
    assert [s.raw for s in seen] == [
        '{"generation":1,"target":"a"}',  # the initial read
        '{"generation":2,"target":"b"}',
        '{"generation":3,"target":"c"}',
    ]
    resumes = [q.get("resourceVersion") for q in api.watches()]
    assert resumes == ["10", "40", "41"]  # the read, the bookmark, the last event
    assert api.gets() == 1
    assert all(q["allowWatchBookmarks"] == "true" for q in api.watches())


@pytest.mark.parametrize("how", ["status", "event"])
async def test_watch_410_gone_rereads_the_pod(
    fake: tuple[FakeAPI, KubeClient], watching: Callable[[PodStore], list[Snapshot]], how: str
) -> None:
    api, client = fake

    async def gone(request: web.Request) -> web.StreamResponse:
        api.rv, api.state = 90, '{"generation":7,"target":"missed"}'  # changed meanwhile
        status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
        if how == "status":
            return web.json_response(status, status=410)
        return await stream(request, json.dumps({"type": "ERROR", "object": status}).encode())

    async def idle(request: web.Request) -> web.StreamResponse:
        return await stream(request, hold=True)

    api.watchers = [gone, idle]
    seen = watching(PodStore(NS, POD, api=client))
    await eventually(lambda: len(api.watches()) == 2, what="a second watch")
    assert [s.raw for s in seen] == [
        '{"generation":1,"target":"a"}',
        '{"generation":7,"target":"missed"}',  # the re-read
    ]
    assert api.gets() == 2
    assert [q.get("resourceVersion") for q in api.watches()] == ["10", "90"]


async def test_watch_reconnects_with_backoff_after_errors_and_cuts(
    fake: tuple[FakeAPI, KubeClient], watching: Callable[[PodStore], list[Snapshot]]
) -> None:
    api, client = fake

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"kind": "Status", "code": 500, "message": "boom"}, status=500)

    async def cut(request: web.Request) -> web.StreamResponse:
        api.rv, api.state = 20, '{"generation":4,"target":"d"}'
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(api.event() + b'{"type": "MODIF')
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-event
        return response

    async def idle(request: web.Request) -> web.StreamResponse:
        return await stream(request, hold=True)

    api.watchers = [broken, cut, idle]
    seen = watching(PodStore(NS, POD, api=client))
    await eventually(lambda: len(api.watches()) == 3, within=10, what="watched again twice")
    assert [s.raw for s in seen] == [
        '{"generation":1,"target":"a"}',
        '{"generation":4,"target":"d"}',
    ]
    assert [q.get("resourceVersion") for q in api.watches()] == ["10", "10", "20"]
    assert api.gets() == 1  # a failure is not a 410: no re-read


async def test_watch_ignores_the_echo_of_its_own_older_write(
    fake: tuple[FakeAPI, KubeClient], watching: Callable[[PodStore], list[Snapshot]]
) -> None:
    api, client = fake
    store = PodStore(NS, POD, api=client)
    await store.load()
    await store.save('{"generation":2,"target":"b"}')  # rv 11
    await store.save('{"generation":3,"target":"c"}')  # rv 12
    metadata = {
        **api.pod()["metadata"],
        "resourceVersion": "11",
        "annotations": {contract.STATE_ANNOTATION: '{"generation":2,"target":"b"}'},
    }
    old = {"type": "MODIFIED", "object": {"kind": "Pod", "metadata": metadata}}

    async def echo(request: web.Request) -> web.StreamResponse:
        return await stream(request, json.dumps(old).encode() + b"\n", hold=True)

    api.watchers = [echo]
    seen = watching(store)
    await eventually(lambda: len(api.watches()) == 1)
    await asyncio.sleep(0.1)
    assert [s.raw for s in seen] == ['{"generation":3,"target":"c"}']  # the read; no echo
