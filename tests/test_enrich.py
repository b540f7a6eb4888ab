"""Joining a series with the metadata table."""

from __future__ import annotations

import pytest

from enrichproxy.config import MetadataConfig
from enrichproxy.enrich import Enriched, Lookup, enrich
from enrichproxy.metadata_table import MetadataTable
from enrichproxy.model import Labels

TABLE = MetadataTable(
    entries={
        "checkout-6c8f9": (("service", "checkout"), ("team", "web"), ("tier", "1")),
        "bare": (),
    }
)
SPEC = MetadataConfig()
SERIES: Labels = (
    ("__name__", "order_total"),
    ("endpoint", "/orders"),
    ("pod", "checkout-6c8f9"),
)


def test_hit_adds_the_labels_and_drops_the_key() -> None:
    assert enrich(SERIES, TABLE, SPEC) == Enriched(
        (
            ("__name__", "order_total"),
            ("endpoint", "/orders"),
            ("service", "checkout"),
            ("team", "web"),
            ("tier", "1"),
        ),
        Lookup.HIT,
        0,
    )


def test_hit_keeps_the_key_when_asked() -> None:
    enriched = enrich(SERIES, TABLE, MetadataConfig(drop_key_label=False))
    assert enriched.lookup == Lookup.HIT
    assert enriched.labels is not None
    assert ("pod", "checkout-6c8f9") in enriched.labels
    assert [name for name, _ in enriched.labels] == sorted(name for name, _ in enriched.labels)


def test_hit_on_a_document_without_fields_still_drops_the_key() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "bare"))
    assert enrich(labels, TABLE, SPEC) == Enriched((("__name__", "x"),), Lookup.HIT, 0)


@pytest.mark.parametrize(
    ("labels", "lookup"),
    [
        ((("__name__", "x"), ("pod", "gone-123")), Lookup.MISS),
        ((("__name__", "up"), ("job", "checkout")), Lookup.NO_KEY),
    ],
)
def test_miss_and_no_key(labels: Labels, lookup: Lookup) -> None:
    assert enrich(labels, TABLE, SPEC) == Enriched(labels, lookup, 0)
    dropping = MetadataConfig(on_missing="drop")
    assert enrich(labels, TABLE, dropping) == Enriched(None, lookup, 0)


def test_key_label_comes_from_the_spec() -> None:
    spec = MetadataConfig(key_label="instance")
    labels: Labels = (("__name__", "x"), ("instance", "checkout-6c8f9"), ("pod", "other"))
    enriched = enrich(labels, TABLE, spec)
    assert enriched.lookup == Lookup.HIT
    assert enriched.labels == (
        ("__name__", "x"),
        ("pod", "other"),
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )


def test_conflicts_overwrite_by_default() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-6c8f9"), ("team", "ops"), ("tier", "1"))
    enriched = enrich(labels, TABLE, SPEC)
    assert enriched.conflicts == 1  # team differs; tier already has the table's value
    assert enriched.labels == (
        ("__name__", "x"),
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )


def test_conflicts_keep_the_series_value_when_asked() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-6c8f9"), ("team", "ops"))
    enriched = enrich(labels, TABLE, MetadataConfig(on_conflict="keep"))
    assert enriched.conflicts == 1
    assert enriched.labels == (
        ("__name__", "x"),
        ("service", "checkout"),
        ("team", "ops"),
        ("tier", "1"),
    )
