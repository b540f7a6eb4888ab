"""``enrichproxy metadata import|export``: files in, validated upserts, the same documents out.

Reading and validating files are unit tests; importing and exporting run against secantusdb (a
MongoDB wire-protocol server), one fresh database per test; the CLI runs as a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import MongoClient
from realparts import MongoServer, free_port

from enrichproxy.config.schema import Config, MetadataConfig, parse_config
from enrichproxy.errors import ConfigError
from enrichproxy.metadata.admin import (
    MetadataFileError,
    export_documents,
    format_documents,
    import_documents,
    read_documents,
    select_rule,
    validate_documents,
)
from enrichproxy.metadata.store import MetadataUnavailable
from enrichproxy.metadata.table import build_table

PODS: list[dict[str, Any]] = [
    {"pod": "cart-1", "service": "cart", "team": "web", "tier": "silver"},
    {"pod": "checkout-a", "service": "checkout", "team": "orders", "tier": "gold"},
    {"pod": "payment-a", "service": "payment", "team": "payments", "tier": "gold"},
]
CSV_PODS = "pod,service,team,tier\n" + "".join(
    f"{d['pod']},{d['service']},{d['team']},{d['tier']}\n" for d in PODS
)
RULE = MetadataConfig().enrich_rules[0]


def metadata(uri: str, database: str, **extra: Any) -> dict[str, Any]:
    return {"mongodb_uri": uri, "database": database, "timeout": "2s", **extra}


def config_of(uri: str, database: str, **extra: Any) -> Config:
    return parse_config(
        {
            "metadata": metadata(uri, database, **extra),
            "views": [{"name": "ops", "keep": ["service"]}],
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- reading files --------------------------------------------------------------------------------


def test_yaml_json_and_csv_read_to_the_same_documents(tmp_path: Path) -> None:
    assert read_documents(write(tmp_path / "pods.yaml", yaml.safe_dump(PODS))) == PODS
    assert read_documents(write(tmp_path / "pods.yml", yaml.safe_dump(PODS))) == PODS
    assert read_documents(write(tmp_path / "pods.json", json.dumps(PODS))) == PODS
    assert read_documents(write(tmp_path / "pods.csv", CSV_PODS)) == PODS
    assert read_documents(write(tmp_path / "empty.yaml", "# nothing yet\n")) == []


def test_csv_empty_cells_are_absent_fields_and_a_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    path.write_bytes(b'\xef\xbb\xbfpod,service,tier\r\na,"svc, with comma",\r\n\r\nb,,1\r\n')
    assert read_documents(path) == [
        {"pod": "a", "service": "svc, with comma"},
        {"pod": "b", "tier": "1"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pods.txt", "pod: a", "unknown format '.txt': name the file .yaml, .yml, .json or .csv"),
        ("pods.yaml", "- {pod: a\n", "not valid YAML"),
        ("pods.yaml", "pod: a\n", "must be a list of documents (mappings), got dict"),
        ("pods.yaml", "- {pod: a}\n- just text\n", "document 2: must be a mapping"),
        ("pods.json", '[{"pod": "a"},]', "not valid JSON: line 1 column 15: Expecting value"),
        ("pods.csv", "pod,service\na,b\nc,d,e\n", "line 3: 3 cells for 2 columns (pod, service)"),
        ("pods.csv", "pod,pod\na,b\n", "line 1: column 'pod' appears twice"),
        ("pods.csv", "pod,,tier\n", "line 1: column 2 has no name"),
    ],
)
def test_unreadable_files_name_the_file_and_the_row(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(MetadataFileError) as caught:
        read_documents(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataFileError, match=r"nope\.yaml: cannot read: No such file"):
        read_documents(tmp_path / "nope.yaml")


@pytest.mark.parametrize("file_format", ["yaml", "json", "csv"])
def test_formatted_documents_read_back_the_same(tmp_path: Path, file_format: str) -> None:
    documents = [{"pod": "a", "service": "ünïcode", "tier": "1"}, {"pod": "b", "note": "x"}]
    path = write(tmp_path / f"pods.{file_format}", format_documents(documents, file_format))
    assert read_documents(path) == documents
    assert (
        read_documents(write(tmp_path / f"none.{file_format}", format_documents([], file_format)))
        == []
    )


def test_csv_cannot_hold_a_nested_value() -> None:
    with pytest.raises(MetadataFileError, match="document 1: field 'tags' is a list"):
        format_documents([{"pod": "a", "tags": ["x"]}], "csv")


# --- validation ----------------------------------------------------------------------------------


def test_documents_the_proxy_would_not_use_whole_are_rejected() -> None:
    documents: list[object] = [
        {"pod": "a", "service": "s", "tier": 1, "notes": {"free": ["form"]}},  # fine
        {"service": "orphan"},
        {"pod": ["x"], "service": "s"},
        {"pod": "c", "service": {"nested": 1}},
        {"pod": "a", "service": "again"},
        {"pod": "d", "since": date(2024, 1, 2)},
        {"pod": "e", "$set": 1},
        "not a document",
        {"_id": "ignored", "pod": "f"},
    ]
    accepted, rejected = validate_documents(RULE, documents)
    assert accepted == [
        (("a",), {"pod": "a", "service": "s", "tier": 1, "notes": {"free": ["form"]}}),
        (("f",), {"pod": "f"}),
    ]
    assert rejected == [
        "document 2: no 'pod'",
        "document 3: 'pod' is not a non-empty scalar",
        "document 4: field 'service' is not a scalar",
        "document 5: key pod='a' repeats document 1",
        "document 6: field 'since' is a date: write it as a string",
        "document 7: field name '$set': MongoDB field names here may not start with $ or hold .",
        "document 8: must be a mapping, got str",
    ]


def test_an_unknown_rule_is_a_config_error() -> None:
    spec = MetadataConfig()
    assert select_rule(spec).name == "pod_metadata"
    with pytest.raises(
        ConfigError, match="--rule: no rule named 'nodes' \\(rules: pod_metadata\\)"
    ):
        select_rule(spec, "nodes")


# --- against MongoDB ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pods.yaml", yaml.safe_dump(PODS)),
        ("pods.json", json.dumps(PODS)),
        ("pods.csv", CSV_PODS),
    ],
)
async def test_import_then_export_round_trip(
    tmp_path: Path, mongo: MongoServer, mongo_db_name: str, name: str, content: str
) -> None:
    spec = config_of(mongo.uri, mongo_db_name).metadata
    documents = read_documents(write(tmp_path / name, content))

    report = await import_documents(spec, documents)
    assert (report.inserted, report.updated, report.unchanged, report.rejected) == (3, 0, 0, [])
    assert report.summary() == (
        f"{mongo_db_name}.pod_metadata (rule pod_metadata): 3 inserted, 0 updated, 0 unchanged,"
        " 0 rejected; unique index pod_1"
    )
    exported = await export_documents(spec)
    assert exported == PODS
    # What was imported is what the proxy uses, all of it.
    built = build_table(exported, spec.enrich_rules[0], version=1, loaded_at=0.0)
    assert built.rejections == []
    assert len(built.table.entries) == 3

    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        indexes = client[mongo_db_name]["pod_metadata"].index_information()
    finally:
        client.close()
    assert indexes["pod_1"]["unique"] is True
    assert indexes["pod_1"]["key"] == [("pod", 1)]

    again = await import_documents(spec, documents)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 3)


@pytest.mark.integration
async def test_a_second_import_counts_inserted_updated_unchanged_rejected(
    mongo: MongoServer, mongo_db_name: str
) -> None:
    spec = config_of(mongo.uri, mongo_db_name).metadata
    await import_documents(spec, PODS)
    changed = [
        PODS[0],
        {"pod": "checkout-a", "service": "checkout", "team": "orders"},  # tier removed
        PODS[2],
        {"pod": "search-1", "service": "search"},
        {"pod": "payment-a", "service": "duplicate"},
        {"service": "no key"},
    ]
    report = await import_documents(spec, changed)
    assert (report.inserted, report.updated, report.unchanged) == (1, 1, 2)
    assert report.rejected == [
        "document 5: key pod='payment-a' repeats document 3",
        "document 6: no 'pod'",
    ]
    assert await export_documents(spec) == [
        PODS[0],
        {"pod": "checkout-a", "service": "checkout", "team": "orders"},  # replaced whole
        PODS[2],
        {"pod": "search-1", "service": "search"},
    ]


@pytest.mark.integration
async def test_a_stored_key_of_another_type_is_the_same_key(
    mongo: MongoServer, mongo_db_name: str
) -> None:
    """The proxy reads ``node: 7`` and ``node: "7"`` as one key, so the import does too."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_one({"pod": 7, "service": "old"})
    finally:
        client.close()
    spec = config_of(mongo.uri, mongo_db_name).metadata
    report = await import_documents(spec, [{"pod": "7", "service": "new"}])
    assert (report.inserted, report.updated) == (0, 1)
    assert await export_documents(spec) == [{"pod": "7", "service": "new"}]


