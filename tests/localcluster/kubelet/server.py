"""The kubelet's HTTPS endpoint for `kubectl logs` (port 10250 on the gateway).

The apiserver proxies `pods/log` to the Node's InternalIP:10250 with its
kubelet client certificate; we require a client certificate from the cluster
CA and serve the container's log file (all runs of the container appended).
Supported query parameters: `tailLines`, `follow`, `limitBytes`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from localcluster.config import ClusterConfig

CFG_KEY = web.AppKey("cfg", ClusterConfig)


def tail(text: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = text.splitlines(keepends=True)
    return b"".join(parts[-lines:])


async def container_logs(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CFG_KEY]
    ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
    path = cfg.pod_logs_dir / f"{ns}_{pod}_{container}.log"
    if not path.exists():
        raise web.HTTPNotFound(text=f"no logs for {ns}/{pod}/{container}")
    data = path.read_bytes()
    if "tailLines" in request.query:
        data = tail(data, int(request.query["tailLines"]))
    if "limitBytes" in request.query:
        data = data[: int(request.query["limitBytes"])]
    if request.query.get("follow") not in ("true", "1"):
        return web.Response(body=data, content_type="text/plain")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(data)
    offset = path.stat().st_size
    async for chunk in _follow(path, offset):
        await resp.write(chunk)
    return resp


async def _follow(p: Path, offset: int) -> AsyncIterator[bytes]:
    while True:  # ends when the client disconnects (write raises) or the file goes
        await asyncio.sleep(0.2)
        try:
            size = os.stat(p).st_size
        except OSError:
            return
        if size > offset:
            with p.open("rb") as f:
                f.seek(offset)
                chunk = f.read(size - offset)
            offset = size
            yield chunk


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(cfg: ClusterConfig) -> web.Application:
    app = web.Application()
    app[CFG_KEY] = cfg
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(cfg: ClusterConfig) -> web.AppRunner:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cfg.pki_dir / "ca.crt"))
    ctx.load_cert_chain(
        str(cfg.pki_dir / "kubelet-serving.crt"), str(cfg.pki_dir / "kubelet-serving.key")
    )
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(create_app(cfg), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.gateway_ip, cfg.kubelet_port, ssl_context=ctx).start()
    return runner
