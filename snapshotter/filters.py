"""containerd's filter expressions, as List requests carry them.

Syntax (containerd's ``filters`` package): a filter is comma-separated selectors that must all match;
a request's filters match when any of them does. A selector is ``fieldpath[op value]`` where a field
path is dot-separated fields (letters, digits, ``_``) or quoted strings, ``op`` is ``==``, ``!=`` or
``~=`` (a regular expression searched in the value), and without an operator the selector tests that
the field is present. Values are bare (up to a comma or blank) or quoted with ``"``; after ``~=`` also
with ``/`` or ``|``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import InvalidArgument

# A field adaptor: field path -> (value, present).
FieldLookup = Callable[[Sequence[str]], tuple[str, bool]]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_OPERATOR = re.compile(r"[=!~]+")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_NUMERIC_ESCAPES = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str | None  # None: presence test
    value: str = ""

    def matches(self, lookup: FieldLookup) -> bool:
        value, present = lookup(self.fieldpath)
        if self.operator is None:
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        return re.search(self.value, value) is not None


@dataclass(frozen=True)
class Filter:
    """Selectors joined by commas: all must match."""

    selectors: tuple[Selector, ...]

    def matches(self, lookup: FieldLookup) -> bool:
        return all(s.matches(lookup) for s in self.selectors)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"filters: parse error at {self.pos} in {self.text!r}: {message}")

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_blanks()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def quoted(self, quote: str) -> str:
        """A quoted string starting at the opening ``quote``, with Go's escape sequences."""
        out: list[str] = []
        i = self.pos + 1
        while True:
            if i >= len(self.text) or self.text[i] == "\n":
                raise self.fail("quoted literal not terminated")
            ch = self.text[i]
            if ch == quote:
                self.pos = i + 1
                return "".join(out)
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            esc = self.text[i + 1: i + 2]
            if esc in _ESCAPES or esc == quote:
                out.append(_ESCAPES.get(esc, esc))
                i += 2
            elif esc in _NUMERIC_ESCAPES or esc.isdigit():
                base, width = _NUMERIC_ESCAPES.get(esc, (8, 3))
                start = i + 1 if base == 8 else i + 2
                digits = self.text[start: start + width]
                try:
                    out.append(chr(int(digits, base)) if len(digits) == width else "")
                except ValueError:
                    digits = ""
                if len(digits) != width:
                    raise self.fail("illegal numeric escape sequence")
                i = start + width
            else:
                raise self.fail("illegal escape sequence")

    def field(self) -> str:
        ch = self.peek()
        if ch == '"':
            return self.quoted(ch)
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected field or quoted")
        self.pos = m.end()
        return m.group()

    def value(self, operator: str) -> str:
        ch = self.peek()
        if ch in ('"', "/", "|"):
            if ch != '"' and operator != "~=":
                raise self.fail("invalid quote encountered")
            return self.quoted(ch)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] != "," and not self.text[self.pos].isspace():
            self.pos += 1
        if start == self.pos:
            raise self.fail("expected value or quoted")
        return self.text[start:self.pos]

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        if self.peek() in ("", ","):
            return Selector(tuple(path), None)
        m = _OPERATOR.match(self.text, self.pos)
        if not m or m.group() not in ("==", "!=", "~="):
            raise self.fail('expected an operator ("=="|"!="|"~=")')
        self.pos = m.end()
        value = self.value(m.group())
        if m.group() == "~=":
            try:
                re.compile(value)
            except re.error as exc:
                raise self.fail(f"bad regular expression: {exc}") from None
        return Selector(tuple(path), m.group(), value)

    def parse(self) -> Filter:
        selectors = [self.selector()]
        while (ch := self.peek()) == ",":
            self.pos += 1
            selectors.append(self.selector())
        if ch:
            raise self.fail(f"unexpected input {ch!r}")
        return Filter(tuple(selectors))


def parse(text: str) -> Filter:
    """One filter expression; the empty string matches everything."""
    return Filter(()) if text == "" else _Parser(text).parse()


def parse_any(texts: Sequence[str]) -> list[Filter]:
    """Filters of a request, any of which may match (an empty list matches everything)."""
    return [parse(t) for t in texts]


def match_any(filters: Sequence[Filter], lookup: FieldLookup) -> bool:
    return not filters or any(f.matches(lookup) for f in filters)


def map_lookup(fields: Mapping[str, str], maps: Mapping[str, Mapping[str, str]]) -> FieldLookup:
    """An adaptor over plain fields and maps such as labels (``labels.a.b`` looks up key ``a.b``)."""

    def lookup(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] in maps:
            m = maps[path[0]]
            key = ".".join(path[1:])
            return (m[key], True) if key in m else ("", False)
        if len(path) == 1 and path[0] in fields:
            return fields[path[0]], True
        return "", False

    return lookup
