"""Joining a series with the metadata tables, rule by rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from enrichproxy.config.schema import EnrichRule, MetadataConfig
from enrichproxy.engine.enrich import Enriched, Lookup, Step, enrich
from enrichproxy.metadata.table import MetadataTable
from enrichproxy.model import Labels

TABLE = MetadataTable(
    entries={
        ("checkout-6c8f9",): (("service", "checkout"), ("team", "web"), ("tier", "1")),
        ("bare",): (),
    }
)
SPEC = MetadataConfig()
(RULE,) = SPEC.enrich_rules
SERIES: Labels = (
    ("__name__", "order_total"),
    ("endpoint", "/orders"),
    ("pod", "checkout-6c8f9"),
)


def enrich_one(
    labels: Labels, spec: MetadataConfig = SPEC, table: MetadataTable = TABLE
) -> Enriched:
    """``labels`` through the single rule of ``spec`` (the flat configuration form)."""
    return enrich(labels, [table], spec.enrich_rules, spec.on_conflict)


def lookups(enriched: Enriched) -> list[Lookup]:
    return [step.lookup for step in enriched.steps]


# --- one rule: the single-rule form of the configuration ----------------------------------------


def test_hit_adds_the_labels_and_drops_the_key() -> None:
    added = (("service", "checkout"), ("team", "web"), ("tier", "1"))
    assert enrich_one(SERIES) == Enriched(
        (
            ("__name__", "order_total"),
            ("endpoint", "/orders"),
            ("service", "checkout"),
            ("team", "web"),
            ("tier", "1"),
        ),
        (Step(RULE, Lookup.HIT, ("checkout-6c8f9",), added),),
        0,
    )


def test_hit_keeps_the_key_when_asked() -> None:
    enriched = enrich_one(SERIES, MetadataConfig(drop_key_label=False))
    assert lookups(enriched) == [Lookup.HIT]
    assert enriched.labels is not None
    assert ("pod", "checkout-6c8f9") in enriched.labels
    assert [name for name, _ in enriched.labels] == sorted(name for name, _ in enriched.labels)


def test_hit_on_a_document_without_fields_still_drops_the_key() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "bare"))
    assert enrich_one(labels) == Enriched(
        (("__name__", "x"),), (Step(RULE, Lookup.HIT, ("bare",), ()),), 0
    )


@pytest.mark.parametrize(
    ("labels", "lookup", "key"),
    [
        ((("__name__", "x"), ("pod", "gone-123")), Lookup.MISS, ("gone-123",)),
        ((("__name__", "up"), ("job", "checkout")), Lookup.NO_KEY, None),
        ((("__name__", "up"), ("pod", "")), Lookup.NO_KEY, None),
    ],
)
def test_miss_and_no_key(labels: Labels, lookup: Lookup, key: tuple[str, ...] | None) -> None:
    assert enrich_one(labels) == Enriched(labels, (Step(RULE, lookup, key, ()),), 0)
    dropping = MetadataConfig(on_missing="drop")
    (dropping_rule,) = dropping.enrich_rules
    assert enrich_one(labels, dropping) == Enriched(
        None, (Step(dropping_rule, lookup, key, ()),), 0
    )


def test_key_label_comes_from_the_spec() -> None:
    spec = MetadataConfig(key_label="instance")
    labels: Labels = (("__name__", "x"), ("instance", "checkout-6c8f9"), ("pod", "other"))
    enriched = enrich_one(labels, spec)
    assert lookups(enriched) == [Lookup.HIT]
    assert enriched.labels == (
        ("__name__", "x"),
        ("pod", "other"),
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )


def test_conflicts_overwrite_by_default() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-6c8f9"), ("team", "ops"), ("tier", "1"))
    enriched = enrich_one(labels)
    assert enriched.conflicts == 1  # team differs; tier already has the table's value
    assert enriched.labels == (
        ("__name__", "x"),
        ("service", "checkout"),
        ("team", "web"),
        ("tier", "1"),
    )


def test_conflicts_keep_the_series_value_when_asked() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-6c8f9"), ("team", "ops"))
    enriched = enrich_one(labels, MetadataConfig(on_conflict="keep"))
    assert enriched.conflicts == 1
    assert enriched.labels == (
        ("__name__", "x"),
        ("service", "checkout"),
        ("team", "ops"),
        ("tier", "1"),
    )


def test_a_series_without_a_hit_is_returned_as_it_came() -> None:
    labels: Labels = (("pod", "gone"), ("__name__", "x"))  # not sorted: untouched, not rebuilt
    assert enrich_one(labels).labels is labels


# --- composite keys -----------------------------------------------------------------------------

POD_IN_NAMESPACE = EnrichRule(
    name="pods",
    database="metrics",
    collection="pods",
    key_labels=("namespace", "pod"),
    key_fields=("ns", "pod_name"),
    fields=("service",),
)
COMPOSITE = MetadataTable(
    entries={
        ("shop", "api-1"): (("service", "checkout"),),
        ("billing", "api-1"): (("service", "invoices"),),
    }
)


@pytest.mark.parametrize(("namespace", "service"), [("shop", "checkout"), ("billing", "invoices")])
def test_a_composite_key_matches_every_label_of_it(namespace: str, service: str) -> None:
    labels: Labels = (("__name__", "x"), ("namespace", namespace), ("pod", "api-1"))
    enriched = enrich(labels, [COMPOSITE], [POD_IN_NAMESPACE])
    assert enriched == Enriched(
        (("__name__", "x"), ("service", service)),  # both key labels dropped
        (Step(POD_IN_NAMESPACE, Lookup.HIT, (namespace, "api-1"), (("service", service),)),),
        0,
    )


@pytest.mark.parametrize(
    ("labels", "lookup", "key"),
    [
        # Each value exists in the table, not this combination.
        ((("namespace", "shop"), ("pod", "api-2")), Lookup.MISS, ("shop", "api-2")),
        ((("namespace", "dev"), ("pod", "api-1")), Lookup.MISS, ("dev", "api-1")),
        # The labels in the other order are another key.
        ((("namespace", "api-1"), ("pod", "shop")), Lookup.MISS, ("api-1", "shop")),
        # One key label missing, or empty (which Prometheus treats as missing).
        ((("pod", "api-1"),), Lookup.NO_KEY, None),
        ((("namespace", "shop"),), Lookup.NO_KEY, None),
        ((("namespace", ""), ("pod", "api-1")), Lookup.NO_KEY, None),
    ],
)
def test_a_composite_key_misses_unless_all_of_it_matches(
    labels: Labels, lookup: Lookup, key: tuple[str, ...] | None
) -> None:
    enriched = enrich(labels, [COMPOSITE], [POD_IN_NAMESPACE])
    assert enriched == Enriched(labels, (Step(POD_IN_NAMESPACE, lookup, key, ()),), 0)


def test_a_composite_key_keeps_its_labels_when_asked() -> None:
    rule = replace(POD_IN_NAMESPACE, drop_key_labels=False)
    labels: Labels = (("namespace", "shop"), ("pod", "api-1"))
    assert enrich(labels, [COMPOSITE], [rule]).labels == (
        ("namespace", "shop"),
        ("pod", "api-1"),
        ("service", "checkout"),
    )


# --- chained rules ------------------------------------------------------------------------------

PODS = EnrichRule(
    name="pods",
    database="metrics",
    collection="pod_metadata",
    key_labels=("pod",),
    key_fields=("pod",),
    fields=("service", "team"),
)
SERVICES = EnrichRule(
    name="services",
    database="metrics",
    collection="service_owners",
    key_labels=("service",),
    key_fields=("service",),
    fields=("owner", "slack_channel"),
    drop_key_labels=False,
)
POD_TABLE = MetadataTable(
    entries={
        ("checkout-1",): (("service", "checkout"), ("team", "web")),
        ("orphan-1",): (("service", "orphan"), ("team", "none")),
    }
)
SERVICE_TABLE = MetadataTable(
    entries={("checkout",): (("owner", "alice"), ("slack_channel", "#checkout"))}
)


def test_the_second_rule_joins_on_a_label_the_first_added() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-1"))
    enriched = enrich(labels, [POD_TABLE, SERVICE_TABLE], [PODS, SERVICES])
    assert enriched.labels == (
        ("__name__", "x"),
        ("owner", "alice"),
        ("service", "checkout"),
        ("slack_channel", "#checkout"),
        ("team", "web"),
    )
    assert enriched.steps == (
        Step(PODS, Lookup.HIT, ("checkout-1",), (("service", "checkout"), ("team", "web"))),
        Step(
            SERVICES,
            Lookup.HIT,
            ("checkout",),
            (("owner", "alice"), ("slack_channel", "#checkout")),
        ),
    )
    assert enriched.conflicts == 0


def test_the_second_rule_drops_its_key_label_even_when_the_first_added_it() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "checkout-1"))
    rules = [PODS, replace(SERVICES, drop_key_labels=True)]
    assert enrich(labels, [POD_TABLE, SERVICE_TABLE], rules).labels == (
        ("__name__", "x"),
        ("owner", "alice"),
        ("slack_channel", "#checkout"),
        ("team", "web"),
    )


def test_the_second_rule_sees_no_key_when_the_first_missed() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "unknown"))
    enriched = enrich(labels, [POD_TABLE, SERVICE_TABLE], [PODS, SERVICES])
    assert enriched == Enriched(
        labels,
        (
            Step(PODS, Lookup.MISS, ("unknown",), ()),
            Step(SERVICES, Lookup.NO_KEY, None, ()),
        ),
        0,
    )


def test_the_second_rule_uses_a_key_label_the_series_had_when_the_first_missed() -> None:
    labels: Labels = (("__name__", "x"), ("pod", "unknown"), ("service", "checkout"))
    enriched = enrich(labels, [POD_TABLE, SERVICE_TABLE], [PODS, SERVICES])
    assert lookups(enriched) == [Lookup.MISS, Lookup.HIT]
    assert enriched.labels == (
        ("__name__", "x"),
        ("owner", "alice"),
        ("pod", "unknown"),
        ("service", "checkout"),
        ("slack_channel", "#checkout"),
    )


def test_on_missing_drop_in_the_second_rule_drops_after_the_first_hit() -> None:
    rules = [PODS, replace(SERVICES, on_missing="drop")]
    tables = [POD_TABLE, SERVICE_TABLE]
    enriched = enrich((("__name__", "x"), ("pod", "orphan-1")), tables, rules)
    assert enriched.labels is None
    assert lookups(enriched) == [Lookup.HIT, Lookup.MISS]
    assert enriched.steps[1].key == ("orphan",)
    # A series the second rule finds is kept.
    assert enrich((("__name__", "x"), ("pod", "checkout-1")), tables, rules).labels is not None


def test_rules_after_a_drop_are_not_applied() -> None:
    rules = [replace(PODS, on_missing="drop"), SERVICES]
    labels: Labels = (("__name__", "x"), ("pod", "unknown"), ("service", "checkout"))
    enriched = enrich(labels, [POD_TABLE, SERVICE_TABLE], rules)
    assert enriched == Enriched(None, (Step(rules[0], Lookup.MISS, ("unknown",), ()),), 0)


def test_conflicts_are_counted_over_every_rule() -> None:
    labels: Labels = (("owner", "bob"), ("pod", "checkout-1"), ("team", "ops"))
    tables = [POD_TABLE, SERVICE_TABLE]
    overwritten = enrich(labels, tables, [PODS, SERVICES])
    assert overwritten.conflicts == 2  # team (first rule), owner (second rule)
    assert overwritten.labels is not None
    assert dict(overwritten.labels) == {
        "owner": "alice",
        "service": "checkout",
        "slack_channel": "#checkout",
        "team": "web",
    }
    kept = enrich(labels, tables, [PODS, SERVICES], on_conflict="keep")
    assert kept.conflicts == 2
    assert kept.labels is not None
    assert dict(kept.labels) == {
        "owner": "bob",
        "service": "checkout",
        "slack_channel": "#checkout",
        "team": "ops",
    }


def test_a_later_rule_overwriting_an_earlier_rules_label_is_a_conflict() -> None:
    team_of_service = replace(SERVICES, fields=("team",))
    tables = [POD_TABLE, MetadataTable(entries={("checkout",): (("team", "payments"),)})]
    labels: Labels = (("pod", "checkout-1"),)
    enriched = enrich(labels, tables, [PODS, team_of_service])
    assert enriched.conflicts == 1
    assert enriched.labels == (("service", "checkout"), ("team", "payments"))
