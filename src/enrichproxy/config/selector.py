"""PromQL series selectors (``{__name__=~"order_.*", job!="x"}``) compiled into predicates.

Parsing is promql-parser's (a maintained PromQL parser); matching follows PromQL: regexes are
anchored at both ends, ``.`` also matches a newline (Prometheus 3 compiles ``^(?s:re)$``), and a
missing label matches as the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import promql_parser

from enrichproxy.model import METRIC_NAME_LABEL, Labels

_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


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
        pattern = re.compile(self.value, re.DOTALL)
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


def parse_selector(text: str) -> Selector:
    """Parse ``text``; ValueError with the parser's reason if it is not a plain series selector."""
    try:
        expr = promql_parser.parse(text)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"not a valid series selector: {exc}") from None
    if not isinstance(expr, promql_parser.VectorSelector):
        raise ValueError('must be a series selector such as {job="x"}, not an expression')
    if expr.offset is not None or expr.at is not None:
        raise ValueError("offset and @ modifiers have no meaning here")
    matchers = []
    if expr.name:
        matchers.append(Matcher(METRIC_NAME_LABEL, "=", expr.name))
    for raw in expr.matchers.matchers:
        op = _OPS.get(str(raw.op))
        if op is None:
            raise ValueError(f"unsupported matcher operator {raw.op}")
        matcher = Matcher(raw.name, op, raw.value)
        if op in ("=~", "!~"):
            try:
                re.compile(raw.value)
            except re.error as exc:
                raise ValueError(f"bad regex {raw.value!r}: {exc}") from None
        if matcher not in matchers:
            matchers.append(matcher)
    if expr.matchers.or_matchers:
        raise ValueError("'or' inside a selector is not supported")
    return Selector(text, tuple(matchers))
