"""The enrichment table: documents in, an immutable key → labels map and its rejections out."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from enrichproxy.config import MetadataConfig
from enrichproxy.metadata_table import (
    DUPLICATE_KEY,
    EMPTY_TABLE,
    INVALID_KEY,
    INVALID_VALUE,
    MISSING_KEY,
    MetadataTable,
    build_table,
)

SPEC = MetadataConfig(key_field="pod", fields=("service", "team", "tier"))


def build(*documents: Mapping[str, object], spec: MetadataConfig = SPEC) -> MetadataTable:
    return build_table(documents, spec, version=3, loaded_at=12.5).table


def test_documents_become_sorted_labels() -> None:
    build_result = build_table(
        [
            {"_id": 1, "pod": "checkout-6c8f9", "tier": "1", "service": "checkout", "team": "web"},
            {"_id": 2, "pod": "payment-5b4c3", "service": "payment", "extra": "ignored"},
        ],
        SPEC,
        version=3,
        loaded_at=12.5,
    )
    table = build_result.table
    assert build_result.rejections == []
    assert (table.version, table.loaded_at) == (3, 12.5)
    assert table.lookup("checkout-6c8f9") == (
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )
    assert table.lookup("payment-5b4c3") == (("service", "payment"),)
    assert table.lookup("unknown") is None


@pytest.mark.parametrize(
    ("value", "label_value"),
    [
        ("text", "text"),
        (7, "7"),
        (-7, "-7"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (True, "true"),
        (False, "false"),
        ("日本", "日本"),
    ],
)
def test_scalar_fields_are_stringified(value: object, label_value: str) -> None:
    assert build({"pod": "a", "team": value}).lookup("a") == (("team", label_value),)


@pytest.mark.parametrize("value", [None, ""])
def test_missing_null_or_empty_fields_add_no_label(value: object) -> None:
    result = build_table([{"pod": "a", "service": "s", "team": value}], SPEC, 1, 0.0)
    assert result.table.lookup("a") == (("service", "s"),)
    assert result.rejections == []


@pytest.mark.parametrize("value", [["x"], {"name": "x"}, b"bytes"])
def test_non_scalar_fields_are_rejected_and_the_rest_used(value: object) -> None:
    result = build_table([{"_id": "d1", "pod": "a", "service": "s", "team": value}], SPEC, 1, 0.0)
    assert result.table.lookup("a") == (("service", "s"),)
    assert [(r.reason, r.detail) for r in result.rejections] == [
        (INVALID_VALUE, "document d1: field 'team' is not a scalar")
    ]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"_id": 1, "service": "s"}, MISSING_KEY),
        ({"_id": 1, "pod": None, "service": "s"}, MISSING_KEY),
        ({"_id": 1, "pod": ["a"], "service": "s"}, INVALID_KEY),
        ({"_id": 1, "pod": {"a": 1}, "service": "s"}, INVALID_KEY),
        ({"_id": 1, "pod": "", "service": "s"}, INVALID_KEY),
    ],
)
def test_documents_without_a_usable_key_are_skipped(
    document: Mapping[str, object], reason: str
) -> None:
    result = build_table([document, {"pod": "b", "service": "t"}], SPEC, 1, 0.0)
    assert dict(result.table.entries) == {"b": (("service", "t"),)}
    assert [r.reason for r in result.rejections] == [reason]
    assert "document 1" in result.rejections[0].detail


def test_numeric_keys_match_the_label_text() -> None:
    assert build({"pod": 42, "service": "s"}).lookup("42") == (("service", "s"),)


def test_later_duplicate_wins_and_is_reported() -> None:
    result = build_table(
        [{"pod": "a", "service": "old"}, {"pod": "b"}, {"pod": "a", "service": "new"}],
        SPEC,
        1,
        0.0,
    )
    assert result.table.lookup("a") == (("service", "new"),)
    assert result.table.lookup("b") == ()
    assert result.rejection_counts() == {DUPLICATE_KEY: 1}


def test_rejection_counts_by_reason() -> None:
    result = build_table(
        [{"service": "s"}, {"pod": []}, {"pod": "a", "team": []}, {"pod": "b", "tier": {}}],
        SPEC,
        1,
        0.0,
    )
    assert result.rejection_counts() == {MISSING_KEY: 1, INVALID_KEY: 1, INVALID_VALUE: 2}


def test_key_field_and_fields_come_from_the_spec() -> None:
    spec = MetadataConfig(key_field="host", fields=("rack",))
    table = build({"host": "h1", "rack": "r7", "service": "not copied"}, spec=spec)
    assert dict(table.entries) == {"h1": (("rack", "r7"),)}


def test_empty_table() -> None:
    assert EMPTY_TABLE.lookup("a") is None
    assert dict(EMPTY_TABLE.entries) == {}
    assert build().entries == {}
