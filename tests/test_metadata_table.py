"""The enrichment table: documents in, an immutable key → labels map and its rejections out."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from enrichproxy.config.schema import EnrichRule, MetadataConfig
from enrichproxy.metadata.table import (
    DUPLICATE_KEY,
    EMPTY_TABLE,
    INVALID_KEY,
    INVALID_VALUE,
    MISSING_KEY,
    MetadataTable,
    TableBuilder,
    build_table,
    changed_keys,
)
from enrichproxy.model import Labels

SPEC = MetadataConfig(key_field="pod", fields=("service", "team", "tier")).enrich_rules[0]


def build(*documents: Mapping[str, object], spec: EnrichRule = SPEC) -> MetadataTable:
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
    assert table.lookup(("checkout-6c8f9",)) == (
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )
    assert table.lookup(("payment-5b4c3",)) == (("service", "payment"),)
    assert table.lookup(("unknown",)) is None


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
    assert build({"pod": "a", "team": value}).lookup(("a",)) == (("team", label_value),)


@pytest.mark.parametrize("value", [None, ""])
def test_missing_null_or_empty_fields_add_no_label(value: object) -> None:
    result = build_table([{"pod": "a", "service": "s", "team": value}], SPEC, 1, 0.0)
    assert result.table.lookup(("a",)) == (("service", "s"),)
    assert result.rejections == []


@pytest.mark.parametrize("value", [["x"], {"name": "x"}, b"bytes"])
def test_non_scalar_fields_are_rejected_and_the_rest_used(value: object) -> None:
    result = build_table([{"_id": "d1", "pod": "a", "service": "s", "team": value}], SPEC, 1, 0.0)
    assert result.table.lookup(("a",)) == (("service", "s"),)
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
    assert dict(result.table.entries) == {("b",): (("service", "t"),)}
    assert [r.reason for r in result.rejections] == [reason]
    assert "document 1" in result.rejections[0].detail


def test_numeric_keys_match_the_label_text() -> None:
    assert build({"pod": 42, "service": "s"}).lookup(("42",)) == (("service", "s"),)


def test_later_duplicate_wins_and_is_reported() -> None:
    result = build_table(
        [{"pod": "a", "service": "old"}, {"pod": "b"}, {"pod": "a", "service": "new"}],
        SPEC,
        1,
        0.0,
    )
    assert result.table.lookup(("a",)) == (("service", "new"),)
    assert result.table.lookup(("b",)) == ()
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
    spec = MetadataConfig(key_field="host", fields=("rack",)).enrich_rules[0]
    table = build({"host": "h1", "rack": "r7", "service": "not copied"}, spec=spec)
    assert dict(table.entries) == {("h1",): (("rack", "r7"),)}


def test_empty_table() -> None:
    assert EMPTY_TABLE.lookup(("a",)) is None
    assert dict(EMPTY_TABLE.entries) == {}
    assert build().entries == {}


# --- composite keys -----------------------------------------------------------------------------

COMPOSITE = EnrichRule(
    name="pods",
    database="metrics",
    collection="pods",
    key_labels=("namespace", "pod"),
    key_fields=("ns", "name"),
    fields=("service",),
)


def test_a_composite_key_is_the_key_fields_in_the_rules_order() -> None:
    result = build_table(
        [
            {"_id": 1, "name": "api-1", "ns": "shop", "service": "checkout"},
            {"_id": 2, "ns": "billing", "name": "api-1", "service": "invoices"},
            {"_id": 3, "ns": 7, "name": True, "service": "odd"},
        ],
        COMPOSITE,
        1,
        0.0,
    )
    assert result.rejections == []
    assert dict(result.table.entries) == {
        ("shop", "api-1"): (("service", "checkout"),),
        ("billing", "api-1"): (("service", "invoices"),),
        ("7", "true"): (("service", "odd"),),
    }
    assert result.table.lookup(("api-1", "shop")) is None
    assert result.table.lookup(("shop",)) is None


@pytest.mark.parametrize(
    ("document", "reason", "detail"),
    [
        ({"_id": 1, "ns": "shop"}, MISSING_KEY, "document 1: no 'name'"),
        ({"_id": 1, "name": "api-1"}, MISSING_KEY, "document 1: no 'ns'"),
        ({"_id": 1, "ns": "shop", "name": None}, MISSING_KEY, "document 1: no 'name'"),
        ({"_id": 1, "ns": "shop", "name": ""}, INVALID_KEY, "document 1: 'name' is not"),
        ({"_id": 1, "ns": ["shop"], "name": "a"}, INVALID_KEY, "document 1: 'ns' is not"),
    ],
)
def test_a_composite_key_needs_every_field(
    document: Mapping[str, object], reason: str, detail: str
) -> None:
    result = build_table([document], COMPOSITE, 1, 0.0)
    assert dict(result.table.entries) == {}
    assert [r.reason for r in result.rejections] == [reason]
    assert result.rejections[0].detail.startswith(detail)


# --- TableBuilder: documents by _id, changed one at a time --------------------------------------


def entries(builder: TableBuilder) -> dict[tuple[str, ...], Labels]:
    return dict(builder.build(1, 0.0).table.entries)


def test_upsert_replaces_the_document_with_the_same_id() -> None:
    builder = TableBuilder(SPEC)
    builder.replace_all([{"_id": 1, "pod": "a", "service": "s"}, {"_id": 2, "pod": "b"}])
    assert builder.upsert({"_id": 1, "pod": "a", "service": "t", "team": "web"}) == []
    assert entries(builder) == {("a",): (("service", "t"), ("team", "web")), ("b",): ()}
    # A new key for the same document: the old key is gone.
    builder.upsert({"_id": 1, "pod": "c", "service": "t"})
    assert entries(builder) == {("b",): (), ("c",): (("service", "t"),)}
    assert len(builder) == 2


def test_an_upsert_without_a_usable_key_removes_the_document() -> None:
    builder = TableBuilder(SPEC)
    builder.upsert({"_id": 1, "pod": "a", "service": "s"})
    rejections = builder.upsert({"_id": 1, "service": "s"})
    assert [r.reason for r in rejections] == [MISSING_KEY]
    assert entries(builder) == {}
    assert len(builder) == 0


def test_delete_removes_by_id() -> None:
    builder = TableBuilder(SPEC)
    builder.replace_all([{"_id": "x", "pod": "a", "service": "s"}, {"_id": "y", "pod": "b"}])
    assert builder.delete("x")
    assert not builder.delete("x")
    assert not builder.delete("never-there")
    assert entries(builder) == {("b",): ()}


def test_the_later_of_two_documents_with_one_key_wins_until_it_is_deleted() -> None:
    builder = TableBuilder(SPEC)
    builder.upsert({"_id": 1, "pod": "a", "service": "old"})
    builder.upsert({"_id": 2, "pod": "a", "service": "new"})
    build = builder.build(1, 0.0)
    assert build.table.lookup(("a",)) == (("service", "new"),)
    assert build.rejection_counts() == {DUPLICATE_KEY: 1}
    # Writing the earlier one again makes it the later one.
    builder.upsert({"_id": 1, "pod": "a", "service": "old again"})
    assert entries(builder) == {("a",): (("service", "old again"),)}
    builder.upsert({"_id": 2, "pod": "a", "service": "new"})
    assert entries(builder) == {("a",): (("service", "new"),)}
    # Deleting the winner brings the other document's labels back.
    assert builder.delete(2)
    build = builder.build(2, 0.0)
    assert dict(build.table.entries) == {("a",): (("service", "old again"),)}
    assert build.rejections == []


def test_replace_all_forgets_what_was_there() -> None:
    builder = TableBuilder(SPEC)
    builder.replace_all([{"_id": 1, "pod": "a"}, {"_id": 2, "pod": "b"}])
    assert builder.replace_all([{"_id": 3, "pod": "c"}, {"_id": 4, "team": "x"}]) != []
    assert entries(builder) == {("c",): ()}
    assert not builder.delete(1)


def test_documents_without_an_id_never_replace_each_other() -> None:
    builder = TableBuilder(SPEC)
    builder.upsert({"pod": "a", "service": "s"})
    builder.upsert({"pod": "b", "service": "t"})
    assert entries(builder) == {("a",): (("service", "s"),), ("b",): (("service", "t"),)}


def test_an_embedded_document_or_array_can_be_the_id() -> None:
    """MongoDB allows ``_id: {ns: ..., pod: ...}``; pymongo decodes it to an unhashable dict."""
    builder = TableBuilder(COMPOSITE)
    first = {"ns": "shop", "name": "api-1"}
    builder.upsert({"_id": first, "ns": "shop", "name": "api-1", "service": "checkout"})
    builder.upsert({"_id": {"ns": "shop", "name": "api-2"}, "ns": "shop", "name": "api-2"})
    builder.upsert({"_id": [1, {"a": [2]}], "ns": "x", "name": "y"})
    builder.upsert({"_id": dict(first), "ns": "shop", "name": "api-1", "service": "payment"})
    assert entries(builder) == {
        ("shop", "api-1"): (("service", "payment"),),
        ("shop", "api-2"): (),
        ("x", "y"): (),
    }
    assert builder.delete({"ns": "shop", "name": "api-2"})
    assert builder.delete([1, {"a": [2]}])
    # The same fields in another order are another _id to MongoDB.
    assert not builder.delete({"name": "api-1", "ns": "shop"})
    assert entries(builder) == {("shop", "api-1"): (("service", "payment"),)}


# --- changed_keys -------------------------------------------------------------------------------


def test_changed_keys_are_the_added_removed_and_changed_ones() -> None:
    old = MetadataTable({("a",): (("service", "s"),), ("b",): (), ("c",): (("team", "t"),)})
    new = MetadataTable(
        {("a",): (("service", "s"),), ("b",): (("team", "x"),), ("d",): ()}, version=2
    )
    assert changed_keys(old, new) == {("b",), ("c",), ("d",)}
    assert changed_keys(new, old) == {("b",), ("c",), ("d",)}
    assert changed_keys(old, MetadataTable(dict(old.entries), version=9, loaded_at=5.0)) == set()
    assert changed_keys(EMPTY_TABLE, old) == {("a",), ("b",), ("c",)}
