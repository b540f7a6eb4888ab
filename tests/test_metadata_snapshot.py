"""The metadata snapshot file's content: every rule's table out, and back only for the same rules.

The pure halves (``snapshot_document``, ``read_snapshot``), and the file's header (format,
checksum) with what a damaged file does; writing and reading the file around MongoDB outages
is in tests/test_integration_metadata.py, a damaged one at a real start in
tests/test_integration_corruption.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from enrichproxy.config.schema import EnrichRule, MetadataConfig
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.durability.state_store import frame
from enrichproxy.metadata.store import (
    SNAPSHOT_FORMAT,
    SNAPSHOT_KIND,
    MetadataStore,
    read_snapshot,
    snapshot_document,
)
from enrichproxy.metadata.table import MetadataTable

PODS = EnrichRule(
    name="pods",
    database="metrics",
    collection="pod_metadata",
    key_labels=("namespace", "pod"),
    key_fields=("ns", "pod"),
    fields=("service", "team"),
)
OWNERS = EnrichRule(
    name="owners",
    database="metrics",
    collection="service_owners",
    key_labels=("service",),
    key_fields=("service",),
    fields=("owner",),
    drop_key_labels=False,
)
RULES = [PODS, OWNERS]
TABLES = [
    MetadataTable(
        {
            ("shop", "a"): (("service", "checkout"), ("team", "web")),
            ("dev", "a"): (("service", "checkout-canary"),),
            ("shop", "bare"): (),
        },
        version=7,
        loaded_at=1_700_000_000.25,
    ),
    MetadataTable({("checkout",): (("owner", "ünïcode"),)}, version=3, loaded_at=1_700_000_100.0),
]


def saved() -> Any:
    """The snapshot as it comes back from the file (JSON, as ``write_snapshot`` writes it)."""
    document = snapshot_document(list(zip(RULES, TABLES, strict=True)))
    return json.loads(json.dumps(document, separators=(",", ":")))


def test_a_snapshot_reads_back_into_the_same_tables() -> None:
    document = saved()
    assert document["format"] == SNAPSHOT_FORMAT
    tables = read_snapshot(document, RULES)
    assert tables is not None
    assert [dict(table.entries) for table in tables] == [dict(t.entries) for t in TABLES]
    assert [table.loaded_at for table in tables] == [t.loaded_at for t in TABLES]
    assert tables[0].lookup(("shop", "a")) == (("service", "checkout"), ("team", "web"))
    assert tables[0].lookup(("a", "shop")) is None


def test_labels_come_back_sorted_whatever_order_the_file_has() -> None:
    document = saved()
    document["rules"][0]["entries"] = [[["shop", "a"], {"team": "web", "service": "checkout"}]]
    tables = read_snapshot(document, RULES)
    assert tables is not None
    assert dict(tables[0].entries) == {("shop", "a"): (("service", "checkout"), ("team", "web"))}


def test_an_empty_table_round_trips() -> None:
    document = snapshot_document([(OWNERS, MetadataTable({}, loaded_at=5.0))])
    tables = read_snapshot(json.loads(json.dumps(document)), [OWNERS])
    assert tables is not None
    assert [(dict(t.entries), t.loaded_at) for t in tables] == [({}, 5.0)]


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param([replace(PODS, name="pods2"), OWNERS], id="renamed rule"),
        pytest.param([replace(PODS, collection="pods"), OWNERS], id="other collection"),
        pytest.param([replace(PODS, key_fields=("pod", "ns")), OWNERS], id="key fields reordered"),
        pytest.param([replace(PODS, key_fields=("pod",)), OWNERS], id="fewer key fields"),
        pytest.param([replace(PODS, fields=("service",)), OWNERS], id="other fields"),
        pytest.param([OWNERS, PODS], id="rules reordered"),
        pytest.param([PODS], id="a rule less"),
        pytest.param([PODS, OWNERS, replace(OWNERS, name="more")], id="a rule more"),
    ],
)
def test_a_snapshot_of_other_rules_is_refused(rules: list[EnrichRule]) -> None:
    assert read_snapshot(saved(), RULES) is not None
    assert read_snapshot(saved(), rules) is None


def test_key_labels_and_rule_options_do_not_change_the_tables() -> None:
    """The tables hold document fields: what the series side of a rule does is not saved."""
    rules = [
        replace(PODS, key_labels=("k8s_namespace", "k8s_pod"), on_missing="drop"),
        replace(OWNERS, drop_key_labels=True),
    ]
    tables = read_snapshot(saved(), rules)
    assert tables is not None
    assert [dict(table.entries) for table in tables] == [dict(t.entries) for t in TABLES]


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {},
        {"rules": []},
        {"format": "enrichproxy-metadata-snapshot/0", "rules": []},
        {"format": SNAPSHOT_FORMAT},
        {"format": SNAPSHOT_FORMAT, "rules": {}},
    ],
)
def test_a_document_that_is_no_snapshot_is_refused(document: Any) -> None:
    assert read_snapshot(document, RULES) is None


def test_another_format_version_is_refused() -> None:
    document = saved()
    document["format"] = SNAPSHOT_FORMAT + "0"
    assert read_snapshot(document, RULES) is None


async def test_a_malformed_snapshot_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "rules": [{"entries": 5}]}))
    spec = MetadataConfig(snapshot_path=str(path), mongodb_uri="mongodb://127.0.0.1:9/")
    store = MetadataStore(spec, lambda update: None, lambda follower, exc: None)
    try:
        assert store.restore_snapshot() is False
        assert not store.loaded
    finally:
        await store.close()


# --- the file: format version and checksum ------------------------------------------------------


class Reports:
    """DurabilityHealth's damage callback, recorded."""

    def __init__(self) -> None:
        self.damage: list[Damage] = []


