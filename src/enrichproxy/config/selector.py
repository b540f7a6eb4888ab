"""PromQL series selectors (``{__name__=~"order_.*", job!="x"}``) compiled into predicates.

A parser of our own for the one construct enrichproxy takes, ``name{label op "value", ...}``,
so that an error names its column and what was expected there (``column 12: expected a
string after =~``), and strings are read as PromQL reads them (Go escapes in "…" and '…', none
in `…`). Matching follows PromQL: regexes are RE2, fully anchored, ``.`` also matches a newline
(config/regex.py compiles them as Prometheus 3 does), and a missing label matches as the empty
string. A regex must also stand on its own, as Prometheus checks it: ``a)|(b`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from enrichproxy.config.regex import compile_anchored
from enrichproxy.model import METRIC_NAME_LABEL, Labels

_OPERATORS = ("=~", "!~", "!=", "=")  # two-character ones first
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def compile(self) -> Callable[[str], bool]:
        if self.op == "=":
            expected = self.value
            return lambda actual: actual == expected
        if self.op == "!=":
            unexpected = self.value
            return lambda actual: actual != unexpected
        pattern = compile_anchored(self.value)
        if self.op == "=~":
            return lambda actual: pattern.fullmatch(actual) is not None
        return lambda actual: pattern.fullmatch(actual) is None


@dataclass(frozen=True)
class Selector:
    """A parsed series selector; ``matches`` is the hot-path predicate (compiled once)."""

    text: str
    matchers: tuple[Matcher, ...]

    def __post_init__(self) -> None:
        compiled = tuple((m.name, m.compile()) for m in self.matchers)
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, labels: Labels) -> bool:
        values = dict(labels)
        compiled: tuple[tuple[str, Callable[[str], bool]], ...] = self.__dict__["_compiled"]
        return all(check(values.get(name, "")) for name, check in compiled)


class _Reader:
    """The selector text and a position in it; errors name the 1-based column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str, at: int | None = None) -> ValueError:
        pos = self.pos if at is None else at
        found = repr(self.text[pos]) if pos < len(self.text) else "the end"
        return ValueError(f"column {pos + 1}: expected {expected}, found {found}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip_space()
        return self.text.startswith(token, self.pos)

    def take(self, pattern: re.Pattern[str]) -> str | None:
        self.skip_space()
        match = pattern.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def string(self, expected: str) -> str:
        """A PromQL string literal: Go escapes in "…" and '…', raw in `…`."""
        self.skip_space()
        start = self.pos
        if start >= len(self.text) or self.text[start] not in "\"'`":
            raise self.fail(expected)
        quote = self.text[start]
        out: list[str] = []
        pos = start + 1
        while True:
            if pos >= len(self.text):
                raise ValueError(f"column {start + 1}: string not terminated")
            char = self.text[pos]
            if char == quote:
                self.pos = pos + 1
                return "".join(out)
            if char == "\n" and quote != "`":
                raise ValueError(f"column {pos + 1}: newline inside a string")
            if char != "\\" or quote == "`":
                out.append(char)
                pos += 1
                continue
            pos = self._escape(pos, quote, out)

    def _escape(self, pos: int, quote: str, out: list[str]) -> int:
        code = self.text[pos + 1 : pos + 2]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            return pos + 2
        if code == quote:
            out.append(quote)
            return pos + 2
        if code in _HEX_ESCAPES:
            digits = self.text[pos + 2 : pos + 2 + _HEX_ESCAPES[code]]
            if len(digits) == _HEX_ESCAPES[code] and all(
                c in "0123456789abcdefABCDEF" for c in digits
            ):
                out.append(chr(int(digits, 16)))
                return pos + 2 + len(digits)
        elif code and code in "01234567":
            digits = self.text[pos + 1 : pos + 4]
            if len(digits) == 3 and all(c in "01234567" for c in digits) and int(digits, 8) < 256:
                out.append(chr(int(digits, 8)))
                return pos + 4
        raise ValueError(
            f"column {pos + 1}: unknown escape sequence \\{code} (a regex's backslash is"
            f" written \\\\{code} inside quotes, or quote the regex with backticks)"
        )


def _matcher(reader: _Reader) -> Matcher:
    reader.skip_space()
    if reader.peek('"') or reader.peek("'") or reader.peek("`"):
        name_or_metric = reader.string("a label name")
        if not any(reader.peek(op) for op in _OPERATORS):
            return Matcher(METRIC_NAME_LABEL, "=", name_or_metric)  # {"utf8.name"}, PromQL 3
        name = name_or_metric
    else:
        taken = reader.take(_LABEL_NAME)
        if taken is None:
            raise reader.fail("a label name")
        name = taken
    op = next((op for op in _OPERATORS if reader.peek(op)), None)
    if op is None:
        raise reader.fail(f"a matcher operator (=, !=, =~, !~) after {name}")
    reader.pos += len(op)
    value_at = reader.pos
    value = reader.string(f"a string after {name}{op}")
    if op in ("=~", "!~"):
        try:
            compile_anchored(value, standalone=True)
        except ValueError as exc:
            raise ValueError(f"column {value_at + 1}: {exc}") from None
    return Matcher(name, op, value)


def parse_selector(text: str) -> Selector:
    """Parse ``text``; ValueError naming the column and what was expected there."""
    try:
        return _parse(text)
    except ValueError as exc:
        raise ValueError(f"not a valid series selector: {exc}") from None


def _parse(text: str) -> Selector:
    reader = _Reader(text)
    matchers: list[Matcher] = []
    name = reader.take(_METRIC_NAME)
    if name is not None:
        matchers.append(Matcher(METRIC_NAME_LABEL, "=", name))
    if reader.peek("{"):
        reader.pos += 1
        while not reader.peek("}"):
            matcher = _matcher(reader)
            if matcher.name == METRIC_NAME_LABEL and name is not None and matcher.op == "=":
                raise ValueError(
                    f"metric name must not be set twice: {name!r} or {matcher.value!r}"
                )
            if matcher not in matchers:
                matchers.append(matcher)
            if reader.peek(","):
                reader.pos += 1
            elif not reader.peek("}"):
                raise reader.fail("',' or '}'")
        reader.pos += 1
    elif name is None:
        raise reader.fail('a metric name or {, as in up{job="x"}')
    reader.skip_space()
    if reader.pos < len(text):
        raise reader.fail(
            "the end of the selector (ranges, offset, @, operators and functions have no"
            " meaning here)"
        )
    if not any(not matcher.compile()("") for matcher in matchers):
        raise ValueError(
            "vector selector must contain at least one non-empty matcher (one that does not"
            " match the empty string)"
        )
    return Selector(text, tuple(matchers))
