"""TLS and credentials against the real parts: ``enrichproxy serve`` with a TLS listener and
inbound auth, Debian's Prometheus as a sender that uses them, and a Prometheus receiver behind
``--web.config.file`` that demands TLS, a client certificate and basic auth.

Certificates are self-signed by openssl for each test; bcrypt hashes come from htpasswd.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess import seed
from prometheus_client import Counter
from realparts import (
    Exporter,
    MongoServer,
    PrometheusFactory,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    prometheus_config,
    remote_write_config,
    scrape_config,
    write_config,
)
from tlsparts import Certificate, basic_authorization, bcrypt_hash, self_signed_certificate

pytestmark = pytest.mark.integration

INBOUND_PASSWORD = "from-prometheus-5e1b"
OUTBOUND_PASSWORD = "to-receiver-8d2c"
WRONG_PASSWORD = "not-the-password-3a9f"
SECRETS = (INBOUND_PASSWORD, OUTBOUND_PASSWORD, WRONG_PASSWORD)
WRITE_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
RECEIVER_NAME = "receiver.test"  # the receiver's certificate is for this name only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        "proxy": self_signed_certificate(directory, "enrichproxy"),
        "receiver": self_signed_certificate(directory, "receiver", f"DNS:{RECEIVER_NAME}"),
        "client": self_signed_certificate(directory, "enrichproxy-client", "DNS:enrichproxy"),
    }


def _secret_file(directory: Path, name: str, secret: str) -> str:
    path = directory / name
    path.write_text(secret + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def receiver(
    tmp_path: Path, prometheus_bin: str, certs: dict[str, Certificate]
) -> Iterator[PrometheusProcess]:
    """A Prometheus receiver that takes only TLS with a client certificate and basic auth."""
    server, client = certs["receiver"], certs["client"]
    web_config = write_config(
        tmp_path / "receiver-web.yml",
        {
            "tls_server_config": {
                "cert_file": str(server.cert_file),
                "key_file": str(server.key_file),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(client.cert_file),
            },
            "basic_auth_users": {"enrichproxy": bcrypt_hash("enrichproxy", OUTBOUND_PASSWORD)},
        },
    )
    # The test's own queries: trust the receiver's certificate (it is not for 127.0.0.1, so
    # the name is not checked here; enrichproxy checks it with server_name), show ours.
    queries = client.as_client_identity(server.trusted_by_client(check_hostname=False))
    process = PrometheusProcess(
        tmp_path / "receiver",
        receiver=True,
        extra_args=[f"--web.config.file={web_config}"],
        binary=prometheus_bin,
        name="receiver",
        client_ssl=queries,
        client_headers=basic_authorization("enrichproxy", OUTBOUND_PASSWORD),
    )
    process.start()
    yield process
    process.stop()


def _destination(
    receiver: PrometheusProcess, certs: dict[str, Certificate], name: str, password_file: str
) -> dict[str, Any]:
    client = certs["client"]
    return {
        "url": receiver.write_url,
        "name": name,
        "min_backoff": "20ms",
        "max_backoff": "100ms",
        "basic_auth": {"username": "enrichproxy", "password_file": password_file},
        "tls_config": {
            "ca_file": str(certs["receiver"].cert_file),
            "server_name": RECEIVER_NAME,
            "cert_file": str(client.cert_file),
            "key_file": str(client.key_file),
        },
    }


def _proxy_config(mongo: MongoServer, database: str, **sections: Any) -> dict[str, Any]:
    return {
        "metadata": {"mongodb_uri": mongo.uri, "database": database, "timeout": "2s"},
        "views": [{"name": "ops", "keep": ["service"]}],
        "aggregation": {"interval": "1s", "lateness": "0s"},
        "shutdown_timeout": "2s",
        **sections,
    }


def _seed(mongo: MongoServer, database: str) -> None:
    asyncio.run(seed(mongo.uri, database, [{"pod": "a", "service": "checkout"}]))


def _assert_no_secret_shows(proxy: ProxyProcess) -> None:
    exposition = proxy.get("/metrics")[1]
    log = proxy.log_text()
    for secret in SECRETS:
        assert secret not in exposition
        assert secret not in log


def _https_post(url: str, body: bytes, headers: dict[str, str], context: ssl.SSLContext) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_tls_listener_serves_clients_that_trust_its_certificate(
    tmp_path: Path, mongo: MongoServer, mongo_db_name: str, certs: dict[str, Certificate]
) -> None:
    _seed(mongo, mongo_db_name)
    cert = certs["proxy"]
    trusting = cert.trusted_by_client()
    config = _proxy_config(
        mongo,
        mongo_db_name,
        remote_write=[{"url": "http://127.0.0.1:1/api/v1/write"}],
        tls={"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
        auth={
            "basic_auth": {
                "username": "prometheus",
                "password_file": _secret_file(tmp_path, "inbound", INBOUND_PASSWORD),
            }
        },
    )
    # start() polls /-/ready over https, verifying the certificate (its own CA) and the name.
    proxy = ProxyProcess(tmp_path / "proxy", config, client_ssl=trusting)
    proxy.start()
    try:
        assert proxy.url.startswith("https://")
        assert proxy.log_lines(f"listening on https://127.0.0.1:{proxy.port}")
        # A client that trusts only the system's CAs refuses the self-signed certificate.
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{proxy.url}/-/healthy", timeout=5
            )
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        # Plain HTTP gets no HTTP answer from a TLS port.
        plain = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        with pytest.raises((OSError, http.client.HTTPException)):
            plain.request("GET", "/-/healthy")
            plain.getresponse().read()
        plain.close()
        body = build_write_request([({"__name__": "jobs_total", "pod": "a"}, [(_ms(), 1.0)])])
        right = basic_authorization("prometheus", INBOUND_PASSWORD)
        wrong = basic_authorization("prometheus", WRONG_PASSWORD)
        assert _https_post(proxy.write_url, body, WRITE_HEADERS, trusting) == 401
        assert _https_post(proxy.write_url, body, {**WRITE_HEADERS, **wrong}, trusting) == 401
        assert _https_post(proxy.write_url, body, {**WRITE_HEADERS, **right}, trusting) == 204
        assert proxy.metric("enrichproxy_auth_failures_total", reason="missing") == 1
        assert proxy.metric("enrichproxy_auth_failures_total", reason="invalid") == 1
        _assert_no_secret_shows(proxy)
    finally:
        proxy.stop()


def _ms() -> int:
    return int(time.time() * 1000)


def test_prometheus_writes_through_tls_and_auth_on_both_sides(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    certs: dict[str, Certificate],
    receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
    exporter: Exporter,
) -> None:
    """Prometheus → (https, basic auth) → enrichproxy → (https, server name, client
    certificate, basic auth) → Prometheus: the enriched view arrives."""
    _seed(mongo, mongo_db_name)
    jobs = Counter("jobs", "Jobs done.", ["pod"], registry=exporter.registry)
    jobs.labels("a").inc(5)
    proxy_cert = certs["proxy"]
    config = _proxy_config(
        mongo,
        mongo_db_name,
        remote_write=[
            _destination(
                receiver,
                certs,
                "receiver",
                _secret_file(tmp_path, "outbound", OUTBOUND_PASSWORD),
            )
        ],
        tls={"cert_file": str(proxy_cert.cert_file), "key_file": str(proxy_cert.key_file)},
        auth={
            "basic_auth": {
                "username": "prometheus",
                "password_file": _secret_file(tmp_path, "inbound", INBOUND_PASSWORD),
            }
        },
    )
    proxy = ProxyProcess(tmp_path / "proxy", config, client_ssl=proxy_cert.trusted_by_client())
    proxy.start()
    try:
        prometheus_factory(
            prometheus_config(
                scrape_configs=[scrape_config("app", [exporter.target])],
                remote_write=[
                    remote_write_config(
                        proxy.write_url,
                        basic_auth={"username": "prometheus", "password": INBOUND_PASSWORD},
                        tls_config={"ca_file": str(proxy_cert.cert_file)},
                    )
                ],
            )
        )
        result = receiver.wait_for(
            'jobs_total{view="ops",service="checkout"}',
            lambda found: bool(found) and float(found[0]["value"][1]) == 5.0,
            timeout=30,
        )
        assert "pod" not in result[0]["metric"]
        assert proxy.metric("enrichproxy_auth_failures_total", reason="invalid") is None
        assert proxy.metric("enrichproxy_forward_requests_total", code="401") is None
        _assert_no_secret_shows(proxy)
    finally:
        proxy.stop()


def test_a_wrong_destination_password_is_retried_counted_and_never_logged(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    certs: dict[str, Certificate],
    receiver: PrometheusProcess,
) -> None:
    """Two destinations on one receiver: the wrong password is answered 401, retried and
    counted while the right one delivers."""
    _seed(mongo, mongo_db_name)
    config = _proxy_config(
        mongo,
        mongo_db_name,
        remote_write=[
            _destination(receiver, certs, "wrong", _secret_file(tmp_path, "wrong", WRONG_PASSWORD)),
            _destination(
                receiver, certs, "right", _secret_file(tmp_path, "right", OUTBOUND_PASSWORD)
            ),
        ],
    )
    proxy = ProxyProcess(tmp_path / "proxy", config)
    proxy.start()
    try:
        now = _ms()
        for offset, value in ((4000, 1.0), (1000, 2.0)):
            body = build_write_request(
                [({"__name__": "jobs_total", "pod": "a"}, [(now - offset, value)])]
            )
            assert proxy.post(body, WRITE_HEADERS)[0] == 204
        receiver.wait_for('jobs_total{view="ops",service="checkout"}', timeout=15)

        def retried() -> bool:
            attempts = proxy.metric(
                "enrichproxy_forward_requests_total", destination="wrong", code="401"
            )
            return (attempts or 0) >= 2

        deadline = time.monotonic() + 10
        while not retried():
            assert time.monotonic() < deadline, "the 401 was not retried"
            time.sleep(0.1)
        assert (proxy.metric("enrichproxy_forward_retries_total", destination="wrong") or 0) >= 2
        assert proxy.metric("enrichproxy_forward_samples_total", destination="wrong") is None
        assert (proxy.metric("enrichproxy_queue_samples", destination="wrong") or 0) >= 1
        assert proxy.log_lines("destination=wrong retrying")
        _assert_no_secret_shows(proxy)
    finally:
        proxy.stop()
