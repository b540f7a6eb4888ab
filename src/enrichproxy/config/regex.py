"""Regular expressions as Prometheus has them: RE2 syntax, fully anchored.

Every regex a user writes (a selector's ``=~``/``!~``, a relabelling ``regex``) is compiled
here, so one expression means the same thing everywhere in enrichproxy and in Prometheus:

- The engine is RE2 (PyPI ``google-re2``), the library Go's ``regexp`` follows: POSIX classes
  (``[[:alpha:]]``), Unicode classes (``\\pL``, ``\\p{Greek}``), no backreferences or
  lookaround, linear time whatever the input.
- The expression is wrapped as ``^(?s:EXPR)$`` before it is compiled, textually, as Prometheus
  does (``(?s:`` since Prometheus 3, so ``.`` matches a newline too; 2.x wrapped with ``(?:``,
  which accepts and refuses exactly the same expressions).
- RE2 accepts two things Go's parser refuses (checked against promtool 2.42 in
  tests/test_regex.py): ``\\C`` (any byte) and the ``(?<name>…)`` group spelling; both are
  refused here too, so a configuration Prometheus refuses is never accepted.
"""

from __future__ import annotations

from typing import Protocol

import re2

_OPTIONS = re2.Options()
# RE2 would also print every syntax error to stderr through absl; the error is raised anyway.
_OPTIONS.log_errors = False


class Match(Protocol):
    """What a match offers: the spans of the whole match and of each group (-1 when unset)."""

    def span(self, group: int = 0) -> tuple[int, int]: ...


class Pattern(Protocol):
    """A compiled expression, as the ``re2`` module returns it."""

    @property
    def groups(self) -> int: ...

    @property
    def groupindex(self) -> dict[str, int]: ...

    def fullmatch(self, text: str) -> Match | None: ...


def _go_refusals(expression: str) -> str | None:
    """Why Go's regexp parser refuses ``expression`` where RE2 accepts it, or None.

    A scan that knows just enough syntax to skip escapes, ``\\Q…\\E`` literals and character
    classes, so ``[(?<]`` or ``\\\\C`` are not mistaken for the constructs.
    """
    index, length = 0, len(expression)
    in_class = False
    while index < length:
        char = expression[index]
        if char == "\\" and index + 1 < length:
            escaped = expression[index + 1]
            if escaped == "C":
                return "invalid escape sequence: `\\C`"
            if escaped == "Q" and not in_class:
                end = expression.find("\\E", index + 2)
                index = length if end < 0 else end + 2
                continue
            index += 2
            continue
        if in_class:
            if expression.startswith("[:", index):
                close = expression.find(":]", index + 2)
                index = index + 2 if close < 0 else close + 2
                continue
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            index += 1
            # A "]" right after "[" or "[^" is a literal, not the end of the class.
            if expression.startswith("^", index):
                index += 1
            if expression.startswith("]", index):
                index += 1
            continue
        elif expression.startswith("(?<", index) and not expression.startswith(
            ("(?<=", "(?<!"), index
        ):
            return "invalid or unsupported Perl syntax: `(?<`"
        index += 1
    return None


def compile_anchored(expression: str, *, standalone: bool = False) -> Pattern:
    """``expression`` compiled as Prometheus compiles it; ValueError with RE2's reason if
    Prometheus would refuse it.

    ``standalone``: the expression must also be a regex by itself, not only once wrapped.
    Prometheus' selectors check that (``a)|(b`` is refused there); its relabelling does not.
    """
    refusal = _go_refusals(expression)
    if refusal is None:
        try:
            if standalone:
                re2.compile(expression, _OPTIONS)
            pattern: Pattern = re2.compile(f"^(?s:{expression})$", _OPTIONS)
            return pattern
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            refusal = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    raise ValueError(f"invalid regex {expression!r}: {refusal}")