@pytest.mark.integration
async def test_rule_selects_the_collection_and_a_composite_key(
    mongo: MongoServer, mongo_db_name: str
) -> None:
    rules = [
        {"name": "pods", "collection": "pods", "key_label": "pod", "fields": ["service"]},
        {
            "name": "nodes",
            "collection": "nodes",
            "key_labels": ["cluster", "node"],
            "key_fields": ["cluster_name", "node_name"],
            "fields": ["zone"],
        },
    ]
    spec = config_of(mongo.uri, mongo_db_name, rules=rules).metadata
    nodes = [
        {"cluster_name": "eu1", "node_name": "n1", "zone": "a"},
        {"cluster_name": "us1", "node_name": "n1", "zone": "b"},  # same node, other cluster
    ]
    report = await import_documents(spec, nodes, rule_name="nodes")
    assert (report.inserted, report.index) == (2, "cluster_name_1_node_name_1")
    assert await export_documents(spec, "nodes") == nodes
    assert await export_documents(spec) == []  # the first rule's collection is untouched


@pytest.mark.integration
async def test_duplicate_keys_already_stored_stop_the_import(
    mongo: MongoServer, mongo_db_name: str
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_many([{"pod": "a"}, {"pod": "a"}])
    finally:
        client.close()
    spec = config_of(mongo.uri, mongo_db_name).metadata
    with pytest.raises(MetadataUnavailable, match="duplicate key"):
        await import_documents(spec, [{"pod": "b"}])
    client = MongoClient(mongo.uri)
    try:
        assert client[mongo_db_name]["pod_metadata"].count_documents({"pod": "b"}) == 0
    finally:
        client.close()


# --- the CLI -------------------------------------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enrichproxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_file(tmp_path: Path, uri: str, database: str) -> str:
    document = {
        "metadata": metadata(uri, database, timeout="300ms"),
        "views": [{"name": "ops", "keep": ["service"]}],
        "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
    }
    path = tmp_path / "enrichproxy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


@pytest.mark.integration
def test_cli_import_and_export_exit_codes(
    tmp_path: Path, mongo: MongoServer, mongo_db_name: str
) -> None:
    config = config_file(tmp_path, mongo.uri, mongo_db_name)
    good = write(tmp_path / "pods.csv", CSV_PODS)

    done = run_cli("metadata", "import", str(good), "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"{good}: {mongo_db_name}.pod_metadata (rule pod_metadata): 3 inserted, 0 updated,"
        " 0 unchanged, 0 rejected; unique index pod_1\n"
    )

    for file_format, parse in (("yaml", yaml.safe_load), ("json", json.loads)):
        done = run_cli("metadata", "export", "--config", config, "--format", file_format)
        assert done.returncode == 0, done.stderr
        assert parse(done.stdout) == PODS
    done = run_cli("metadata", "export", "--config", config, "--format", "csv")
    assert done.stdout == CSV_PODS
    assert run_cli("metadata", "export", "--config", config).stdout == yaml.safe_dump(
        PODS, sort_keys=False
    )

    bad = write(tmp_path / "bad.yaml", "- {pod: new-1, service: s}\n- {service: orphan}\n")
    done = run_cli("metadata", "import", str(bad), "--config", config)
    assert done.returncode == 1
    assert "1 inserted, 0 updated, 0 unchanged, 1 rejected" in done.stdout
    assert done.stderr == f"{bad}: rejected document 2: no 'pod'\n"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "{missing}"], "cannot read: No such file"),
        (["import", "{file}", "--rule", "nodes"], "--rule: no rule named 'nodes'"),
        (["import", "{file}"], "importing into metrics.pod_metadata:"),
        (["export"], "exporting metrics.pod_metadata:"),
    ],
)
def test_cli_failures_exit_1_with_a_message_and_no_traceback(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    """Every case has MongoDB unreachable: what is checked before connecting fails first.

    Unreachable MongoDB is tested in a child process only: pymongo's async client leaks a socket
    when ``close`` cancels a monitor's connect, and its ResourceWarning would fail whichever
    later test the garbage collector runs in.
    """
    file = write(tmp_path / "pods.yaml", yaml.safe_dump(PODS))
    config = config_file(tmp_path, f"mongodb://127.0.0.1:{free_port()}/", "metrics")
    args = [a.format(missing=tmp_path / "missing.yaml", file=file) for a in argv]
    done = run_cli("metadata", *args, "--config", config)
    assert done.returncode == 1
    assert done.stderr.startswith("enrichproxy: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
