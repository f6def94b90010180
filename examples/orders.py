"""What every framework's orders app shares: the hub, bodies, auth, metrics and the page."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from watchroutes import (
    Access,
    AuthRequest,
    BadRequest,
    Cors,
    Forbidden,
    Hub,
    NotFound,
    Principal,
    Resource,
    Unauthorized,
    UnsupportedMediaType,
    WatchLimits,
    WatchScope,
)
from watchroutes.prometheus import PrometheusMetrics

PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()
#: watchroutes.js, the browser module the page imports its Informer from (the wheel ships it;
#: watchroutes.client.browser_module() returns the same bytes, with the client extra), served
#: at :data:`BROWSER_MODULE_PATH` with a JavaScript type (browsers refuse a module without).
BROWSER_MODULE = resources.files("watchroutes").joinpath("static/watchroutes.js").read_bytes()
BROWSER_MODULE_PATH = "/static/watchroutes.js"
BROWSER_MODULE_TYPE = "text/javascript; charset=utf-8"
#: The largest body a write reads (the adapters' ``read_body`` stops reading past it).
MAX_BODY = 1024 * 1024
PATCH_TYPES = ("application/merge-patch+json", "application/json")
#: A name usable as a label value in a selector (Kubernetes' rule).
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
#: The ``owner`` key in a label selector, and its ``owner=<name>`` / ``owner==<name>`` terms.
OWNER_KEY = re.compile(r"(?<![\w./-])owner(?![\w./-])")
OWNER_EQUALS = re.compile(r"(?<![\w./-])owner\s*==?\s*([A-Za-z0-9._-]*)")
#: The one message of every 401, whatever was wrong (the hub's own 401s say the same).
UNAUTHORIZED = "a valid bearer token is required"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str | None = None
    token: str | None = None
    heartbeat: float = 15.0
    retention: int = 10_000
    buffer: int = 1000
    seed: int = 0
    #: ``--users alice:TA,bob:TB``: (name, token) pairs; each user sees only its own orders.
    users: tuple[tuple[str, str], ...] = ()
    #: ``--token-ttl S``: a credential expires S seconds after the request presenting it.
    token_ttl: float | None = None
    #: ``--cors-origin ORIGIN`` (repeatable): origins allowed cross-origin.
    cors_origins: tuple[str, ...] = ()
    #: ``--max-watches-per-user N``: concurrent watches per user (per process).
    max_watches_per_user: int | None = None


class Users:
    """``--users``: who each token is, what each user sees (orders whose
    ``metadata.labels.owner`` is its name), and the ownership rules of writes.

    The hub's ``Access`` hooks guard lists, gets and every watch transport; the write
    handlers call :meth:`caller` and :meth:`create_body` / :meth:`check_owner` /
    :meth:`guard_write` around the resource's own write methods.
    """

    def __init__(self, pairs: tuple[tuple[str, str], ...], ttl: float | None = None) -> None:
        self.pairs = pairs
        self.ttl = ttl

    def user_of(self, token: str | None) -> str | None:
        """The user whose token this is (compared in constant time with every token)."""
        if token is None:
            return None
        found = None
        for name, expected in self.pairs:
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = name
        return found

    def authenticate(self, request: AuthRequest) -> Principal | None:
        """The ``authenticate`` hook: a subprotocol, ``Authorization: Bearer``, the ``token``
        cookie, or ``access_token`` on the query of a GET (EventSource) or a handshake."""
        token = request.bearer_token(cookie="token", query=request.method in ("GET", "WEBSOCKET"))
        name = self.user_of(token)
        if name is None:
            return None
        expires = None if self.ttl is None else time.time() + self.ttl
        return Principal(name, expires_at=expires)

    @staticmethod
    def can_see(principal: Principal, obj: Any) -> bool:
        """The ``can_see`` hook: an order is its owner's."""
        return owner_of(obj) == principal.name

    @staticmethod
    def authorize(principal: Principal, scope: WatchScope) -> str | None:
        """The ``authorize`` hook: asking for another user's orders by selector
        (``labelSelector=owner=bob``, ``owner in (...)``, ``owner!=...``) is a 403; every
        watch of a user is narrowed to its own orders by a forced selector, which the selector
        index serves (a publish reaches the owner's watchers without running every user's
        ``can_see``); ``can_see`` stays the rule."""
        selector = scope.label_selector or ""
        mentioned = OWNER_KEY.findall(selector)
        named = OWNER_EQUALS.findall(selector)
        if len(named) != len(mentioned) or any(name != principal.name for name in named):
            raise Forbidden("you may only watch your own orders")
        return f"owner={principal.name}" if LABEL_VALUE.fullmatch(principal.name) else None

    def access(self) -> Access:
        return Access(
            authenticate=self.authenticate, authorize=self.authorize, can_see=self.can_see
        )

    def caller(self, request: AuthRequest) -> str:
        """The user a write acts for (401 with the generic message otherwise)."""
        principal = self.authenticate(request)
        if principal is None:
            raise Unauthorized(UNAUTHORIZED)
        return principal.name

    @staticmethod
    def create_body(user: str, body: dict[str, Any]) -> dict[str, Any]:
        """A POST's body owned by ``user``: ``owner`` set when absent, 403 when it names
        someone else."""
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            return body  # (the hub answers 400 for a body without metadata)
        labels = metadata.get("labels")
        if labels is None:
            labels = metadata["labels"] = {}
        if isinstance(labels, dict):
            owner = labels.setdefault("owner", user)
            if owner != user:
                raise Forbidden("an order can only be created for yourself")
        return body

    @staticmethod
    def check_owner(user: str, current: Any, key: str) -> str:
        """404 (as if it did not exist) unless ``user`` owns ``current``; its rv otherwise."""
        if owner_of(current) != user:
            raise NotFound(f'orders "{key[:100]}" not found')
        return str(current["metadata"]["resourceVersion"])

    @staticmethod
    def guard_write(body: dict[str, Any], rv: str, *, replace: bool, user: str) -> dict[str, Any]:
        """A PUT body or merge patch of an order ``user`` owns: pinned to the rv its owner
        was checked at (a concurrent move is a 409, never a write to someone else's order).
        A PUT without ``owner`` keeps ``user``; the owner may hand the order to another user,
        never to nobody."""
        metadata = body.get("metadata")
        if metadata is None and not replace:
            metadata = body["metadata"] = {}
        if not isinstance(metadata, dict):
            return body  # (the hub answers 400)
        metadata.setdefault("resourceVersion", rv)
        labels = metadata.get("labels")
        if replace:
            if labels is None:
                labels = metadata["labels"] = {}
            if isinstance(labels, dict):
                labels.setdefault("owner", user)
        if ("labels" in metadata and not isinstance(labels, dict)) or (
            isinstance(labels, dict) and "owner" in labels and not labels["owner"]
        ):
            raise Forbidden("an order always has an owner")
        return body


