"""The orders app on Flask, served by gunicorn with threaded workers (``-k gthread``).

gunicorn's gthread worker writes each chunk a WSGI app yields to the socket at once (no
buffering, headers with the first write), hands a watch one pool thread for its life and
gives the WebSocket handshake the raw socket (``gunicorn.socket``), which simple-websocket
needs; waitress buffers until ``send_bytes`` and has no socket to hand over.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as HTTPMethodNotAllowed

from watchroutes import BadRequest, ClientError, MethodNotAllowed, NotFound
from watchroutes.adapters.flask import (
    WatchRoutes,
    error_response,
    list_response,
    post_worker_init,
    read_json,
    request_info,
    watchable,
    websocket_view,
    worker_int,
)

from .orders import (
    BROWSER_MODULE,
    BROWSER_MODULE_PATH,
    BROWSER_MODULE_TYPE,
    MAX_BODY,
    PAGE,
    Settings,
    Writes,
    check_patch_type,
    check_token,
    make_hub,
    metrics_text,
    object_body,
    start,
    users_of,
)

#: gunicorn's pool threads in the one worker (``WATCHROUTES_THREADS`` overrides it); watches
#: may take all but an eighth of them (at least 2), so that plain requests (lists, writes,
#: /metrics) always find a thread.
THREADS = 256
#: The longest request line (and header) that reaches the app (protocol.md §5.5).
MAX_LINE = 64 * 1024


def json_response(body: object, status: int = 200) -> Response:
    import msgspec

    return Response(msgspec.json.encode(body), status, mimetype="application/json")


def create_app(settings: Settings, *, threads: int = THREADS) -> Flask:
    hub, orders = make_hub(settings)
    hub.max_watches = threads - max(2, threads // 8)
    writes = Writes(orders, users_of(settings))

    app = Flask(__name__)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS: 405 with Allow (no CORS here)
    # --token and --users: the hub's Access hooks check every socket (no legacy authorize hook)
    WatchRoutes(app, hub)

    @app.before_request
    def guard() -> Response | None:
        if len(request.environ.get("RAW_URI") or request.full_path) > MAX_LINE:
            # gunicorn limits request lines to 8 KiB or not at all: past 64 KiB, a 400
            raise BadRequest("the request line is longer than 64 KiB")
        path = request.path
        if path != "/orders" and not path.startswith("/orders/"):
            return None
        if request.headers.get("upgrade", "").lower() == "websocket":
            return None  # the hub checks a socket's credentials (and closes 4401)
        if request.method == "OPTIONS":
            return None  # a CORS preflight carries no credentials
        check_token(settings, request_info().auth())  # before a write reads its body
        return None

    @app.errorhandler(ClientError)
    def client_error(exc: ClientError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, HTTPMethodNotAllowed):
            refused = MethodNotAllowed(f"{request.method[:20]} is not allowed here")
            response = error_response(refused)
            response.headers["allow"] = ", ".join(exc.valid_methods or ())
            return response
        if exc.code == 404:
            return error_response(NotFound(f"no route for {request.path[:200]}"))
        return json_response({"message": exc.description}, exc.code or 500)

    @app.get("/orders")
    # (the list views do no checks of their own: the hub's Access hooks guard every watch)
    @watchable(orders, run_endpoint=False)
    def list_orders() -> Response:
        return list_response(orders)

    @app.post("/orders")
    def create_order() -> Response:
        body = object_body(read_json(limit=MAX_BODY))
        return json_response(writes.create_sync(request_info().auth(), body), 201)

    @app.get("/orders/<name>")
    @watchable(orders, key="name", run_endpoint=False)
    def get_order(name: str) -> Response:
        return list_response(orders, key="name")

    @app.put("/orders/<name>")
    def replace_order(name: str) -> Response:
        body = object_body(read_json(limit=MAX_BODY))
        return json_response(writes.replace_sync(request_info().auth(), name, body))

    @app.patch("/orders/<name>")
    def patch_order(name: str) -> Response:
        check_patch_type(request.headers.get("content-type"))
        body = object_body(read_json(limit=MAX_BODY))
        return json_response(writes.patch_sync(request_info().auth(), name, body))

    @app.delete("/orders/<name>")
    def delete_order(name: str) -> Response:
        return json_response(writes.delete_sync(request_info().auth(), name))

    if settings.cors_origins:  # the CORS preflight (otherwise OPTIONS is a 405)
        app.add_url_rule("/orders", "orders_cors", list_orders, methods=["OPTIONS"])
        app.add_url_rule("/orders/<name>", "order_cors", get_order, methods=["OPTIONS"])
    app.add_url_rule("/orders", "orders_ws", websocket_view(orders), websocket=True)
    app.add_url_rule(
        "/orders/<name>", "order_ws", websocket_view(orders, key="name"), websocket=True
    )

    @app.get("/")
    def page() -> Response:
        return Response(PAGE, mimetype="text/html")

    @app.get(BROWSER_MODULE_PATH)
    def browser_module() -> Response:
        return Response(BROWSER_MODULE, content_type=BROWSER_MODULE_TYPE)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(metrics_text(hub), content_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def main(settings: Settings) -> None:
    """Serve with gunicorn (one gthread worker) until SIGINT or SIGTERM."""
    from gunicorn.app.base import BaseApplication

    threads = int(os.environ.get("WATCHROUTES_THREADS", THREADS))
    app = create_app(settings, threads=threads)
    hub = app.extensions["watchroutes"].hub

    def ready(worker: Any) -> None:
        post_worker_init(worker)  # the hub runs, and SIGTERM ends its watches first
        app.extensions["watchroutes"].start().call(start, hub, settings)
        host, port = worker.sockets[0].getsockname()[:2]
        print(f"ready http://{host}:{port}", flush=True)

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": 1,  # the in-memory log serves one process (several need --backend)
        "worker_class": "gthread",
        "threads": threads,
        "graceful_timeout": 8,
        "keepalive": 5,
        # request lines and headers up to 64 KiB reach the app (gunicorn's defaults are 4 and
        # 8 KiB; 0 lifts the line limit, while a field size of 0 means 8 KiB again)
        "limit_request_line": 0,
        "limit_request_field_size": 128 * 1024,
        "post_worker_init": ready,
        "worker_int": worker_int,
        "accesslog": None,
        "loglevel": "warning",
    }

    class Orders(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Flask:
            return app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    Orders().run()
    sys.exit(0)
