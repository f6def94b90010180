"""The orders example app (Starlette) plus the browser helper and a test page:
``python -m tests.client.browser_app --port P [example flags]``, for ``test_browser.py``.

It serves the module as an app would: a plain route returning ``browser_module()``.
"""

from __future__ import annotations

import contextlib
import sys

import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from examples.__main__ import parse
from examples.starlette_app import create_app
from watchroutes.adapters.uvicorn import Server
from watchroutes.client import BROWSER_MODULE_MEDIA_TYPE, browser_module

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>watchroutes.js test page</title>
<script type="module">
import { Informer } from "/static/watchroutes.js";
const query = new URLSearchParams(location.search);
const log = { states: [], changes: [], events: [] };
const url = "/orders" + (query.get("labelSelector")
  ? "?labelSelector=" + encodeURIComponent(query.get("labelSelector")) : "");
const refresh = query.get("refresh");
window.log = log;
window.informer = new Informer(url, {
  mode: query.get("mode") || undefined,
  token: query.get("token") || undefined,
  getToken: refresh ? async () => refresh : undefined,
  backoff: { initial: 100, cap: 400 },
  readTimeout: Number(query.get("readTimeout")) || undefined,
  onState: (state, detail) =>
    log.states.push(detail && detail.code ? `${state}:${detail.code}` : state),
  onChange: (c) => log.changes.push([c.type, c.key, c.resourceVersion, c.tombstone]),
  onEvent: (envelope) => log.events.push(envelope.type),
}).start();
</script>
"""


async def module(request: Request) -> Response:
    return Response(browser_module(), media_type=BROWSER_MODULE_MEDIA_TYPE)


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


def main(argv: list[str]) -> None:
    _, settings = parse(["starlette", *argv])
    app = create_app(settings)
    app.router.routes[:0] = [Route("/static/watchroutes.js", module), Route("/client.html", page)]
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", lifespan="off"
    )
    with contextlib.suppress(KeyboardInterrupt):
        Server(config, hubs=[app.state.hub], announce=True).run()


if __name__ == "__main__":
    main(sys.argv[1:])
