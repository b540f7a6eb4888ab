"""``write_relabel_configs`` entries, validated as Prometheus validates them.

A block pasted from a Prometheus configuration must mean the same here: the same keys and
defaults, actions spelled in any case, and the same combinations refused (each rule below is
Prometheus' own, checked against ``promtool check config`` in tests/test_relabel.py). Applying
the rules to output series is forward/relabel.py's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enrichproxy.config.regex import Pattern, compile_anchored

ACTIONS = (
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
)
KEYS = frozenset(
    {"source_labels", "separator", "regex", "modulus", "target_label", "replacement", "action"}
)
DEFAULT_SEPARATOR = ";"
DEFAULT_REGEX = "(.*)"
DEFAULT_REPLACEMENT = "$1"

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A target that may hold ${1}-style references (Prometheus' relabelTarget).
_TARGET = re.compile(r"(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+")


@dataclass(frozen=True)
class RelabelConfig:
    """One relabelling step; ``pattern`` is ``regex`` compiled (fully anchored, RE2)."""

    action: str = "replace"
    source_labels: tuple[str, ...] = ()
    separator: str = DEFAULT_SEPARATOR
    regex: str = DEFAULT_REGEX
    target_label: str = ""
    replacement: str = DEFAULT_REPLACEMENT
    modulus: int = 0
    pattern: Pattern = field(
        default_factory=lambda: compile_anchored(DEFAULT_REGEX), compare=False, repr=False
    )


class RelabelProblems(ValueError):
    """Every problem of one entry, as (key or "", message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(message for _key, message in problems))
        self.problems = problems


def _text(value: Any, key: str, problems: list[tuple[str, str]]) -> str | None:
    # YAML reads `regex: 1` or `replacement: 10` as numbers; Prometheus takes them as text.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append((key, f"must be a string, got {type(value).__name__}"))
        return None
    return str(value)


def parse_relabel_config(data: Mapping[str, Any]) -> RelabelConfig:
    """One entry whose keys are known to be in ``KEYS``; RelabelProblems lists what is wrong."""
    problems: list[tuple[str, str]] = []
    action = str(data.get("action") or "replace").lower()
    if action not in ACTIONS:
        problems.append(("action", f"unknown relabel action {action!r} ({', '.join(ACTIONS)})"))
    source_labels: tuple[str, ...] = ()
    raw_sources = data.get("source_labels")
    if raw_sources is not None:
        if not isinstance(raw_sources, list):
            problems.append(("source_labels", "must be a list of label names"))
        else:
            for index, name in enumerate(raw_sources):
                if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
                    problems.append(
                        (f"source_labels[{index}]", f"{name!r} is not a valid label name")
                    )
            source_labels = tuple(str(name) for name in raw_sources)
    given = {key for key in KEYS if data.get(key) is not None}
    separator = DEFAULT_SEPARATOR
    if "separator" in given:
        separator = _text(data["separator"], "separator", problems) or ""
    regex = DEFAULT_REGEX
    if "regex" in given:
        regex = _text(data["regex"], "regex", problems) or ""
    target_label = ""
    if "target_label" in given:
        target_label = _text(data["target_label"], "target_label", problems) or ""
    replacement = DEFAULT_REPLACEMENT
    if "replacement" in given:
        replacement = _text(data["replacement"], "replacement", problems) or ""
    modulus = 0
    if "modulus" in given:
        value = data["modulus"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(("modulus", f"must be a non-negative integer, got {value!r}"))
        else:
            modulus = value
    pattern = None
    try:
        pattern = compile_anchored(regex)
    except ValueError as exc:
        problems.append(("regex", str(exc)))

    needs_target = ("replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal")
    if action in needs_target and not target_label:
        problems.append(("target_label", f"is required for the {action} action"))
    elif action in ("replace", "lowercase", "uppercase") and not _TARGET.fullmatch(target_label):
        problems.append(("target_label", f"{target_label!r} is not valid for {action}"))
    if action == "hashmod":
        if target_label and not _LABEL_NAME.fullmatch(target_label):
            problems.append(("target_label", f"{target_label!r} is not valid for hashmod"))
        if modulus == 0:
            problems.append(("modulus", "is required (non-zero) for the hashmod action"))
    if action in ("lowercase", "uppercase", "keepequal", "dropequal") and (
        replacement != DEFAULT_REPLACEMENT
    ):
        problems.append(("replacement", f"cannot be set for the {action} action"))
    if action == "labelmap" and not _TARGET.fullmatch(replacement):
        problems.append(("replacement", f"{replacement!r} is not valid for labelmap"))
    if action in ("keepequal", "dropequal") and (
        regex != DEFAULT_REGEX or modulus or separator != DEFAULT_SEPARATOR
    ):
        problems.append(("", f"{action} takes only source_labels and target_label"))
    if action in ("labeldrop", "labelkeep") and (
        source_labels
        or target_label
        or modulus
        or separator != DEFAULT_SEPARATOR
        or replacement != DEFAULT_REPLACEMENT
    ):
        problems.append(("", f"{action} takes only regex"))
    if problems or pattern is None:
        raise RelabelProblems(problems)
    return RelabelConfig(
        action=action,
        source_labels=source_labels,
        separator=separator,
        regex=regex,
        target_label=target_label,
        replacement=replacement,
        modulus=modulus,
        pattern=pattern,
    )
