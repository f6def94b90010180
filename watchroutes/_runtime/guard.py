"""Admission: authentication, authorization and limits, before any byte of an answer.

Every list, get, watch (SSE, JSON lines, long poll) and WebSocket subscription of a resource
with :class:`~watchroutes._core.access.Access` hooks passes :func:`admit`:

1. ``authenticate`` the request (401 with the one generic message when it yields nobody, or
   a principal whose credentials already expired);
2. ``authorize`` the principal for this resource, key and selectors (403, or a forced label
   selector);
3. the watch's filter becomes the request's, ANDed with the forced selector and the
   principal's ``can_see`` (so initial events, replays, live events, long-poll answers and
   lists all apply it, with the ``ADDED``/``DELETED`` transitions of a selector);
4. for a watch, the limits: concurrent watches per principal and per client address, new
   watches per second per principal (429 with ``Retry-After``).

The :class:`Admission` it returns is released when the watch ends (its counts drop). Limits
are per process: with a shared log, each node counts its own watches.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._core.access import (
    REVOKED,
    Access,
    AuthRequest,
    Principal,
    WatchLimits,
    WatchScope,
    unauthorized,
)
from .._core.errors import (
    ClientError,
    Forbidden,
    InternalError,
    InvalidSelector,
    TooManyRequests,
    Unauthorized,
)
from .._core.params import WatchRequest
from .._core.selectors import compile_filter, restrict
from .._core.websocket import RateLimiter

if TYPE_CHECKING:
    from .node import Node, ResourceSpec

__all__ = ["DEFAULT_LIMIT_RETRY_AFTER", "OPEN", "Admission", "admit", "authenticate"]

logger = logging.getLogger("watchroutes")

#: Seconds a watch refused by a limit is told to wait (``Retry-After``).
DEFAULT_LIMIT_RETRY_AFTER: Final = 1
#: Principals whose new-watch rate is tracked at once; past it the buckets start over (a
#: bound on memory, at the cost of a burst allowance after a flood of distinct principals).
MAX_TRACKED_RATES: Final = 100_000


class Admission:
    """A request let in: who it acts for, and (for a watch) its place in the limits."""

    __slots__ = ("_keys", "_node", "generation", "principal")

    def __init__(
        self,
        node: Node | None,
        principal: Principal | None,
        keys: Sequence[str],
        generation: int = 0,
    ) -> None:
        self._node = node
        self.principal = principal
        self._keys = tuple(keys)
        #: The principal's revocation count when it was let in (see :meth:`check`).
        self.generation = generation

    def check(self, node: Node) -> None:
        """Refuse (403 ``access revoked``) a watch whose principal was revoked since it was
        let in; called under the node's lock, right before the watch registers."""
        principal = self.principal
        if principal is not None and node.revocations.get(principal.name, 0) != self.generation:
            raise Forbidden(REVOKED)

    @property
    def name(self) -> str | None:
        return None if self.principal is None else self.principal.name

    def expires_at(self, node: Node) -> float | None:
        """The principal's expiry on ``node``'s monotonic clock (``None``: never)."""
        principal = self.principal
        if principal is None or principal.expires_at is None:
            return None
        clock = node.clock
        return clock.now() + max(0.0, principal.expires_at - clock.time_us() / 1e6)

    def release(self) -> None:
        """The watch ended: drop its counts (idempotent)."""
        node, keys = self._node, self._keys
        self._keys = ()
        if node is not None and keys:
            node.call(_release, node, keys)


OPEN: Final = Admission(None, None, ())


def _release(node: Node, keys: Sequence[str]) -> None:
    counts = node.watch_counts
    for key in keys:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


async def _settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def access_of(node: Node, res: ResourceSpec) -> Access | None:
    return res.access if res.access is not None else node.access


