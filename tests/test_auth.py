"""Credentials: inbound checks in constant time that never say which part failed, and the
outbound Authorization header, whose secret shows nowhere but on the wire."""

from __future__ import annotations

import base64

import pytest
from tlsparts import basic_authorization

from enrichproxy.config.schema import AuthConfig, BasicAuthConfig, Secret
from enrichproxy.errors import Unauthorized
from enrichproxy.server.auth import (
    Authenticator,
    AuthFailure,
    authenticator_for,
    basic_credentials,
    outbound_authorization,
)

PASSWORD = "pa:ss wörd"  # a colon and non-ASCII: both allowed in a password
TOKEN = "tok-3n"
BASIC = AuthConfig(basic_auth=BasicAuthConfig("prometheus", Secret(PASSWORD)))
BEARER = AuthConfig(bearer_token=Secret(TOKEN))


def _basic(username: str, password: str) -> str:
    return basic_authorization(username, password)["Authorization"]


@pytest.mark.parametrize(
    ("header", "outcome"),
    [
        (None, AuthFailure.MISSING),
        ("", AuthFailure.MISSING),
        (_basic("prometheus", PASSWORD), None),
        ("basic " + _basic("prometheus", PASSWORD).split()[1], None),  # scheme is case-blind
        (_basic("prometheus", "wrong"), AuthFailure.INVALID),
        (_basic("someone", PASSWORD), AuthFailure.INVALID),
        (_basic("prometheus", PASSWORD + "x"), AuthFailure.INVALID),
        ("Basic !!!not-base64", AuthFailure.INVALID),
        ("Basic " + base64.b64encode(b"no colon").decode(), AuthFailure.INVALID),
        ("Basic", AuthFailure.INVALID),
        (f"Bearer {TOKEN}", AuthFailure.INVALID),  # the other scheme
        ("Basic Zm9v\u00e9", AuthFailure.INVALID),  # not ASCII
    ],
)
def test_basic_auth(header: str | None, outcome: AuthFailure | None) -> None:
    assert Authenticator(BASIC).check(header) is outcome


@pytest.mark.parametrize(
    ("header", "outcome"),
    [
        (None, AuthFailure.MISSING),
        (f"Bearer {TOKEN}", None),
        (f"bearer  {TOKEN} ", None),
        (f"Bearer {TOKEN}x", AuthFailure.INVALID),
        (f"Bearer {TOKEN[:-1]}", AuthFailure.INVALID),
        ("Bearer", AuthFailure.INVALID),
        (_basic("prometheus", TOKEN), AuthFailure.INVALID),
        ("Bearer t\udcffk", AuthFailure.INVALID),  # undecodable header bytes, as aiohttp has them
    ],
)
def test_bearer_token(header: str | None, outcome: AuthFailure | None) -> None:
    assert Authenticator(BEARER).check(header) is outcome


def test_the_challenge_names_the_scheme_and_never_the_secret() -> None:
    assert Authenticator(BASIC).challenge == 'Basic realm="enrichproxy", charset="UTF-8"'
    assert Authenticator(BEARER).challenge == 'Bearer realm="enrichproxy"'
    for config, secret in ((BASIC, PASSWORD), (BEARER, TOKEN)):
        authenticator = Authenticator(config)
        assert secret not in repr(authenticator)
        assert secret not in repr(config)


def test_an_authenticator_is_made_once_per_configuration() -> None:
    assert authenticator_for(BEARER) is authenticator_for(AuthConfig(bearer_token=Secret(TOKEN)))
    assert authenticator_for(BEARER) is not authenticator_for(BASIC)


def test_the_refusal_is_the_same_whatever_was_wrong() -> None:
    """The answer's message and header are fixed: only the metric's reason differs."""
    refused = Unauthorized(Authenticator(BASIC).challenge)
    assert refused.status == 401
    assert str(refused) == "unauthorized: valid credentials are required"
    assert refused.headers == {"WWW-Authenticate": Authenticator(BASIC).challenge}


def test_outbound_authorization_header() -> None:
    assert outbound_authorization(None, None) == {}
    assert outbound_authorization(None, Secret(TOKEN)) == {"Authorization": f"Bearer {TOKEN}"}
    basic = outbound_authorization(BasicAuthConfig("enrichproxy", Secret(PASSWORD)), None)
    assert basic == basic_authorization("enrichproxy", PASSWORD)
    assert basic_credentials("u", "p") == "Basic dTpw"