def store_for(path: Path, reports: Reports) -> MetadataStore:
    spec = MetadataConfig(
        snapshot_path=str(path),
        mongodb_uri="mongodb://127.0.0.1:9/",
        rules=(PODS, OWNERS),
    )
    health = DurabilityHealth(on_damage=reports.damage.append)
    return MetadataStore(spec, lambda update: None, lambda follower, exc: None, health=health)


def write_tables(store: MetadataStore) -> None:
    for follower, table in zip(store.followers, TABLES, strict=True):
        follower.table = table
    store.write_snapshot()


async def test_the_file_carries_its_format_and_checksum_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    reports = Reports()
    store = store_for(path, reports)
    try:
        write_tables(store)
        header = path.read_bytes().partition(b"\n")[0].decode()
        kind, version, checksum, length = header.split(" ")
        assert (kind, version) == ("enrichproxy-metadata-snapshot", "2")
        assert len(checksum) == 8 and int(length) > 0
        fresh = store_for(path, reports)
        try:
            assert fresh.restore_snapshot() is True
            assert [f.table.entries for f in fresh.followers if f.table] == [
                t.entries for t in TABLES
            ]
        finally:
            await fresh.close()
        assert reports.damage == []
    finally:
        await store.close()


async def test_a_snapshot_of_the_format_before_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(saved(), separators=(",", ":")))  # JSON alone, no header
    reports = Reports()
    store = store_for(path, reports)
    try:
        assert store.restore_snapshot() is True
        assert reports.damage == []
    finally:
        await store.close()


def flip_a_value(path: Path) -> None:
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    path.write_bytes(header + b"\n" + payload.replace(b"checkout", b"checkour", 1))


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def not_json(path: Path) -> None:
    path.write_bytes(b'{"format": ')  # an old-format file cut short


def wrong_structure(path: Path) -> None:
    document = saved()
    document["rules"][0]["entries"] = 5
    path.write_bytes(frame(SNAPSHOT_KIND, json.dumps(document).encode()))  # a right checksum


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (flip_a_value, "checksum mismatch"),
        (cut, "length"),
        (not_json, "not JSON"),
        (wrong_structure, "malformed"),
    ],
)
async def test_a_damaged_snapshot_is_reported_once_moved_aside_and_not_used(
    tmp_path: Path, damage: Any, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot.json"
    reports = Reports()
    writer = store_for(path, reports)
    try:
        write_tables(writer)
    finally:
        await writer.close()
    damage(path)
    size = path.stat().st_size
    store = store_for(path, reports)
    try:
        with caplog.at_level(logging.ERROR):
            assert store.restore_snapshot() is False
        assert not store.loaded  # the tables will come from MongoDB
    finally:
        await store.close()
    [report] = reports.damage
    assert report.file == "metadata_snapshot"
    assert what in report.what
    assert report.bytes_lost == size
    assert not path.exists()
    assert report.moved_to is not None and report.moved_to.exists()  # kept, not deleted
    assert report.moved_to.name.startswith("snapshot.json.corrupt-")
    lines = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(lines) == 1 and "corrupt metadata_snapshot" in lines[0], lines