class Writes:
    """The orders' writes, with the ``--users`` ownership rules when there are users (async
    for the ASGI and aiohttp apps, ``*_sync`` for Flask). ``auth`` is the request as the
    hub's hooks see it (``request_info(...).auth()``)."""

    def __init__(self, orders: Resource, users: Users | None) -> None:
        self.orders = orders
        self.users = users

    async def create(self, auth: AuthRequest, body: dict[str, Any]) -> Any:
        if self.users is not None:
            body = self.users.create_body(self.users.caller(auth), body)
        return await self.orders.acreate(body)

    async def replace(self, auth: AuthRequest, key: str, body: dict[str, Any]) -> Any:
        users = self.users
        if users is not None:
            user = users.caller(auth)
            rv = users.check_owner(user, await self.orders.aget(key), key)
            body = users.guard_write(body, rv, replace=True, user=user)
        return await self.orders.areplace(body, key=key)

    async def patch(self, auth: AuthRequest, key: str, patch: dict[str, Any]) -> Any:
        users = self.users
        if users is not None:
            user = users.caller(auth)
            rv = users.check_owner(user, await self.orders.aget(key), key)
            patch = users.guard_write(patch, rv, replace=False, user=user)
        return await self.orders.apatch(key, patch)

    async def delete(self, auth: AuthRequest, key: str) -> Any:
        rv = None
        if self.users is not None:
            user = self.users.caller(auth)
            rv = self.users.check_owner(user, await self.orders.aget(key), key)
        return await self.orders.adelete(key, resource_version=rv)

    def create_sync(self, auth: AuthRequest, body: dict[str, Any]) -> Any:
        if self.users is not None:
            body = self.users.create_body(self.users.caller(auth), body)
        return self.orders.create(body)

    def replace_sync(self, auth: AuthRequest, key: str, body: dict[str, Any]) -> Any:
        users = self.users
        if users is not None:
            user = users.caller(auth)
            rv = users.check_owner(user, self.orders.get(key), key)
            body = users.guard_write(body, rv, replace=True, user=user)
        return self.orders.replace(body, key=key)

    def patch_sync(self, auth: AuthRequest, key: str, patch: dict[str, Any]) -> Any:
        users = self.users
        if users is not None:
            user = users.caller(auth)
            rv = users.check_owner(user, self.orders.get(key), key)
            patch = users.guard_write(patch, rv, replace=False, user=user)
        return self.orders.patch(key, patch)

    def delete_sync(self, auth: AuthRequest, key: str) -> Any:
        rv = None
        if self.users is not None:
            user = self.users.caller(auth)
            rv = self.users.check_owner(user, self.orders.get(key), key)
        return self.orders.delete(key, resource_version=rv)


