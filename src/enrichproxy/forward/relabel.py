"""``write_relabel_configs`` applied to the series a destination receives.

Semantics are Prometheus' (its ``relabel`` package as of 2.42): each step sees the labels the
steps before it left; ``keep``/``drop`` (and ``keepequal``/``dropequal``) end the series; a
label set with no labels left is dropped; a label whose value becomes empty is removed.
Replacement templates expand as Go's ``Regexp.Expand`` does (``$1``, ``${1}``, ``$name``,
``$$``; an unknown or unset group expands to nothing).

This runs after aggregation, on output series: relabelling is the destination's business, and
the views' output (what ``explain`` and the self-metrics show) stays the same for every
destination.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from enrichproxy.config.regex import Match, Pattern
from enrichproxy.config.relabel import RelabelConfig
from enrichproxy.model import Labels
from enrichproxy.wire.codec import decode_labels, encode_labels

# Output series a destination remembers the relabelled form of. Views cap their output series
# (max_series), so this is a guard against an unbounded cache, not a working-set size.
MAX_CACHED_SERIES = 200_000


def _group_name(template: str, start: int) -> tuple[str, int] | None:
    """The group name after a "$" at ``start`` and where the rest begins (Go's ``extract``)."""
    brace = start < len(template) and template[start] == "{"
    index = start + 1 if brace else start
    end = index
    while end < len(template) and (template[end].isalnum() or template[end] == "_"):
        end += 1
    if end == index:
        return None
    name = template[index:end]
    if brace:
        if end >= len(template) or template[end] != "}":
            return None
        end += 1
    return name, end


def _group_number(name: str) -> int | None:
    if not name.isascii() or not name.isdigit() or (len(name) > 1 and name[0] == "0"):
        return None
    return int(name) if len(name) <= 8 else None


def expand(template: str, pattern: Pattern, text: str, match: Match) -> str:
    """``template`` with ``$1``, ``${name}`` … replaced by what the groups of ``match`` hold."""
    out: list[str] = []
    index = 0
    while True:
        dollar = template.find("$", index)
        if dollar < 0:
            out.append(template[index:])
            return "".join(out)
        out.append(template[index:dollar])
        index = dollar + 1
        if template.startswith("$", index):
            out.append("$")
            index += 1
            continue
        found = _group_name(template, index)
        if found is None:
            out.append("$")  # malformed: the "$" is literal text
            continue
        name, index = found
        number = _group_number(name)
        if number is None:
            number = pattern.groupindex.get(name)
        if number is not None and number <= pattern.groups:
            start, end = match.span(number)
            if start >= 0:
                out.append(text[start:end])


def _hashmod(value: str, modulus: int) -> int:
    # Prometheus takes the low 8 bytes of the MD5 sum, big-endian.
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def _step(labels: dict[str, str], config: RelabelConfig) -> bool:
    """Apply one step to ``labels`` in place; False when the series is dropped."""
    value = config.separator.join(labels.get(name, "") for name in config.source_labels)
    action, pattern = config.action, config.pattern
    if action == "drop":
        return pattern.fullmatch(value) is None
    if action == "keep":
        return pattern.fullmatch(value) is not None
    if action == "dropequal":
        return labels.get(config.target_label, "") != value
    if action == "keepequal":
        return labels.get(config.target_label, "") == value
    if action == "replace":
        match = pattern.fullmatch(value)
        if match is None:
            return True
        target = expand(config.target_label, pattern, value, match)
        if not _valid_name(target):
            labels.pop(config.target_label, None)
            return True
        result = expand(config.replacement, pattern, value, match)
        if result:
            labels[target] = result
        else:
            labels.pop(target, None)
    elif action in ("lowercase", "uppercase"):
        labels[config.target_label] = value.lower() if action == "lowercase" else value.upper()
    elif action == "hashmod":
        labels[config.target_label] = str(_hashmod(value, config.modulus))
    elif action == "labelmap":
        for name, label_value in sorted(labels.items()):
            match = pattern.fullmatch(name)
            if match is not None:
                labels[expand(config.replacement, pattern, name, match)] = label_value
    elif action == "labeldrop":
        for name in [name for name in labels if pattern.fullmatch(name) is not None]:
            del labels[name]
    elif action == "labelkeep":
        for name in [name for name in labels if pattern.fullmatch(name) is None]:
            del labels[name]
    return True


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and name.isascii()
        and not name[0].isdigit()
        and all(char.isalnum() or char == "_" for char in name)
    )


def relabel(labels: Labels, configs: Sequence[RelabelConfig]) -> Labels | None:
    """``labels`` after every step of ``configs``, or None when the series is dropped."""
    working = dict(labels)
    for config in configs:
        if not _step(working, config):
            return None
    result = tuple(sorted((name, value) for name, value in working.items() if value and name))
    return result or None


class Relabeler:
    """A destination's relabelling of encoded output series, remembered per series: the same
    few output series come back every window."""

    def __init__(self, configs: Sequence[RelabelConfig]) -> None:
        self._configs = tuple(configs)
        self._cache: dict[bytes, bytes | None] = {}

    def __call__(self, label_bytes: bytes) -> bytes | None:
        """The relabelled series' encoded labels; None when it is dropped."""
        try:
            return self._cache[label_bytes]
        except KeyError:
            pass
        result = relabel(decode_labels(label_bytes), self._configs)
        encoded = None if result is None else encode_labels(result)
        if len(self._cache) >= MAX_CACHED_SERIES:
            self._cache.clear()
        self._cache[label_bytes] = encoded
        return encoded
