"""Label and field selectors: grammar, semantics, limits and error messages (protocol.md §3.2)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchroutes._core.errors import InvalidSelector
from watchroutes._core.selectors import (
    DEFAULT_MAX_SELECTOR_LENGTH,
    DEFAULT_MAX_TERMS,
    DEFAULT_MAX_VALUES,
    EVERYTHING,
    Filter,
    compile_filter,
)

LABEL = "labelSelector"
FIELD = "fieldSelector"


def obj(labels: Any = None, **top: Any) -> dict[str, Any]:
    """An object with ``metadata.labels`` (when given) and extra top-level fields."""
    metadata: dict[str, Any] = {"name": "o-1"}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata, **top}


APP_WEB = obj({"app": "web", "tier": "front"})
APP_DB = obj({"app": "db"})
NO_LABELS = obj()
PREFIXED = obj({"example.com/app": "x", "app": "y"})
EMPTY_VALUE = obj({"k": ""})
ORDER = obj(
    {"app": "web"},
    status={"phase": "paid"},
    spec={
        "qty": 3,
        "ok": True,
        "off": False,
        "ratio": 1.5,
        "whole": 2.0,
        "none": None,
        "tags": ["a"],
        "nested": {"x": "y"},
        "empty": "",
        "comma": "a,b",
        "eq": "x=y",
        "slash": "back\\slash",
    },
)

# (labelSelector, fieldSelector, object, matches)
VALID: list[tuple[str | None, str | None, dict[str, Any], bool]] = [
    # equality, all spellings
    ("app=web", None, APP_WEB, True),
    ("app=web", None, APP_DB, False),
    ("app==web", None, APP_WEB, True),
    ("app==web", None, NO_LABELS, False),
    ("app in (web)", None, APP_WEB, True),
    # inequality: absent keys match
    ("app!=web", None, APP_WEB, False),
    ("app!=web", None, APP_DB, True),
    ("app!=web", None, NO_LABELS, True),
    # sets
    ("app in (web,db)", None, APP_DB, True),
    ("app in (web,db)", None, NO_LABELS, False),
    ("app notin (web,db)", None, APP_DB, False),
    ("app notin (web,db)", None, NO_LABELS, True),
    ("app notin (x,y)", None, APP_WEB, True),
    # exists / does not exist
    ("tier", None, APP_WEB, True),
    ("tier", None, APP_DB, False),
    ("!tier", None, APP_WEB, False),
    ("!tier", None, APP_DB, True),
    ("! tier", None, NO_LABELS, True),
    # AND
    ("app=web,tier=front", None, APP_WEB, True),
    ("app=web,tier=back", None, APP_WEB, False),
    ("app,!tier", None, APP_DB, True),
    ("app=web,app=db", None, APP_WEB, False),
    # whitespace around every token, of every Kubernetes kind
    ("  app = web ,\ttier\n==\r\nfront  ", None, APP_WEB, True),
    ("app in(web , db )", None, APP_WEB, True),
    ("app\tnotin\n( db )", None, APP_WEB, True),
    ("   ", None, APP_DB, True),
    # prefixed keys
    ("example.com/app=x", None, PREFIXED, True),
    ("example.com/app=y", None, PREFIXED, False),
    ("a.b-c.example/x_y.z-1", None, obj({"a.b-c.example/x_y.z-1": "v"}), True),
    # empty values
    ("k=", None, EMPTY_VALUE, True),
    ("k=", None, NO_LABELS, False),
    ("k==,app", None, obj({"k": "", "app": "x"}), True),
    ("k!=", None, EMPTY_VALUE, False),
    ("k in ()", None, EMPTY_VALUE, True),
    ("k in (a,)", None, EMPTY_VALUE, True),
    ("k in (,a)", None, obj({"k": "a"}), True),
    ("k notin ()", None, EMPTY_VALUE, False),
    # in / notin are ordinary words as keys and values
    ("in=notin", None, obj({"in": "notin"}), True),
    ("notin in (in)", None, obj({"notin": "in"}), True),
    ("!in", None, NO_LABELS, True),
    # labels that are missing, not a mapping, or hold non-strings
    ("app", None, obj("not-a-mapping"), False),
    ("!app", None, {"metadata": "nope"}, True),
    ("app!=web", None, {}, True),
    ("app in (web)", None, obj({"app": ["web"]}), False),
    ("app notin (a,b)", None, obj({"app": ["web"]}), True),
    ("app=1", None, obj({"app": 1}), False),
    # field selectors: strings, and the string forms of JSON scalars
    (None, "status.phase=paid", ORDER, True),
    (None, "status.phase==paid", ORDER, True),
    (None, "status.phase!=paid", ORDER, False),
    (None, "metadata.name=o-1,status.phase=paid", ORDER, True),
    (None, "spec.qty=3", ORDER, True),
    (None, "spec.qty=3.0", ORDER, False),
    (None, "spec.ok=true", ORDER, True),
    (None, "spec.off=false", ORDER, True),
    (None, "spec.ratio=1.5", ORDER, True),
    (None, "spec.whole=2.0", ORDER, True),
    (None, "spec.empty=", ORDER, True),
    # absent: missing, null, list, mapping, through a non-mapping
    (None, "spec.missing=", ORDER, False),
    (None, "spec.missing!=x", ORDER, True),
    (None, "spec.none=null", ORDER, False),
    (None, "spec.none!=", ORDER, True),
    (None, "spec.tags!=a", ORDER, True),
    (None, "spec.nested=", ORDER, False),
    (None, "spec.nested.x=y", ORDER, True),
    (None, "spec.qty.deeper!=3", ORDER, True),
    # escapes in values; empty terms are ignored like Kubernetes
    (None, "spec.comma=a\\,b", ORDER, True),
    (None, "spec.eq=x\\=y", ORDER, True),
    (None, "spec.slash=back\\\\slash", ORDER, True),
    (None, "status.phase=paid,", ORDER, True),
    (None, ",,status.phase=paid,,spec.qty=3", ORDER, True),
    (None, ",", ORDER, True),
    # both at once
    ("app=web", "status.phase=paid", ORDER, True),
    ("app=db", "status.phase=paid", ORDER, False),
    ("app=web", "status.phase=new", ORDER, False),
]


@pytest.mark.parametrize(("labels", "fields", "target", "expected"), VALID)
def test_valid_selectors(
    labels: str | None, fields: str | None, target: dict[str, Any], expected: bool
) -> None:
    flt = compile_filter(labels, fields)
    assert flt.matches(target) is expected
    # The canonical text compiles back to the same filter.
    assert compile_filter(flt.label_selector, flt.field_selector) == flt


# (parameter, selector, fragment of the message)
INVALID: list[tuple[str, str, str]] = [
    (LABEL, "a=b=", 'unexpected "=" at 3: expected "," or end of selector'),
    (LABEL, "a b", 'unexpected "b" at 2: expected "=", "==", "!=", "in", "notin"'),
    (LABEL, "a !b", 'unexpected "!" at 2'),
    (LABEL, "a,", "unexpected end of selector at 2: expected a label key"),
    (LABEL, ",a", 'unexpected "," at 0: expected a label key'),
    (LABEL, "a=b,,c", 'unexpected "," at 4'),
    (LABEL, "!", 'unexpected end of selector at 1: expected a label key after "!"'),
    (LABEL, "!a=b", 'unexpected "=" at 2'),
    (LABEL, "!a in (b)", 'unexpected "in" at 3'),
    (LABEL, "a==(", 'unexpected "(" at 3: expected a value'),
    (LABEL, "a===b", 'unexpected "=" at 3: expected a value'),
    (LABEL, "a in b", 'unexpected "b" at 5: expected "(" after "in"'),
    (LABEL, "a notin", 'unexpected end of selector at 7: expected "(" after "notin"'),
    (LABEL, "a in (b", 'unexpected end of selector at 7: expected "," or ")"'),
    (LABEL, "a in (b c)", 'unexpected "c" at 8: expected "," or ")"'),
    (LABEL, "a notin (b,=)", 'unexpected "=" at 11: expected a value, "," or ")"'),
    (LABEL, "a in ((b))", 'unexpected "(" at 6'),
    (LABEL, "a>1", 'unsupported operator ">" at 1'),
    (LABEL, "a < 1", 'unsupported operator "<" at 2'),
    (LABEL, "comp+x=y", 'invalid label key "comp+x" at 0: name part must consist of'),
    (LABEL, "x, -a", 'invalid label key "-a" at 3'),
    (LABEL, "a.b_", 'invalid label key "a.b_" at 0'),
    (LABEL, "x/y/z", 'invalid label key "x/y/z" at 0: a qualified name must contain at most one'),
    (LABEL, "/a", "prefix part must not be empty"),
    (LABEL, "a/", "name part must not be empty"),
    (LABEL, "Example.com/a", "prefix part must be a lowercase DNS subdomain"),
    (LABEL, "ex..com/a", "prefix part must be a lowercase DNS subdomain"),
    (LABEL, "a" * 64, "name part must be no more than 63 characters"),
    (LABEL, "p" * 254 + "/a", "prefix part must be no more than 253 characters"),
    (LABEL, "a=" + "b" * 64, 'invalid label value "' + "b" * 64 + '" at 2: must be no more than'),
    (LABEL, "a=b+c", 'invalid label value "b+c" at 2: must be empty or consist of'),
    (LABEL, "a in (x, b@)", 'invalid label value "b@" at 9'),
    (LABEL, "a=\x00", 'invalid label value "\\u0000" at 2'),
    (LABEL, "ключ=v", 'invalid label key "ключ" at 0'),
    (LABEL, "a=b\u00a0", 'invalid label value "b\u00a0" at 2'),
    (LABEL, "a" * (DEFAULT_MAX_SELECTOR_LENGTH + 1), "the limit is 4096"),
    (
        LABEL,
        ",".join(["a"] * (DEFAULT_MAX_TERMS + 1)),
        "too many requirements at 128: the limit is 64",
    ),
    (LABEL, "a in (" + ",".join(["v"] * (DEFAULT_MAX_VALUES + 1)) + ")", "the limit is 64 per set"),
    (FIELD, "a", 'no operator in "a" at 0'),
    (FIELD, "x=1,   ", 'no operator in "   " at 4'),
    (FIELD, "=a", 'unexpected "=" at 0: expected a field path'),
    (FIELD, "x=1,!=2", 'unexpected "!=" at 4: expected a field path'),
    (FIELD, "a.=b", 'invalid field path "a." at 0'),
    (FIELD, "a..b=c", 'invalid field path "a..b" at 0'),
    (FIELD, "x=1, a=b", 'invalid field path " a" at 4'),
    (FIELD, "a b=c", 'invalid field path "a b" at 0'),
    (FIELD, "a[0]=x", 'invalid field path "a[0]" at 0'),
    (FIELD, "a\\=b=c", 'invalid field path "a\\\\" at 0'),
    (FIELD, "x=1,y=2=3", 'unexpected "=" at 7: write "=" in a value as "\\="'),
    (FIELD, "a===b", 'unexpected "=" at 3'),
    (FIELD, "a=b\\x", 'invalid escape sequence "\\\\x" at 3'),
    (FIELD, "a=b\\", 'invalid escape sequence "\\\\" at 3'),
    (FIELD, "a=" + "b" * DEFAULT_MAX_SELECTOR_LENGTH, "4098 characters long; the limit is 4096"),
    (
        FIELD,
        ",".join(f"a=b{i}" for i in range(DEFAULT_MAX_TERMS + 1)),
        "too many requirements at 374: the limit is 64",
    ),
]


@pytest.mark.parametrize(("parameter", "selector", "fragment"), INVALID)
def test_invalid_selectors(parameter: str, selector: str, fragment: str) -> None:
    args = (selector, None) if parameter == LABEL else (None, selector)
    with pytest.raises(InvalidSelector) as caught:
        compile_filter(*args)
    assert caught.value.parameter == parameter
    assert caught.value.code == 400
    message = str(caught.value)
    assert message.startswith(f"{parameter}: ")
    assert fragment in message, message


def test_custom_limits() -> None:
    with pytest.raises(InvalidSelector, match=r"the limit is 5$"):
        compile_filter("a=bcdef", max_length=5)
    with pytest.raises(InvalidSelector, match="too many requirements at 4: the limit is 2"):
        compile_filter("a,b,c", max_terms=2)
    with pytest.raises(InvalidSelector, match="too many requirements at 8: the limit is 2"):
        compile_filter(None, "a=1,b=2,c=3", max_terms=2)
    with pytest.raises(InvalidSelector, match="the limit is 1 per set"):
        compile_filter("a in (b,c)", max_values=1)
    compile_filter("a in (b)", max_values=1)
    compile_filter("a,b", max_terms=2)
    compile_filter("a=bcde", max_length=6)


def test_long_tokens_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidSelector) as caught:
        compile_filter("+" * 4000)
    assert len(str(caught.value)) < 300


# --- name, everything, label_equals --------------------------------------------------------


def test_everything() -> None:
    assert EVERYTHING.everything
    assert EVERYTHING.name is None
    assert EVERYTHING.label_equals == ()
    assert EVERYTHING.matches({})
    assert EVERYTHING.matches(ORDER)
    assert compile_filter() is EVERYTHING
    assert compile_filter("", "") is EVERYTHING
    assert compile_filter(" \t", ",") is EVERYTHING
    assert not compile_filter("a").everything
    assert not compile_filter(None, "a=b").everything
    assert not compile_filter(name="o-1").everything


def test_name_from_route() -> None:
    flt = compile_filter(name="o-1")
    assert flt.name == "o-1"
    assert flt.matches(obj())
    assert not flt.matches({"metadata": {"name": "o-2"}})
    assert not flt.matches({})
    assert flt == compile_filter(None, "metadata.name=o-1")
    # A selector that agrees, or only narrows further, is fine.
    assert compile_filter(None, "metadata.name==o-1", name="o-1") == flt
    both = compile_filter("app=web", "status.phase=paid,metadata.name=o-1", name="o-1")
    assert both.name == "o-1"
    assert both.matches(ORDER)
    narrowed = compile_filter(None, "metadata.name!=o-2", name="o-1")
    assert narrowed.name == "o-1"
    assert narrowed.matches(obj())
    # metadata.name!=<name> is legal and simply matches nothing.
    assert not compile_filter(None, "metadata.name!=o-1", name="o-1").matches(obj())


def test_name_conflict() -> None:
    with pytest.raises(InvalidSelector) as caught:
        compile_filter("app=web", "status.phase=paid,metadata.name==o-2", name="o-1")
    assert caught.value.parameter == FIELD
    assert str(caught.value) == (
        'fieldSelector: metadata.name="o-2" doesn\'t match the requested name "o-1"'
    )


def test_name_from_field_selector() -> None:
    assert compile_filter(None, "metadata.name=x,status.phase=paid").name == "x"
    assert compile_filter(None, "metadata.name==").name == ""
    assert compile_filter(None, "metadata.name!=x").name is None
    assert compile_filter(None, "metadata.namespace=x").name is None
    assert compile_filter(None, "spec.metadata.name=x").name is None
    assert compile_filter("metadata.name=x").name is None  # a label, not the field


def test_label_equals() -> None:
    flt = compile_filter("b=2,a==1,c in (3),d in (4,5),e!=6,f notin (7),g,!h,c in (3,3),b=2")
    assert flt.label_equals == (("a", "1"), ("b", "2"), ("c", "3"))
    assert compile_filter("a!=1").label_equals == ()
    assert compile_filter("k=").label_equals == (("k", ""),)
    assert compile_filter("k in ()").label_equals == (("k", ""),)
    assert compile_filter(None, "a=1").label_equals == ()


def test_equality_hash_repr_pickle() -> None:
    one = compile_filter("a=b,c in (e,d)", "x.y==1")
    two = compile_filter(" c in (d,e,d) , a==b ", "x.y=1")
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two, EVERYTHING}) == 2
    assert one != compile_filter("a=b")
    assert one != "a=b"
    assert compile_filter("a in (b)") == compile_filter("a=b")
    assert compile_filter("a notin (b)") == compile_filter("a!=b")
    assert repr(one) == "Filter(label_selector='a=b,c in (d,e)', field_selector='x.y=1')"
    assert repr(EVERYTHING) == "Filter(label_selector='', field_selector='')"
    escaped = compile_filter(None, "a=x\\,y\\=z\\\\")
    assert escaped.field_selector == "a=x\\,y\\=z\\\\"
    for flt in (one, EVERYTHING, escaped, compile_filter("!a,b notin (,c)")):
        copy = pickle.loads(pickle.dumps(flt))
        assert copy == flt
        assert copy.label_selector == flt.label_selector


def test_filter_is_immutable() -> None:
    flt = compile_filter("a=b")
    with pytest.raises(AttributeError):
        flt.name = "x"
    with pytest.raises(AttributeError):
        del flt.everything
    assert isinstance(flt, Filter)


def test_odd_field_values_are_absent() -> None:
    flt = compile_filter(None, "spec.v=1")
    assert not flt.matches({"spec": {"v": float("nan")}})
    assert not flt.matches({"spec": {"v": 10**5000}})
    assert compile_filter(None, "spec.v!=1").matches({"spec": {"v": object()}})
    assert compile_filter(None, "spec.v=1e20").matches({"spec": {"v": 1e20}})
    assert compile_filter(None, "spec.v=-0.0").matches({"spec": {"v": -0.0}})
    assert not compile_filter(None, "spec=1").matches({"spec": [1]})


# --- property tests --------------------------------------------------------------------------

SELECTOR_TOKENS = st.sampled_from(
    [
        "a", "b", "k", "x.y", "example.com/", "in", "notin", "=", "==", "!=", "!", "(", ")",
        ",", " ", "\t", "\n", "<", ">", "\\", "\\,", "\\=", "\\\\", ".", "-", "_", "/", "é",
        "\x00", "A", "0",
    ]
)  # fmt: skip
NOISE = st.one_of(st.text(), st.lists(SELECTOR_TOKENS, max_size=40).map("".join))


def compile_or_error(
    labels: str | None, fields: str | None, *, name: str | None = None
) -> Filter | InvalidSelector:
    try:
        return compile_filter(labels, fields, name=name)
    except InvalidSelector as exc:
        return exc


@given(NOISE)
@settings(max_examples=600)
def test_any_string_parses_or_raises_invalid_selector(text: str) -> None:
    probe = obj({"a": "b", "k": "", "in": "notin"}, x={"y": "1"}, a="b")
    for parameter in (LABEL, FIELD):
        args = (text, None) if parameter == LABEL else (None, text)
        result = compile_or_error(*args)
        if isinstance(result, InvalidSelector):
            assert result.parameter == parameter
            assert str(result).startswith(f"{parameter}: ")
        else:
            result.matches(probe)
            assert compile_filter(result.label_selector, result.field_selector) == result


@given(st.text(), st.text())
def test_any_name_compiles_or_conflicts(name: str, value: str) -> None:
    result = compile_or_error(None, f"metadata.name={value}", name=name)
    if isinstance(result, InvalidSelector):
        assert result.parameter == FIELD
    else:
        assert result.name == name
    if not any(c in value for c in "\\,=") and value != name:
        assert isinstance(result, InvalidSelector)
        assert "doesn't match the requested name" in str(result)


# Random *valid* selectors, rendered to text and checked against a naive evaluator.

KEYS = ["app", "tier", "example.com/app", "a.b-c_d", "in", "notin", "K8s"]
VALUES = ["", "web", "db", "in", "notin", "A-1.b_2"]
WS = st.sampled_from(["", "", " ", "  ", "\t", "\n", "\r\n"])
WS1 = st.sampled_from([" ", "\t", "\n", " \r\n "])

LabelReq = tuple[str, str, tuple[str, ...]]  # (operator, key, values)


@st.composite
def label_requirement(draw: st.DrawFn) -> tuple[LabelReq, str]:
    op = draw(st.sampled_from(["exists", "!", "=", "==", "!=", "in", "notin"]))
    key = draw(st.sampled_from(KEYS))
    if op == "exists":
        return (op, key, ()), f"{draw(WS)}{key}{draw(WS)}"
    if op == "!":
        return (op, key, ()), f"{draw(WS)}!{draw(WS)}{key}{draw(WS)}"
    if op in ("=", "==", "!="):
        value = draw(st.sampled_from(VALUES))
        # "in"/"notin" as a value right after the operator needs no space either.
        text = f"{draw(WS)}{key}{draw(WS)}{op}{draw(WS)}{value}{draw(WS)}"
        return ("!=" if op == "!=" else "=", key, (value,)), text
    values = tuple(draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4)))
    inner = ",".join(f"{draw(WS)}{v}{draw(WS)}" for v in values)
    return (op, key, values), f"{draw(WS)}{key}{draw(WS1)}{op}{draw(WS)}({inner}){draw(WS)}"


def naive_label_match(reqs: list[LabelReq], labels: dict[str, str]) -> bool:
    for op, key, values in reqs:
        present = key in labels
        if op == "exists":
            ok = present
        elif op == "!":
            ok = not present
        elif op in ("=", "in"):
            ok = present and labels[key] in values
        else:  # "!=", "notin"
            ok = not present or labels[key] not in values
        if not ok:
            return False
    return True


PATHS = ["metadata.name", "status.phase", "spec.qty", "spec.ok", "spec.ratio", "spec.deep.x"]
FIELD_VALUES = ["", "o-1", "paid", "1", "true", "false", "1.5", "a,b", "x=y", "b\\s", " "]
FIELD_LEAVES = st.one_of(
    st.none(),
    st.sampled_from(FIELD_VALUES),
    st.integers(-2, 2),
    st.booleans(),
    st.sampled_from([0.5, 1.0, 1.5, -2.25]),
    st.just(["paid"]),
    st.just({"x": "1"}),
)

FieldReq = tuple[str, str, str]  # (path, operator, value)


def naive_field_match(reqs: list[FieldReq], target: Mapping[str, Any]) -> bool:
    for path, op, value in reqs:
        current: Any = target
        for segment in path.split("."):
            current = current.get(segment) if isinstance(current, dict) else None
        if isinstance(current, bool):
            text: str | None = "true" if current else "false"
        elif isinstance(current, int | str):
            text = str(current)
        elif isinstance(current, float):
            text = json.dumps(current)
        else:
            text = None
        if (text == value) != (op == "="):
            return False
    return True


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


@st.composite
def field_selector(draw: st.DrawFn) -> tuple[list[FieldReq], str]:
    reqs: list[FieldReq] = []
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.sampled_from(PATHS))
        spelling = draw(st.sampled_from(["=", "==", "!="]))
        value = draw(st.sampled_from(FIELD_VALUES))
        reqs.append((path, "!=" if spelling == "!=" else "=", value))
        parts.append(f"{path}{spelling}{escape(value)}")
        if draw(st.booleans()):
            parts.append("")  # empty terms are ignored
    return reqs, ",".join(parts)


@st.composite
def field_object(draw: st.DrawFn) -> dict[str, Any]:
    def maybe(name: str, into: dict[str, Any]) -> None:
        if draw(st.booleans()):
            into[name] = draw(FIELD_LEAVES)

    target: dict[str, Any] = {"metadata": {}, "status": {}, "spec": {"deep": {}}}
    maybe("name", target["metadata"])
    maybe("phase", target["status"])
    for name in ("qty", "ok", "ratio"):
        maybe(name, target["spec"])
    maybe("x", target["spec"]["deep"])
    if draw(st.booleans()):
        target["spec"]["deep"] = draw(FIELD_LEAVES)
    return target


@given(
    st.lists(label_requirement(), max_size=6),
    field_selector(),
    st.lists(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=5),
    field_object(),
)
@settings(max_examples=400)
def test_matches_agrees_with_naive_evaluator(
    label_reqs: list[tuple[LabelReq, str]],
    fields: tuple[list[FieldReq], str],
    label_sets: list[dict[str, str]],
    field_target: dict[str, Any],
) -> None:
    reqs = [req for req, _ in label_reqs]
    label_text = ",".join(text for _, text in label_reqs)
    field_reqs, field_text = fields
    flt = compile_filter(label_text, field_text)
    assert flt.everything == (not reqs and not field_reqs)
    assert compile_filter(flt.label_selector, flt.field_selector) == flt
    for labels in [*label_sets, {}]:
        target = {**field_target, "metadata": {**field_target["metadata"], "labels": labels}}
        expected = naive_label_match(reqs, labels) and naive_field_match(field_reqs, target)
        assert flt.matches(target) is expected, (label_text, field_text, target)
    # label_equals: exactly the single-valued positive requirements.
    equals = {
        (key, values[0]) for op, key, values in reqs if op in ("=", "in") and len(set(values)) == 1
    }
    assert set(flt.label_equals) == equals
    assert list(flt.label_equals) == sorted(flt.label_equals)
