"""Configuration of access control and limits: ``auth``, ``tls``, ``limits``, a destination's
credentials and ``tls_config``, ``views[].max_series``. Problems name the YAML path; secrets
come from files read at start and never show in a problem, a repr or a str."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enrichproxy.config.schema import (
    AuthConfig,
    BasicAuthConfig,
    ClientTLSConfig,
    Config,
    LimitsConfig,
    Secret,
    ServerTLSConfig,
    parse_config,
)
from enrichproxy.errors import ConfigError

DESTINATION = "https://127.0.0.1:9090/api/v1/write"
SECRET = "s3cr3t-do-not-show"


def document(**top: Any) -> dict[str, Any]:
    """A minimal valid configuration with ``top`` merged in (``remote_write`` entries are
    merged over one destination)."""
    destination: dict[str, Any] = {"url": DESTINATION, **top.pop("destination", {})}
    return {
        "views": [{"name": "ops", "keep": ["service"], **top.pop("view", {})}],
        "remote_write": [destination],
        **top,
    }


def parse(**top: Any) -> Config:
    return parse_config(document(**top))


def problems(**top: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(**top)
    for problem in caught.value.problems:
        assert SECRET not in problem
    return caught.value.problems


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n", encoding="utf-8")  # whitespace around it is not part of it
    return path


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "file.pem"
    path.write_text("not checked here: ssl loads it (enrichproxy.server.tls)\n", encoding="utf-8")
    return path


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_are_open_unencrypted_and_unlimited() -> None:
    config = parse()
    assert config.auth is None
    assert config.tls is None
    assert config.limits == LimitsConfig(0, 0, 0, 0)
    assert not config.limits.checks_labels
    assert config.views[0].max_series == 0
    destination = config.remote_write[0]
    assert (destination.basic_auth, destination.bearer_token, destination.tls_config) == (
        None,
        None,
        None,
    )


# --- inbound -------------------------------------------------------------------------------------


def test_inbound_bearer_token_is_read_from_its_file(secret_file: Path) -> None:
    config = parse(auth={"bearer_token_file": str(secret_file)})
    assert config.auth == AuthConfig(bearer_token=Secret(SECRET))


def test_inbound_basic_auth_reads_the_password_file(secret_file: Path) -> None:
    config = parse(
        auth={"basic_auth": {"username": "prometheus", "password_file": str(secret_file)}}
    )
    assert config.auth == AuthConfig(basic_auth=BasicAuthConfig("prometheus", Secret(SECRET)))


def test_secrets_never_show_in_repr_or_str(secret_file: Path) -> None:
    config = parse(
        auth={"bearer_token_file": str(secret_file)},
        destination={"basic_auth": {"username": "u", "password": SECRET}},
    )
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert str(Secret(SECRET)) == "<redacted>"
    assert repr(Secret(SECRET)) == "Secret(<redacted>)"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({}, "auth: give exactly one of bearer_token_file, basic_auth"),
        (
            {"bearer_token_file": "{file}", "basic_auth": {"username": "u"}},
            "auth: give exactly one of bearer_token_file, basic_auth",
        ),
        (
            {"basic_auth": {"username": "u", "password": SECRET}},
            "auth.basic_auth.password: unknown key (did you mean 'password_file'?)",
        ),
        (
            {"basic_auth": {"password_file": "{file}"}},
            "auth.basic_auth.username: is required",
        ),
        (
            {"basic_auth": {"username": "a:b", "password_file": "{file}"}},
            "auth.basic_auth.username: must not contain ':' (basic auth separates user and"
            " password by it)",
        ),
        ({"bearer_token": SECRET}, "auth.bearer_token: unknown key"),
    ],
)
def test_inbound_auth_problems(secret_file: Path, auth: dict[str, Any], expected: str) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return str(secret_file) if value == "{file}" else value

    found = problems(auth=fill(auth))
    assert any(problem.startswith(expected) for problem in found), found


def test_a_missing_or_empty_secret_file_names_the_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    missing = tmp_path / "missing"
    assert problems(auth={"bearer_token_file": str(missing)}) == [
        f"auth.bearer_token_file: cannot read {str(missing)!r}: No such file or directory"
    ]
    assert problems(
        auth={"basic_auth": {"username": "u", "password_file": str(empty)}},
    ) == [f"auth.basic_auth.password_file: {str(empty)!r} is empty"]


def test_listener_tls_needs_both_readable_files(tmp_path: Path, pem: Path) -> None:
    assert parse(tls={"cert_file": str(pem), "key_file": str(pem)}).tls == ServerTLSConfig(
        str(pem), str(pem)
    )
    missing = tmp_path / "missing.pem"
    assert problems(tls={"cert_file": str(pem)}) == ["tls.key_file: is required"]
    assert problems(tls={"cert_file": str(pem), "key_file": str(missing)}) == [
        f"tls.key_file: cannot read {str(missing)!r}: No such file or directory"
    ]


# --- outbound ------------------------------------------------------------------------------------


def test_destination_basic_auth_takes_a_password_or_a_password_file(secret_file: Path) -> None:
    inline = parse(destination={"basic_auth": {"username": "u", "password": SECRET}})
    from_file = parse(
        destination={"basic_auth": {"username": "u", "password_file": str(secret_file)}}
    )
    assert inline.remote_write[0].basic_auth == BasicAuthConfig("u", Secret(SECRET))
    assert from_file.remote_write[0].basic_auth == inline.remote_write[0].basic_auth


def test_destination_bearer_token_inline_or_from_a_file(secret_file: Path) -> None:
    inline = parse(destination={"bearer_token": SECRET})
    from_file = parse(destination={"bearer_token_file": str(secret_file)})
    assert inline.remote_write[0].bearer_token == Secret(SECRET)
    assert from_file.remote_write[0].bearer_token == Secret(SECRET)


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        (
            {"basic_auth": {"username": "u", "password": SECRET}, "bearer_token": SECRET},
            [
                "remote_write[0].bearer_token: give at most one of basic_auth, authorization,"
                " bearer_token, bearer_token_file"
            ],
        ),
        (
            {"bearer_token": SECRET, "headers": {"authorization": "Basic x"}},
            ["remote_write[0].headers.authorization: conflicts with bearer_token"],
        ),
        (
            {"basic_auth": {"username": "u", "password": SECRET, "password_file": "/x"}},
            ["remote_write[0].basic_auth: give exactly one of password, password_file"],
        ),
        (
            {"basic_auth": {"username": "u"}},
            ["remote_write[0].basic_auth: give exactly one of password, password_file"],
        ),
        (
            {"url": f"https://user:{SECRET}@127.0.0.1:9090/api/v1/write"},
            ["remote_write[0].url: credentials in the URL are not allowed: use basic_auth"],
        ),
        (
            {"url": "http://127.0.0.1:9090/api/v1/write", "tls_config": {}},
            ["remote_write[0].tls_config: is only used with an https:// url"],
        ),
        (
            {"tls_config": {"cert_file": "{pem}"}},
            [
                "remote_write[0].tls_config: give cert_file and key_file together (the client"
                " certificate)"
            ],
        ),
        (
            {"tls_config": {"insecure_skip_verify": "yes"}},
            ["remote_write[0].tls_config.insecure_skip_verify: must be true or false, got 'yes'"],
        ),
        (
            {"headers": {"Content-Type": "text/plain"}},
            [
                "remote_write[0].headers.Content-Type: is a reserved remote-write header and"
                " cannot be set"
            ],
        ),
    ],
)
def test_destination_credential_and_tls_problems(
    pem: Path, destination: dict[str, Any], expected: list[str]
) -> None:
    tls = destination.get("tls_config")
    if isinstance(tls, dict):
        destination["tls_config"] = {k: str(pem) if v == "{pem}" else v for k, v in tls.items()}
    assert problems(destination=destination) == expected


def test_destination_tls_config_keys(pem: Path) -> None:
    config = parse(
        destination={
            "tls_config": {
                "ca_file": str(pem),
                "cert_file": str(pem),
                "key_file": str(pem),
                "server_name": "receiver.test",
                "insecure_skip_verify": True,
            }
        }
    )
    assert config.remote_write[0].tls_config == ClientTLSConfig(
        str(pem), str(pem), str(pem), "receiver.test", True
    )


# --- limits --------------------------------------------------------------------------------------


def test_limits_and_view_cap_are_read() -> None:
    config = parse(
        limits={
            "max_series_per_request": 10,
            "max_labels_per_series": 5,
            "max_label_name_length": 20,
            "max_label_value_length": 30,
        },
        view={"max_series": 100},
    )
    assert config.limits == LimitsConfig(10, 5, 20, 30)
    assert config.limits.checks_labels
    assert config.views[0].max_series == 100


def test_limit_problems_name_the_key() -> None:
    assert problems(limits={"max_series_per_request": -1, "max_labels": 3}) == [
        "limits.max_labels: unknown key (did you mean 'max_labels_per_series'?)",
        "limits.max_series_per_request: must be an integer, 0 or more (0: no limit), got -1",
    ]
    assert problems(view={"max_series": "many"}) == [
        "views[0].max_series: must be an integer, 0 or more (0: no limit), got 'many'"
    ]
