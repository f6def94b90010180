from __future__ import annotations

import pytest

from watchroutes._core.errors import Expired, InvalidResourceVersion
from watchroutes._core.events import Entry, EventType
from watchroutes._core.log import ResourceLog
from watchroutes._core.versions import VersionClock, parse_resource_version


def make(rv: int, key: str = "k", t: float = 0.0, etype: EventType = EventType.ADDED) -> Entry:
    return Entry(rv=rv, resource="r", key=key, type=etype, object={"v": rv}, prev=None, time=t)


def test_versions_never_go_back_and_follow_the_clock() -> None:
    clock = VersionClock(1000)
    assert clock.next(500) == 1001  # the wall clock went backwards: still increasing
    assert clock.next(5000) == 5000
    assert clock.next(5000) == 5001
    assert clock.last == 5001


@pytest.mark.parametrize("text", ["", "-1", "1.0", "abc", " 1", "9223372036854775808", "١٢"])
def test_bad_resource_versions(text: str) -> None:
    with pytest.raises(InvalidResourceVersion, match="resourceVersion"):
        parse_resource_version(text)


def test_good_resource_versions() -> None:
    assert parse_resource_version("0") == 0
    assert parse_resource_version("9223372036854775807") == 2**63 - 1


def test_retention_by_count_moves_the_watermark() -> None:
    log = ResourceLog("r", start_rv=10, max_events=3)
    for rv in range(11, 16):
        log.append(make(rv, key=f"k{rv}"))
    assert len(log) == 3
    assert log.watermark == 12
    assert [e.rv for e in log.since(12, 15)] == [13, 14, 15]
    assert [e.rv for e in log.since(14, 15)] == [15]
    assert list(log.since(15, 15)) == []
    with pytest.raises(Expired, match=r"too old resource version: 11 \(12\)"):
        log.since(11, 15)
    with pytest.raises(Expired, match="newer"):
        log.since(16, 15)


def test_retention_by_age_and_young_evictions_are_counted() -> None:
    log = ResourceLog("r", start_rv=0, max_age=60, young_window=30)
    log.append(make(1, t=0))
    log.append(make(2, t=50))
    log.compact(59)
    assert len(log) == 2
    log.compact(61)
    assert [e.rv for e in log.since(1, 2)] == [2]
    assert log.watermark == 1
    assert log.evicted == 1
    assert log.evicted_young == 0
    small = ResourceLog("r", start_rv=0, max_events=1, young_window=30)
    small.append(make(1, t=0))
    small.append(make(2, t=1))
    assert small.evicted_young == 1


def test_state_is_latest_per_key_in_ascending_rv_order() -> None:
    log = ResourceLog("r", start_rv=0)
    log.append(make(1, key="a"))
    log.append(make(2, key="b"))
    log.append(make(3, key="a", etype=EventType.MODIFIED))
    assert [(k, e.rv) for k, e in log.state.items()] == [("b", 2), ("a", 3)]
    log.append(make(4, key="b", etype=EventType.DELETED))
    assert list(log.state) == ["a"]


def test_long_runs_shift_the_list_and_keep_answers_exact() -> None:
    log = ResourceLog("r", start_rv=0, max_events=10)
    for rv in range(1, 5001):
        log.append(make(rv, key=str(rv % 7)))
    assert len(log._entries) < 2100
    assert [e.rv for e in log.since(4990, 5000)] == list(range(4991, 5001))


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_events"):
        ResourceLog("r", start_rv=0, max_events=0)
    with pytest.raises(ValueError, match="max_age"):
        ResourceLog("r", start_rv=0, max_age=0)