def owner_of(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    owner = labels.get("owner") if isinstance(labels, Mapping) else None
    return owner if isinstance(owner, str) else None


def make_hub(settings: Settings) -> tuple[Hub, Resource]:
    """The hub, on the shared log ``settings.backend`` names (``redis://``, ``nats://``,
    ``postgresql://``) or in memory. With a shared log, ``--seed`` runs once the hub follows
    it (see :func:`start`)."""
    backend = settings.backend
    if backend in ("", "memory", "memory://"):
        backend = None
    users = Users(settings.users, settings.token_ttl) if settings.users else None
    access = users.access() if users is not None else None
    if settings.token is not None:
        access = SharedToken(settings.token).access()
    per_user = settings.max_watches_per_user
    hub = Hub(
        heartbeat=settings.heartbeat,
        buffer=settings.buffer,
        metrics=PrometheusMetrics(),
        backend=backend,
        access=access,
        watch_limits=None if per_user is None else WatchLimits(per_principal=per_user),
        cors=Cors(settings.cors_origins) if settings.cors_origins else None,
    )
    orders = hub.resource("orders", kind="Order", retention_events=settings.retention)
    if settings.seed and hub.backend is None:
        orders.seed(demo_orders(settings.seed))
    return hub, orders


async def start(hub: Hub, settings: Settings) -> None:
    """What runs once the hub follows its log: seeding a shared log (each object once)."""
    if settings.seed and hub.backend is not None:
        await hub.resources["orders"].aseed(demo_orders(settings.seed))


def demo_orders(count: int) -> list[dict[str, Any]]:
    items = ["book", "lamp", "chair", "pen", "mug"]
    regions = ["eu", "us", "apac"]
    return [
        {
            "metadata": {"name": f"o-{i}", "labels": {"region": regions[i % 3]}},
            "spec": {"item": items[i % 5], "qty": i % 4 + 1},
            "status": {"phase": "new"},
        }
        for i in range(1, count + 1)
    ]


def users_of(settings: Settings) -> Users | None:
    return Users(settings.users, settings.token_ttl) if settings.users else None


class SharedToken:
    """``--token T``: one bearer token guards ``/orders``; whoever presents it sees every
    order. The hub's ``Access`` hook checks it on lists, gets and every watch transport
    (WebSockets included); the apps call :func:`check_token` before a write reads its body.
    """

    #: The principal of every request that presented the token.
    PRINCIPAL = Principal("token")

    def __init__(self, token: str) -> None:
        self.token = token

    def authenticate(self, request: AuthRequest) -> Principal | None:
        """The ``authenticate`` hook: a subprotocol, ``Authorization: Bearer``, or
        ``access_token`` on the query of a GET (EventSource) or a handshake (protocol.md §6:
        unlike ``--users``, no cookie)."""
        query = request.method in ("GET", "WEBSOCKET")
        token = request.bearer_token(cookie=None, query=query)
        if token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        return self.PRINCIPAL

    def access(self) -> Access:
        return Access(authenticate=self.authenticate)


def check_token(settings: Settings, request: AuthRequest) -> None:
    """``--token T``: 401 (the generic message) unless ``request`` presents T, by the hook's
    own rule. (``--users`` is checked by the hub's hooks and :class:`Users`.)"""
    if settings.token is not None and SharedToken(settings.token).authenticate(request) is None:
        raise Unauthorized(UNAUTHORIZED)


def check_patch_type(content_type: str | None) -> None:
    """A PATCH is a JSON merge patch (415 otherwise); checked before its body is read."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in PATCH_TYPES:
        raise UnsupportedMediaType(
            f"PATCH takes {' or '.join(PATCH_TYPES)}, not {media[:60] or 'no content type'!r}"
        )


def object_body(value: Any) -> dict[str, Any]:
    """A write's body, read with the adapter's ``read_json`` (which limits its size and
    answers 400 for anything but JSON): it must be a JSON object."""
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def metrics_text(hub: Hub) -> bytes:
    """The hub's Prometheus metrics, and two gauges of its state."""
    assert isinstance(hub.metrics, PrometheusMetrics)
    stats = hub.statistics()
    rows = [
        (
            "watchroutes_cached_objects",
            "gauge",
            "Objects in the watch cache.",
            stats.cached_objects,
        ),
        (
            "watchroutes_events_evicted_young",
            "gauge",
            "Events evicted from the log while younger than two heartbeat intervals.",
            stats.evicted_young,
        ),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return hub.metrics.exposition() + ("\n".join(lines) + "\n").encode()
