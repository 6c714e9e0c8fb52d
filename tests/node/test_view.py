"""The web view: its JSON API, its page, and the page rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from reactive_node.local.web import API_PATH, create_view_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def model(n: int, *, waiting: int = 1) -> dict[str, Any]:
    nodes = []
    for i in range(n):
        nodes.append(
            {
                "name": f"local-{i}",
                "ordinal": i,
                "address": f"127.0.0.1:{9000 + i}",
                "phase": "waiting" if i == waiting else "looping",
                "loops": 5 * i,
                "waits": i,
                "lastWaitReason": "timeout" if i == waiting else None,
                "restarts": 0,
                "state": {"generation": 3, "target": {"v": i}},
                "summary": {"generation": 3, "holding": None},
                "edges": [
                    {
                        "to": f"local-{(i + 1) % n}",
                        "outcome": "timeout" if i == waiting else "ok",
                        "at": 1.0,
                    }
                ],
            }
        )
    return {
        "loop": "local",
        "behavior": "converge",
        "topology": "ring",
        "seconds": 1.0,
        "converged": False,
        "nodes": nodes,
    }


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


async def test_api_serves_the_current_model() -> None:
    current = {"value": model(3)}
    runner, url = await serve(create_view_app(lambda: current["value"]))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + API_PATH) as r:
                assert r.status == 200
                assert r.headers["Cache-Control"] == "no-store"
                assert len((await r.json())["nodes"]) == 3
            current["value"] = model(7)
            async with session.get(url + API_PATH) as r:
                assert len((await r.json())["nodes"]) == 7
            async with session.get(url + "/") as r:
                page = await r.text()
                assert r.content_type == "text/html"
                assert '<script src="/view.js">' in page
            async with session.get(url + "/view.js") as r:
                assert r.content_type == "application/javascript"
                assert API_PATH in await r.text()
            async with session.get(url + "/nope") as r:
                assert r.status == 404
    finally:
        await runner.cleanup()


async def dump_dom(url: str, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, as headless Chromium sees it."""
    assert CHROMIUM is not None, "install Debian's chromium (make system-deps)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def rendered_nodes(dom: str) -> list[tuple[str, str]]:
    return re.findall(r'<g class="node ([a-z]+)[^"]*" data-name="([^"]+)"', dom)


@pytest.mark.browser
async def test_chromium_draws_every_node_and_edge(tmp_path: Path) -> None:
    runner, url = await serve(create_view_app(lambda: model(6, waiting=2)))
    try:
        dom = await dump_dom(url + "/", tmp_path)
    finally:
        await runner.cleanup()
    nodes = rendered_nodes(dom)
    assert sorted(name for _, name in nodes) == [f"local-{i}" for i in range(6)]
    assert dict((name, phase) for phase, name in nodes)["local-2"] == "waiting"
    assert dom.count('class="edge ok"') == 5
    assert dom.count('class="edge failed"') == 1
    assert "1/6 looping" not in dom
    assert "5/6 looping" in dom
