"""Shared parts of the API adapters: strict parsing, rewriting, generic APIs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.llmapi import extract, parse_json, rewrite, string_leaves

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=25,
)


def test_rewrite_changes_only_the_given_strings_and_keeps_the_input() -> None:
    doc = {"a": [1, {"b": "secret", "c": "keep"}], "d": "also secret", "e": 1.5}
    before = json.dumps(doc)
    out = json.loads(rewrite(doc, {("a", 1, "b"): "[X]", ("d",): "[Y]"}))
    assert out == {"a": [1, {"b": "[X]", "c": "keep"}], "d": "[Y]", "e": 1.5}
    assert json.dumps(doc) == before


def test_rewrite_survives_lone_surrogates() -> None:
    value, err = parse_json(b'{"a": "\\ud800", "b": "x"}')
    assert err is None
    out = rewrite(value, {("b",): "y"})
    assert json.loads(out) == {"a": "\ud800", "b": "y"}


def test_rewrite_ignores_stale_paths() -> None:
    assert json.loads(rewrite({"a": "x"}, {("missing", 0): "y", ("a",): "z"})) == {"a": "z"}


@settings(deadline=None)
@given(json_values, st.data())
def test_rewrite_property_valid_json_and_other_values_equal(doc: Any, data: st.DataObject) -> None:
    leaves = list(string_leaves(doc, ()))
    chosen = data.draw(st.lists(st.sampled_from(leaves), unique_by=lambda x: x[0]) if leaves else st.just([]))
    repl = {p: f"<{i}>" for i, (p, _) in enumerate(chosen)}
    out = json.loads(rewrite(doc, repl))
    expected_leaves = {p: repl.get(p, s) for p, s in leaves}
    assert dict(string_leaves(out, ())) == expected_leaves
    # Non-string values are untouched: blank every string on both sides and compare.
    assert _blank(out) == _blank(doc)


def _blank(v: Any) -> Any:
    if isinstance(v, str):
        return ""
    if isinstance(v, list):
        return [_blank(x) for x in v]
    if isinstance(v, dict):
        return {k: _blank(x) for k, x in v.items()}
    return v


def test_generic_api_reads_every_string_of_a_json_body() -> None:
    ex = extract("generic", "POST", "/anything", b'{"q": "hello", "n": [1, "world"]}')
    assert ex.operation == "other" and ex.governed
    assert sorted(t.text for t in ex.texts) == ["hello", "world"]
    opaque = extract("generic", "POST", "/upload", b"\x89PNG...")
    assert not opaque.governed and opaque.error is None
    broken = extract("mcp", "POST", "/mcp", b'{"jsonrpc": ')
    assert broken.governed and broken.error is not None
