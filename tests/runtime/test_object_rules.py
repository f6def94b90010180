"""The object rules (names, labels, a create's resourceVersion) on every write path: the
in-memory log, and a shared log (the in-process reference and Redis), which must agree."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from watchroutes import Hub, Invalid, UsageError
from watchroutes.backends.memory import MemoryLog

from .._services import REDIS_URL, require

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py is asyncio-only


@pytest.fixture(params=["in-memory", "memory-log", "redis"])
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    backend: Any = None
    if request.param == "memory-log":
        backend = MemoryLog()
    elif request.param == "redis":
        require("redis")
        backend = f"{REDIS_URL}?prefix=test-rules-{uuid.uuid4().hex[:12]}"
    hub = Hub(backend=backend)
    hub.resource("orders", kind="Order")
    hub.resource("notes", kind="Note", names="segment")
    async with hub:
        yield hub
    if request.param == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match="{test-rules-*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def order(name: str, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **metadata}, "spec": {"qty": 1}}


BAD_NAMES = [
    ("a/b", "lowercase RFC 1123 subdomain"),
    ("Upper", "lowercase RFC 1123 subdomain"),
    ("-dash", "lowercase RFC 1123 subdomain"),
    ("a" * 254, "no more than 253 characters"),
    ("with space", "lowercase RFC 1123 subdomain"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
async def test_names_follow_the_dns_subdomain_rule(hub: Hub, name: str, problem: str) -> None:
    with pytest.raises(Invalid, match=problem) as info:
        await hub.resources["orders"].acreate(order(name))
    status = info.value.status()
    assert (status.code, status.reason) == (422, "Invalid")
    assert "metadata.name" in status.message
    assert (await hub.resources["orders"].alist())[1] == []


async def test_good_names_pass(hub: Hub) -> None:
    orders = hub.resources["orders"]
    for name in ("o-1", "a.b-c", "x" * 253, "0"):
        await orders.acreate(order(name))
    assert len((await orders.alist())[1]) == 4


async def test_a_resource_can_choose_path_segment_names(hub: Hub) -> None:
    notes = hub.resources["notes"]
    stored = await notes.acreate(order("Café au lait #1"))
    assert stored["metadata"]["name"] == "Café au lait #1"
    for name, problem in [("a/b", "'/'"), ("..", '"." or ".."'), ("50%", "'%'"), ("a\nb", "'/'")]:
        with pytest.raises(Invalid, match=problem.split()[0]):
            await notes.acreate(order(name))


async def test_a_name_rule_can_be_a_function() -> None:
    hub = Hub()
    things = hub.resource("things", names=lambda n: None if n.startswith("t-") else "needs t-")
    things.create(order("t-1"))
    with pytest.raises(Invalid, match="needs t-"):
        things.create(order("x-1"))
    with pytest.raises(UsageError):
        hub.resource("others", names="anything")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labels", "field", "problem"),
    [
        ("eu", "metadata.labels", "map of strings"),
        (["eu"], "metadata.labels", "map of strings"),
        ({"region": 5}, "metadata.labels.region", "must be a string"),
        ({"region": None}, "metadata.labels.region", "must be a string"),
        ({"region": "x" * 64}, "metadata.labels.region", "no more than 63"),
        ({"region": "a b"}, "metadata.labels.region", "alphanumeric"),
        ({"bad key": "eu"}, "metadata.labels", "name part must"),
        ({"a/b/c": "eu"}, "metadata.labels", "at most one"),
        ({"": "eu"}, "metadata.labels", "must not be empty"),
    ],
)
async def test_labels_are_a_map_of_selectable_strings(
    hub: Hub, labels: Any, field: str, problem: str
) -> None:
    orders = hub.resources["orders"]
    with pytest.raises(Invalid, match=problem) as info:
        await orders.acreate(order("o-1", labels=labels))
    assert f"{field}: Invalid value" in info.value.message
    await orders.acreate(order("o-1", labels={"region": "eu", "example.com/tier": ""}))
    # every write path checks: replace and merge patch too
    with pytest.raises(Invalid):
        await orders.areplace(order("o-1", labels=labels))
    if labels != {"region": None}:  # in a merge patch, null removes the label: allowed
        with pytest.raises(Invalid):
            await orders.apatch("o-1", {"metadata": {"labels": labels}})
    assert (await orders.aget("o-1"))["metadata"]["labels"]["region"] == "eu"


async def test_a_create_carries_no_resource_version(hub: Hub) -> None:
    """As Kubernetes: "resourceVersion should not be set on objects to be created"."""
    orders = hub.resources["orders"]
    with pytest.raises(Invalid, match="must not be set on objects to be created"):
        await orders.acreate(order("o-1", resourceVersion="12"))
    created = await orders.acreate(order("o-1"))
    # a replace with the current rv is the optimistic-concurrency check, not refused
    body = order("o-1", resourceVersion=created["metadata"]["resourceVersion"])
    assert (await orders.areplace(body))["metadata"]["name"] == "o-1"