async def authenticate(access: Access, request: AuthRequest, now_epoch: float) -> Principal:
    """The principal of ``request`` (401 when nobody, or expired credentials)."""
    try:
        principal = await _settle(access.authenticate(request))
    except Unauthorized:
        raise unauthorized() from None
    except ClientError:
        raise
    except Exception as exc:  # its message may hold a token: log only its type
        logger.error("the authenticate hook failed: %s", type(exc).__name__)
        raise InternalError("authentication failed on the server") from None
    if principal is None:
        raise unauthorized()
    if not isinstance(principal, Principal):
        raise InternalError("authentication failed on the server")
    if principal.expires_at is not None and principal.expires_at <= now_epoch:
        raise unauthorized()
    return principal


async def admit(
    node: Node,
    res: ResourceSpec,
    request: AuthRequest,
    parsed: WatchRequest,
    *,
    key: str | None,
    transport: str,
    principal: Principal | None = None,
) -> tuple[WatchRequest, Admission]:
    """Let ``request`` in (or raise 401/403/429); returns the watch request restricted to
    what the principal may see, and the admission to release when the watch ends (a list
    holds no place in the limits: ``transport="list"``). A WebSocket authenticates once, at
    its handshake, and passes its ``principal`` for each subscription."""
    access = access_of(node, res)
    limits = node.watch_limits
    if access is None:
        principal = None
    else:
        now_epoch = node.clock.time_us() / 1e6
        if principal is None:
            principal = await authenticate(access, request, now_epoch)
        elif principal.expires_at is not None and principal.expires_at <= now_epoch:
            raise unauthorized()  # a socket's principal, expired since its handshake
        forced = None
        if access.authorize is not None:
            scope = WatchScope(
                res.name, key, parsed.label_selector, parsed.field_selector, transport
            )
            try:
                selector = await _settle(access.authorize(principal, scope))
            except ClientError:
                raise
            except Exception as exc:
                logger.error("the authorize hook failed: %s", type(exc).__name__)
                raise InternalError("authorization failed on the server") from None
            if selector:
                try:
                    forced = compile_filter(selector)
                except InvalidSelector:
                    logger.exception("the authorize hook returned an invalid selector")
                    raise InternalError("authorization failed on the server") from None
        restricted = restrict(parsed.filter, forced, access.visibility(principal))
        if restricted is not parsed.filter:
            parsed = msgspec.structs.replace(parsed, filter=restricted)
    generation = 0 if principal is None else node.revocations.get(principal.name, 0)
    if transport == "list" or limits is None:
        return parsed, Admission(None, principal, (), generation)
    keys = node.call(_take, node, limits, principal, request.client)
    return parsed, Admission(node, principal, keys, generation)


def _take(
    node: Node, limits: WatchLimits, principal: Principal | None, client: str | None
) -> list[str]:
    counts = node.watch_counts
    keys: list[str] = []
    if principal is not None:
        if limits.per_second is not None:
            rates = node.watch_rates
            bucket = rates.get(principal.name)
            now = node.clock.now()
            if bucket is None:
                if len(rates) >= MAX_TRACKED_RATES:
                    rates.clear()
                bucket = rates[principal.name] = RateLimiter(limits.per_second, now)
            if not bucket.allow(now):
                raise TooManyRequests(
                    "too many new watches; try again", retry_after=DEFAULT_LIMIT_RETRY_AFTER
                )
        if limits.per_principal is not None:
            key = "principal:" + principal.name
            if counts.get(key, 0) >= limits.per_principal:
                raise TooManyRequests(
                    f"too many watches open for this user (the limit is "
                    f"{limits.per_principal}); close one or try again",
                    retry_after=DEFAULT_LIMIT_RETRY_AFTER,
                )
            keys.append(key)
    if client is not None and limits.per_address is not None:
        key = "address:" + client
        if counts.get(key, 0) >= limits.per_address:
            raise TooManyRequests(
                f"too many watches open from this address (the limit is "
                f"{limits.per_address}); close one or try again",
                retry_after=DEFAULT_LIMIT_RETRY_AFTER,
            )
        keys.append(key)
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return keys
