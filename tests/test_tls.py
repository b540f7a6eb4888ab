"""TLS and credentials towards destinations, against an in-process receiver over real TLS.

Certificates are self-signed, made by openssl for each test session. A wrong or missing
credential or certificate is retried like a 5xx (forwarder's table) and shows in the metrics,
never in a log line or a metric.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sinks import RecordingSink
from tlsparts import Certificate, basic_authorization, self_signed_certificate

from enrichproxy.config.schema import (
    BasicAuthConfig,
    ClientTLSConfig,
    Config,
    RemoteWriteConfig,
    Secret,
    ServerTLSConfig,
)
from enrichproxy.errors import ConfigError
from enrichproxy.forward.forwarder import REMOTE_WRITE_HEADERS, Destination
from enrichproxy.model import OutputSample
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.server.tls import check_tls, client_context, server_context
from enrichproxy.wire.codec import encode_labels

PASSWORD = "destination-password-42"
TOKEN = "destination-token-42"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        "ip": self_signed_certificate(directory, "receiver-ip"),
        "dns": self_signed_certificate(directory, "receiver-dns", "DNS:receiver.test"),
        "client": self_signed_certificate(directory, "enrichproxy-client", "DNS:enrichproxy"),
    }


def _server(cert: Certificate, client_ca: Certificate | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(client_ca.cert_file))
    return context


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sinks() -> AsyncIterator[list[RecordingSink]]:
    started: list[RecordingSink] = []
    yield started
    for sink in started:
        await sink.stop()


async def _tls_sink(
    sinks: list[RecordingSink], cert: Certificate, client_ca: Certificate | None = None
) -> RecordingSink:
    sink = RecordingSink()
    await sink.start(_server(cert, client_ca))
    sinks.append(sink)
    return sink


def _sample() -> OutputSample:
    labels = (("__name__", "m_total"), ("view", "v"))
    return OutputSample(encode_labels(labels), 1000, 1.0)


def _value(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


async def _send(
    session: aiohttp.ClientSession, telemetry: Telemetry, config: RemoteWriteConfig
) -> Destination:
    destination = Destination(config, session, telemetry)
    destination.start()
    destination.enqueue([_sample()])
    return destination


async def _delivered(sink: RecordingSink, destination: Destination) -> None:
    await sink.wait_accepted(1, timeout=5)
    assert await destination.drain(5)
    await destination.stop()


async def _retried(telemetry: Telemetry, destination: Destination, code: str = "error") -> None:
    """Until two attempts failed with ``code``; then give up the batch (test teardown)."""
    async with asyncio.timeout(5):
        while (
            _value(telemetry, "enrichproxy_forward_requests_total", destination="d", code=code) < 2
        ):
            await asyncio.sleep(0.01)
    await destination.stop()


def _config(url: str, **settings: Any) -> RemoteWriteConfig:
    return RemoteWriteConfig(
        url=url, name="d", shards=1, min_backoff_ms=10, max_backoff_ms=20, **settings
    )


# --- contexts -----------------------------------------------------------------------------------


def test_client_context_settings(certs: dict[str, Certificate]) -> None:
    default = client_context(None, "p")
    assert default.verify_mode == ssl.CERT_REQUIRED
    assert default.check_hostname
    insecure = client_context(ClientTLSConfig(insecure_skip_verify=True), "p")
    assert insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname
    with_ca = client_context(ClientTLSConfig(ca_file=str(certs["ip"].cert_file)), "p")
    assert len(with_ca.get_ca_certs()) == 1


def test_unusable_pem_files_are_configuration_problems(
    tmp_path: Path, certs: dict[str, Certificate]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n", encoding="utf-8")
    ip, client = certs["ip"], certs["client"]
    server_context(ServerTLSConfig(str(ip.cert_file), str(ip.key_file)))  # a good pair loads
    mismatched = ServerTLSConfig(str(ip.cert_file), str(client.key_file))
    config = Config(
        tls=mismatched,
        remote_write=(
            _config("https://127.0.0.1:1/", tls_config=ClientTLSConfig(ca_file=str(garbage))),
            _config("https://127.0.0.1:2/"),
        ),
    )
    with pytest.raises(ConfigError) as caught:
        check_tls(config)
    assert [problem.split(": cannot be used")[0] for problem in caught.value.problems] == [
        "tls.cert_file, tls.key_file",
        "remote_write[0].tls_config.ca_file",
    ]
    check_tls(Config())  # nothing to load


# --- a destination over TLS ---------------------------------------------------------------------


async def test_a_destination_verifies_the_server_with_its_ca_file_and_sends_basic_auth(
    certs: dict[str, Certificate],
    sinks: list[RecordingSink],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    telemetry = Telemetry()
    sink = await _tls_sink(sinks, certs["ip"])
    config = _config(
        sink.url,
        tls_config=ClientTLSConfig(ca_file=str(certs["ip"].cert_file)),
        basic_auth=BasicAuthConfig("enrichproxy", Secret(PASSWORD)),
        headers=(("X-Scope-OrgID", "tenant-1"),),
    )
    await _delivered(sink, await _send(session, telemetry, config))
    headers = sink.accepted[0].headers
    assert headers["Authorization"] == basic_authorization("enrichproxy", PASSWORD)["Authorization"]
    assert headers["X-Scope-OrgID"] == "tenant-1"
    for name, value in REMOTE_WRITE_HEADERS.items():
        assert headers[name] == value
    assert PASSWORD not in caplog.text
    assert PASSWORD.encode() not in telemetry.exposition()


async def test_a_server_the_system_does_not_trust_is_retried_never_trusted(
    certs: dict[str, Certificate],
    sinks: list[RecordingSink],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    telemetry = Telemetry()
    sink = await _tls_sink(sinks, certs["ip"])
    config = _config(sink.url, bearer_token=Secret(TOKEN))
    await _retried(telemetry, await _send(session, telemetry, config))
    assert sink.attempts == []  # the handshake failed: nothing, and no token, was sent
    assert "certificate verify failed" in caplog.text
    assert TOKEN not in caplog.text


async def test_server_name_verifies_a_certificate_for_another_name(
    certs: dict[str, Certificate], sinks: list[RecordingSink], session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink = await _tls_sink(sinks, certs["dns"])  # a certificate for receiver.test only
    ca = str(certs["dns"].cert_file)
    wrong_name = _config(sink.url, tls_config=ClientTLSConfig(ca_file=ca))
    await _retried(telemetry, await _send(session, telemetry, wrong_name))
    right_name = _config(
        sink.url, tls_config=ClientTLSConfig(ca_file=ca, server_name="receiver.test")
    )
    await _delivered(sink, await _send(session, Telemetry(), right_name))


async def test_insecure_skip_verify_accepts_any_certificate(
    certs: dict[str, Certificate], sinks: list[RecordingSink], session: aiohttp.ClientSession
) -> None:
    sink = await _tls_sink(sinks, certs["dns"])
    config = _config(sink.url, tls_config=ClientTLSConfig(insecure_skip_verify=True))
    await _delivered(sink, await _send(session, Telemetry(), config))


async def test_a_client_certificate_for_a_server_that_demands_one(
    certs: dict[str, Certificate], sinks: list[RecordingSink], session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink = await _tls_sink(sinks, certs["ip"], client_ca=certs["client"])
    ca = str(certs["ip"].cert_file)
    without = _config(sink.url, tls_config=ClientTLSConfig(ca_file=ca))
    await _retried(telemetry, await _send(session, telemetry, without))
    client = certs["client"]
    tls = ClientTLSConfig(
        ca_file=ca, cert_file=str(client.cert_file), key_file=str(client.key_file)
    )
    await _delivered(sink, await _send(session, Telemetry(), _config(sink.url, tls_config=tls)))
