"""containerd filter expressions, with the examples of containerd's filters package documentation."""

from __future__ import annotations

import pytest

from snapshotter.errors import InvalidArgument
from snapshotter.filters import map_lookup, match_any, parse, parse_any

OBJECT = map_lookup({"name": "foo", "kind": "active", "parent": ""},
                    {"labels": {"bar": "1", "very complex label": "something", "a.b": "dotted"}})


@pytest.mark.parametrize(("expression", "matches"), [
    ("", True),
    ("name==foo", True),
    ("name==bar", False),
    ("name!=bar", True),
    ("labels.bar", True),
    ("labels.baz", False),
    ('labels."very complex label"==something', True),
    ("name==foo,labels.bar", True),
    ("name==foo,labels.baz", False),
    ("name~=^f", True),
    ("name~=/o+$/", True),
    ("name~=|x|", False),
    ('parent!=""', False),
    ('parent==""', True),
    ("labels.a.b==dotted", True),
    ("labels.bar==1 , name == foo", True),
    ('name=="f\\x6fo"', True),
    ("unknown", False),
    ("unknown!=x", True),
])
def test_expressions(expression: str, matches: bool) -> None:
    assert parse(expression).matches(OBJECT) is matches


def test_filters_of_a_request_are_alternatives() -> None:
    assert match_any(parse_any(["name==bar", "kind==active"]), OBJECT)
    assert not match_any(parse_any(["name==bar", "kind==view"]), OBJECT)
    assert match_any(parse_any([]), OBJECT)


@pytest.mark.parametrize("expression", ["name=", "name==", ",", "name==foo,", "name<>foo", "name==/foo/",
                                        'labels."unterminated', "name~=(", "name==foo bar"])
def test_malformed_expressions_are_invalid_arguments(expression: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(expression)
