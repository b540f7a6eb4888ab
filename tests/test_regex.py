"""RE2 as Prometheus has it: a table of regexes and selectors, each accepted or refused as
``promtool`` (Prometheus 2.42) accepts or refuses it, and matched fully anchored."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from realparts import find_promtool, write_config

from enrichproxy.config.regex import compile_anchored
from enrichproxy.config.selector import parse_selector

REGEXES = [
    "[[:alpha:]]+",
    r"\pL+",
    r"\p{Greek}+",
    r"\PL",
    "[[:word:]]",
    "[[:^digit:]]",
    r"\Qa.b\E",
    "(?i)x",
    "(?U)a+",
    "(?P<n>a)",
    r"\x{10FFFF}",
    r"\z",
    r"\v",
    "a{1000}",
    "a)|(b",  # valid once wrapped: relabelling accepts it
    # refused by Go's regexp
    "(?<n>x)",
    r"\C",
    r"\Z",
    "a++",
    "(?=x)",
    "(?P=n)",
    r"\p{Foo}",
    "[[:foo:]]",
    r"\8",
    r"\1",
    r"\e",
    "a{1001}",
    "(",
    "x**",
]
SELECTORS = [
    '{tier=~"[[:alpha:]]+"}',
    '{tier=~"\\\\pL+"}',
    "{tier=~`\\pL+`}",
    '{tier=~"\\pL+"}',  # \p is no string escape in PromQL
    '{tier=~"\\\\p{Greek}"}',
    '{tier=~"\\\\Qa.b\\\\E"}',
    '{tier=~"(?<n>x)"}',
    '{tier=~"\\\\C"}',
    '{tier=~"a)|(b"}',  # a selector's regex must stand alone
    '{tier!~"[[:^digit:]]"}',
    "{tier='x\\n'}",
    '{tier="\\x41\\u00e9\\101"}',
    'up{job="a",}',
    '{job="a"',
    "{}",
    '{job!="a"}',
    'up{__name__="x"}',
]


def _promtool(tmp_path: Path, command: str, config: Mapping[str, Any]) -> bool:
    path = write_config(tmp_path / "file.yml", config)
    completed = subprocess.run(
        [find_promtool(), "check", command, str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return completed.returncode == 0


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_accepted_as_promtool_accepts_it(tmp_path: Path, regex: str) -> None:
    relabel = {"source_labels": ["a"], "regex": regex, "action": "keep"}
    expected = _promtool(
        tmp_path,
        "config",
        {"remote_write": [{"url": "http://127.0.0.1:1/", "write_relabel_configs": [relabel]}]},
    )
    try:
        compile_anchored(regex)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == expected


@pytest.mark.parametrize("selector", SELECTORS)
def test_selector_accepted_as_promtool_accepts_it(tmp_path: Path, selector: str) -> None:
    rules = {"groups": [{"name": "g", "rules": [{"record": "r", "expr": selector}]}]}
    expected = _promtool(tmp_path, "rules", rules)
    try:
        parse_selector(selector)
        accepted = True
    except ValueError as exc:
        accepted = False
        assert "column" in str(exc) or "non-empty" in str(exc) or "twice" in str(exc)
    assert accepted == expected


@pytest.mark.parametrize(
    ("regex", "matching", "not_matching"),
    [
        ("[[:alpha:]]+", ["critical", "Tier"], ["tier1", ""]),
        (r"\pL+", ["ζeta", "checkout"], ["a-b"]),
        (r"\p{Greek}+", ["αβγ"], ["abc"]),
        ("check", ["check"], ["checkout", "precheck"]),  # fully anchored
        ("a|b", ["a", "b"], ["ab"]),  # the anchors bind the whole alternation
        ("1.0.*", ["1.0\nrc1"], []),  # . matches a newline, as in Prometheus 3
    ],
)
def test_matching_is_fully_anchored_re2(
    regex: str, matching: list[str], not_matching: list[str]
) -> None:
    pattern = compile_anchored(regex)
    for text in matching:
        assert pattern.fullmatch(text) is not None, text
    for text in not_matching:
        assert pattern.fullmatch(text) is None, text
    selector = parse_selector(f"{{x=~`{regex}`}}") if matching and "\n" not in regex else None
    if selector is not None:
        assert selector.matches((("x", matching[0]),))
