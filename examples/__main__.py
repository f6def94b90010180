"""``python -m examples FRAMEWORK --host H --port P [...]`` (docs/protocol.md §6)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys

from .orders import Settings, start

FRAMEWORKS = ("starlette", "fastapi", "aiohttp", "flask", "django")


def parse(argv: list[str]) -> tuple[str, Settings]:
    parser = argparse.ArgumentParser(prog="python -m examples", description=__doc__)
    parser.add_argument("framework", choices=FRAMEWORKS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--backend", default=None, help="event log URL (default: in-memory)")
    parser.add_argument("--token", default=None, help="require this bearer token on /orders")
    parser.add_argument("--heartbeat", type=float, default=15.0, metavar="SECONDS")
    parser.add_argument("--retention", type=int, default=10_000, metavar="EVENTS")
    parser.add_argument("--buffer", type=int, default=1000, metavar="EVENTS")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="start with N orders")
    parser.add_argument(
        "--users",
        default=None,
        metavar="NAME:TOKEN,...",
        help="users and their bearer tokens; each sees only the orders it owns",
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a credential expires this long after the request that presented it",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow this origin cross-origin (repeatable; default: no CORS)",
    )
    parser.add_argument("--max-watches-per-user", type=int, default=None, metavar="N")
    args = parser.parse_args(argv)
    if args.heartbeat <= 0 or args.retention < 1 or args.buffer < 1:
        parser.error("--heartbeat, --retention and --buffer must be positive")
    users: list[tuple[str, str]] = []
    for pair in (args.users or "").split(","):
        if not pair.strip():
            continue
        name, sep, token = pair.strip().partition(":")
        if not (sep and name and token):
            parser.error("--users takes NAME:TOKEN pairs separated by commas")
        users.append((name, token))
    if args.users is not None and not users:
        parser.error("--users takes NAME:TOKEN pairs separated by commas")
    if users and args.token is not None:
        parser.error("--users and --token cannot be combined")
    if args.token_ttl is not None and (args.token_ttl <= 0 or not users):
        parser.error("--token-ttl takes a positive number of seconds, with --users")
    if args.max_watches_per_user is not None and args.max_watches_per_user < 1:
        parser.error("--max-watches-per-user must be at least 1")
    settings = Settings(
        host=args.host,
        port=args.port,
        backend=args.backend,
        token=args.token,
        heartbeat=args.heartbeat,
        retention=args.retention,
        buffer=args.buffer,
        seed=args.seed,
        users=tuple(users),
        token_ttl=args.token_ttl,
        cors_origins=tuple(args.cors_origin),
        max_watches_per_user=args.max_watches_per_user,
    )
    return args.framework, settings


def main(argv: list[str]) -> None:
    framework, settings = parse(argv)
    if framework == "aiohttp":
        from .aiohttp_app import main as serve_aiohttp

        serve_aiohttp(settings)
        return
    if framework == "flask":
        from .flask_app import main as serve_flask

        serve_flask(settings)
        return
    if framework == "django":
        from .django_app import main as serve_django

        serve_django(settings)
        return
    # uvicorn hands a WebSocket handshake to the websockets library, which reads lines of at
    # most 8 KiB unless told otherwise (before it is imported): request lines and headers up
    # to 64 KiB reach the app on WebSockets too (protocol.md §5.5)
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(64 * 1024 + 1024))
    import uvicorn
    from starlette.applications import Starlette

    from watchroutes.adapters.uvicorn import Server

    app: Starlette
    if framework == "fastapi":
        from .fastapi_app import create_app as create_fastapi

        app = create_fastapi(settings)
    else:
        from .starlette_app import create_app

        app = create_app(settings)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=8,
        # request lines and headers up to 64 KiB reach the app under h11 too (httptools, the
        # default when installed, has no such limit)
        h11_max_incomplete_event_size=128 * 1024,
    )
    hub = app.state.hub

    class Orders(Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await start(hub, settings)  # the hub follows its log by now
            await super().startup(sockets)

    # uvicorn re-raises the captured SIGINT after its clean shutdown, as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        Orders(config, hubs=[hub], announce=True).run()


if __name__ == "__main__":
    main(sys.argv[1:])
