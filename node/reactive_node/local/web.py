"""The live web view of a local loop.

A tiny aiohttp app: `GET /` serves one HTML page with a script that polls
`GET /api/loop` (the supervisor's view model, see `views.view_model`) and draws
the loop as an SVG graph: a circle per node, coloured by its phase, and an
arrow per last round trip, coloured by its outcome. No build step, no
third-party front-end code: the page is plain HTML, JS and SVG.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

ViewSource = Callable[[], dict[str, Any]]
VIEW_SOURCE: web.AppKey[ViewSource] = web.AppKey("view_source")
API_PATH = "/api/loop"
_ASSETS = {"/view.js": "application/javascript", "/view.css": "text/css"}


def _asset(name: str) -> str:
    return (
        resources.files("reactive_node.local").joinpath("static", name).read_text(encoding="utf-8")
    )


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=_asset("view.html"), content_type="text/html")


async def _static(request: web.Request) -> web.Response:
    path = request.path
    return web.Response(text=_asset(path.lstrip("/")), content_type=_ASSETS[path])


async def _api(request: web.Request) -> web.Response:
    model = request.app[VIEW_SOURCE]()
    return web.json_response(model, headers={"Cache-Control": "no-store"})


def create_view_app(source: ViewSource) -> web.Application:
    """The view app; `source` returns the current view model on each poll."""
    app = web.Application()
    app[VIEW_SOURCE] = source
    app.router.add_get("/", _page)
    for path in _ASSETS:
        app.router.add_get(path, _static)
    app.router.add_get(API_PATH, _api)
    return app


async def serve_view(source: ViewSource, host: str, port: int) -> web.AppRunner:
    """Serve the view app on `host:port` until the returned runner is cleaned up."""
    runner = web.AppRunner(create_view_app(source), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
