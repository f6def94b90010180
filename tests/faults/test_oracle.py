"""The oracle itself, without servers: it must notice each kind of failure it reports."""

from __future__ import annotations

import copy

import pytest

from ._oracle import ChainCheck, History, ListCheck, Obj, Rec, Tally, Write, check_list, stamped


def _order(name: str, rv: int, region: str = "eu", token: str = "") -> Obj:
    return {
        "metadata": {"name": name, "labels": {"region": region}, "resourceVersion": str(rv)},
        "spec": {"w": token or f"{name}.{rv}"},
    }


@pytest.fixture
def history() -> History:
    """a created at 10, b created at 11, a modified (to region us) at 12, b deleted at 13."""
    h = History(retention=10, tally=Tally())
    a10, b11 = _order("a", 10), _order("b", 11)
    a12 = _order("a", 12, "us")
    for op, key, prev, body in [
        ("create", "a", None, a10),
        ("create", "b", None, b11),
        ("put", "a", a10, a12),
        ("delete", "b", b11, stamped(b11, 13)),
    ]:
        write = Write(op, key, None, prev, 0.0, "n")
        h.begin(write)
        h.ack(write, body)
    return h


def _events(history: History, *rvs: int) -> list[Rec]:
    out = []
    for rv in rvs:
        change = history.changes[rv]
        expected = change.expected(None)
        assert expected is not None
        out.append(Rec("event", 1.0, rv, expected[0], change.key, copy.deepcopy(expected[1])))
    return out


def _check(
    history: History, records: list[Rec], selector: str | None = None, cursor: int = 9
) -> Tally:
    """Feed ``records`` to a watcher that has seen everything up to ``cursor``."""
    check = ChainCheck("w", selector, history, history.tally)
    check.live, check.cursor = True, cursor
    check.feed(records)
    check.settle()
    return history.tally


def test_a_complete_chain_passes(history: History) -> None:
    tally = _check(history, [Rec("open", 0.0, 9), *_events(history, 10, 11, 12, 13)])
    assert tally.failures() == 0
    assert tally.counts["events"] == 4


@pytest.mark.parametrize(
    ("rvs", "kind"),
    [((10, 12, 13), "lost"), ((10, 11, 11, 12, 13), "duplicated"), ((11, 10, 12, 13), "reordered")],
)
def test_lost_duplicated_and_reordered_events(history: History, rvs: tuple[int], kind: str) -> None:
    tally = _check(history, [Rec("open", 0.0, 9), *_events(history, *rvs)])
    assert tally.counts[kind] >= 1, tally.details


def test_a_bookmark_claims_everything_before_it(history: History) -> None:
    tally = _check(history, [Rec("open", 0.0, 9), *_events(history, 10), Rec("bookmark", 1.0, 12)])
    assert tally.counts["lost"] == 2  # b at 11, a at 12


def test_selector_transitions(history: History) -> None:
    a10 = history.changes[10].obj
    assert a10 is not None
    records = [
        Rec("open", 0.0, 9),
        Rec("event", 1.0, 10, "ADDED", "a", a10),
        Rec("event", 1.0, 11, "ADDED", "b", history.changes[11].obj),
        Rec("event", 1.0, 12, "DELETED", "a", stamped(a10, 12)),  # a left region=eu
        Rec("event", 1.0, 13, "DELETED", "b", history.changes[13].deleted),
    ]
    assert _check(history, records, "region=eu").failures() == 0


def test_initial_state_must_equal_the_state_at_its_bookmark(history: History) -> None:
    a12 = history.changes[12].obj
    records = [
        Rec("open", 0.0, None),
        Rec("event", 1.0, 12, "ADDED", "a", a12),
        Rec("bookmark", 1.0, 13, note="initial-end"),
    ]
    assert _check(history, records).failures() == 0
    stale = [
        Rec("open", 0.0, None),
        Rec("event", 1.0, 11, "ADDED", "b", history.changes[11].obj),  # deleted at 13
        Rec("event", 1.0, 12, "ADDED", "a", a12),
        Rec("bookmark", 1.0, 13, note="initial-end"),
    ]
    assert _check(history, stale).counts["wrong_states"] >= 1


def test_an_expiry_is_legal_only_past_retention(history: History) -> None:
    records = [Rec("open", 0.0, 11), Rec("expired", 5.0, 11, note="410", since=0.0)]
    assert _check(history, records, cursor=11).counts["bad_expired"] == 1  # 2 writes after 11
    history.retention = 1
    assert _check(history, records, cursor=11).counts["bad_expired"] == 1  # no more


def test_lists(history: History) -> None:
    a12 = history.changes[12].obj
    assert a12 is not None
    check_list(ListCheck("n", 0.0, 13, 13, [a12]), history, history.tally)
    assert history.tally.failures() == 0
    check_list(ListCheck("n", 0.0, 13, 12, [a12]), history, history.tally)  # older than acked
    check_list(ListCheck("n", 0.0, 0, 13, []), history, history.tally)  # a missing
    assert history.tally.counts["wrong_lists"] == 2


def test_a_maybe_write_may_show_either_outcome(history: History) -> None:
    a12 = history.changes[12].obj
    assert a12 is not None
    maybe = Write("put", "a", "a.maybe", a12, 0.0, "n")
    history.begin(maybe)
    history.maybe(maybe, "ReadTimeout")
    landed = _order("a", 20, "us", token="a.maybe")
    assert history.compare({"a": landed}, 20, None) == []  # it happened
    assert history.compare({"a": a12}, 20, None) == []  # it did not
    history.confirm("a", 20, "MODIFIED", landed)  # a watcher saw it at 20
    assert history.compare({"a": a12}, 20, None) != []
    assert history.compare({"a": a12}, 19, None) == []
