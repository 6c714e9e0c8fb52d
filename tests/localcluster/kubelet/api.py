"""A minimal asyncio client for the Kubernetes API, speaking JSON dicts.

The test kubelet needs a handful of verbs (get, list+watch, create, patch,
delete, TokenRequest); plain aiohttp keeps them visible and typed as
`dict[str, Any]` payloads without model classes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from localcluster.config import ClusterConfig

Obj = dict[str, Any]


class ApiError(RuntimeError):
    """A non-2xx answer; `status` is the HTTP code, the body is truncated."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status


class Api:
    """One aiohttp session against the apiserver with a client certificate."""

    def __init__(self, cfg: ClusterConfig, stem: str = "admin") -> None:
        ctx = ssl.create_default_context(cafile=str(cfg.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(cfg.pki_dir / f"{stem}.crt"), str(cfg.pki_dir / f"{stem}.key"))
        self._ssl = ctx
        self._base = cfg.apiserver_url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=50)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Api used outside `async with`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.session.request(
            method, self._base + path, data=data, params=params, headers=headers, timeout=timeout
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(method, path, resp.status, text)
            result: Obj = json.loads(text) if text else {}
            return result

    async def get(self, path: str) -> Obj | None:
        try:
            return await self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, path: str, body: Obj, strategic: bool = True) -> Obj:
        ctype = (
            "application/strategic-merge-patch+json"
            if strategic
            else "application/merge-patch+json"
        )
        return await self.request("PATCH", path, body, content_type=ctype)

    async def watch_events(
        self, path: str, params: dict[str, str], resource_version: str
    ) -> AsyncIterator[Obj]:
        query = dict(params)
        query.update(
            watch="1",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds="300",
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_read=330)
        async with self.session.get(self._base + path, params=query, timeout=timeout) as resp:
            if resp.status != 200:
                raise ApiError("WATCH", path, resp.status, await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


async def informer(
    api: Api,
    path: str,
    params: dict[str, str],
    on_sync: Callable[[list[Obj]], Awaitable[None]],
    on_event: Callable[[str, Obj], Awaitable[None]],
) -> None:
    """List, then watch from that version; relist on expiry or error. Runs until cancelled."""
    while True:
        try:
            listed = await api.request("GET", path, params=params)
            await on_sync(listed.get("items", []))
            rv = str(listed["metadata"]["resourceVersion"])
            while True:
                async for ev in api.watch_events(path, params, rv):
                    kind = ev.get("type", "")
                    obj: Obj = ev.get("object", {})
                    if kind == "ERROR":
                        raise ApiError("WATCH", path, int(obj.get("code", 0)), str(obj))
                    rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                    if kind != "BOOKMARK":
                        await on_event(kind, obj)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, ApiError, aiohttp.ClientError, ValueError, KeyError):
            await asyncio.sleep(0.5)
