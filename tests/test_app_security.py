"""Inbound credentials and limits, through the real app in-process (secantusdb as MongoDB, a
recording receiver downstream).

Without credentials, only ``/-/healthy``, ``/-/ready`` and ``/metrics`` answer; the 401 is the
same whatever was wrong. A request over a limit is answered 400 naming the limit, counted, and
nothing of it reaches a destination.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from inprocess import (
    HEADERS,
    Client,
    config_for,
    is_ready,
    metric,
    seed,
    start_app,
    wait_until,
    write_body,
)
from realparts import MongoServer, build_write_request
from sinks import RecordingSink
from tlsparts import basic_authorization

from enrichproxy.errors import Unauthorized

TOKEN = "inbound-token-7f3a"
PASSWORD = "inbound-password-9c1e"
REFUSAL = f"{Unauthorized('').args[0]}\n"


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, str]:
    token, password = tmp_path / "token", tmp_path / "password"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    return {"token": str(token), "password": str(password)}


async def _ready_app(
    mongo: MongoServer, database: str, sink: RecordingSink, clients: list[Client], **sections: Any
) -> Client:
    await seed(mongo.uri, database, [{"pod": "a", "service": "checkout"}])
    client = await start_app(config_for(mongo.uri, database, sink.url, **sections), clients)
    await wait_until(lambda: is_ready(client))
    return client


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_bearer_token_guards_writes_and_debug_but_not_probes_or_metrics(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[Client],
    secret_files: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await _ready_app(
        mongo, mongo_db_name, sink, clients, auth={"bearer_token_file": secret_files["token"]}
    )
    for path in ("/-/healthy", "/-/ready", "/metrics"):
        assert (await client.get(path)).status == 200, path
    body = write_body("a", [(_now_ms() - 1000, 1.0)])
    answers = []
    for authorization in (None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}"):
        headers = dict(HEADERS)
        if authorization is not None:
            headers["Authorization"] = authorization
        response = await client.post("/api/v1/write", data=body, headers=headers)
        answers.append(
            (response.status, await response.text(), response.headers.get("WWW-Authenticate"))
        )
    refused = (401, REFUSAL, 'Bearer realm="enrichproxy"')
    assert answers == [refused, refused, refused, (204, "", None)]
    explain = '/debug/explain?series=jobs_total{pod="a"}'
    assert (await client.get(explain)).status == 401
    authorized = await client.get(explain, headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorized.status == 200
    assert metric(client, "enrichproxy_requests_total", code="401") == 3
    assert metric(client, "enrichproxy_requests_total", code="204") == 1
    assert metric(client, "enrichproxy_auth_failures_total", reason="missing") == 2  # + explain
    assert metric(client, "enrichproxy_auth_failures_total", reason="invalid") == 2
    exposition = await (await client.get("/metrics")).text()
    assert TOKEN not in exposition
    assert TOKEN not in caplog.text


async def test_basic_auth_refuses_a_wrong_user_and_a_wrong_password_alike(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[Client],
    secret_files: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = {"basic_auth": {"username": "prometheus", "password_file": secret_files["password"]}}
    client = await _ready_app(mongo, mongo_db_name, sink, clients, auth=auth)
    now = _now_ms()
    answers = []
    for username, password in (
        ("someone", PASSWORD),
        ("prometheus", "wrong"),
        ("prometheus", PASSWORD),
    ):
        response = await client.post(
            "/api/v1/write",
            data=write_body("a", [(now - 1000, 1.0)]),
            headers={**HEADERS, **basic_authorization(username, password)},
        )
        answers.append(
            (response.status, await response.text(), response.headers.get("WWW-Authenticate"))
        )
    refused = (401, REFUSAL, 'Basic realm="enrichproxy", charset="UTF-8"')
    assert answers == [refused, refused, (204, "", None)]
    await client.close()  # the window leaves at shutdown
    assert [value for _, _, value in sink.accepted_samples()] == [1.0]
    assert PASSWORD not in caplog.text


LIMITED = {
    "max_series_per_request": 2,
    "max_labels_per_series": 3,
    "max_label_name_length": 12,
    "max_label_value_length": 16,
}


@pytest.mark.parametrize(
    ("limit", "series"),
    [
        ("max_series_per_request", [{"pod": "a"}, {"pod": "b"}, {"pod": "c"}]),
        ("max_labels_per_series", [{"pod": "a", "job": "j", "instance": "i"}]),
        ("max_label_name_length", [{"pod": "a", "a_long_label_name": "x"}]),
        ("max_label_value_length", [{"pod": "a", "job": "a-rather-long-value"}]),
    ],
)
async def test_each_limit_refuses_the_request_with_400_naming_it(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[Client],
    limit: str,
    series: list[dict[str, str]],
) -> None:
    client = await _ready_app(mongo, mongo_db_name, sink, clients, limits=LIMITED)
    now = _now_ms()
    refused_body = build_write_request(
        [({"__name__": "jobs_total", **labels}, [(now - 2000, 100.0)]) for labels in series]
    )
    response = await client.post("/api/v1/write", data=refused_body, headers=HEADERS)
    assert response.status == 400
    assert (await response.text()).startswith(f"limits.{limit} exceeded: ")
    assert metric(client, "enrichproxy_limit_rejections_total", limit=limit) == 1
    assert metric(client, "enrichproxy_limit_rejections_total") == 1
    assert metric(client, "enrichproxy_requests_total", code="400") == 1
    accepted = await client.post(
        "/api/v1/write", data=write_body("a", [(now - 1000, 1.0)]), headers=HEADERS
    )
    assert accepted.status == 204
    await client.close()
    # Nothing of the refused request was applied: only the accepted sample left.
    assert [value for _, _, value in sink.accepted_samples()] == [1.0]


async def test_a_views_cardinality_cap_keeps_existing_output_series_flowing(
    mongo: MongoServer, mongo_db_name: str, sink: RecordingSink, clients: list[Client]
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "b", "service": "payment"}])
    client = await _ready_app(
        mongo,
        mongo_db_name,
        sink,
        clients,
        views=[{"name": "ops", "keep": ["service"], "max_series": 1}],
    )
    now = _now_ms()
    for pod, value in (("a", 1.0), ("b", 7.0), ("a", 2.0)):
        response = await client.post(
            "/api/v1/write", data=write_body(pod, [(now - 3000, value)]), headers=HEADERS
        )
        now += 1
        assert response.status == 204  # the guard drops; it never refuses a write
    await client.close()
    assert {dict(labels)["service"] for labels, _, _ in sink.accepted_samples()} == {"checkout"}
    dropped = metric(
        client, "enrichproxy_view_samples_dropped_total", view="ops", reason="cardinality_limit"
    )
    assert dropped == 1
