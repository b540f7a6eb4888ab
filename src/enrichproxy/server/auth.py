"""HTTP credentials: checking the ones a client sends us, building the ones we send.

Pure: no I/O (the secrets were read from their files when the configuration was), nothing
logged. Inbound credentials are compared in constant time, as SHA-256 digests so that not even
their length shows in the timing, and a failure reports only ``missing`` or ``invalid`` (for
metrics): whether the user name or the password was wrong is never told apart.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac

from enrichproxy.config.schema import AuthConfig, BasicAuthConfig, Secret

REALM = "enrichproxy"


class AuthFailure(enum.Enum):
    """Why a request was refused: the ``reason`` label of the failure counter, never sent."""

    MISSING = "missing"
    """No Authorization header."""
    INVALID = "invalid"
    """Another scheme, a malformed header, or wrong credentials."""


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def basic_credentials(username: str, password: str) -> str:
    """The Authorization header value of HTTP basic auth (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def bearer_credentials(token: str) -> str:
    return f"Bearer {token}"


def outbound_authorization(
    basic_auth: BasicAuthConfig | None, bearer_token: Secret | None, scheme: str = "Bearer"
) -> dict[str, str]:
    """The Authorization header a destination's requests carry, if it has credentials
    (``scheme``: Prometheus' ``authorization.type``)."""
    if basic_auth is not None:
        return {"Authorization": basic_credentials(basic_auth.username, basic_auth.password.value)}
    if bearer_token is not None:
        if scheme == "Bearer":
            return {"Authorization": bearer_credentials(bearer_token.value)}
        return {"Authorization": f"{scheme} {bearer_token.value}"}
    return {}


class Authenticator:
    """Checks the Authorization header of inbound requests against ``auth``.

    Built once per configuration: only the digest of the expected credentials is kept.
    """

    __slots__ = ("_expected", "_scheme", "challenge")

    def __init__(self, auth: AuthConfig) -> None:
        if auth.basic_auth is not None:
            self._scheme = "basic"
            expected = f"{auth.basic_auth.username}:{auth.basic_auth.password.value}".encode()
            self.challenge = f'Basic realm="{REALM}", charset="UTF-8"'
        elif auth.bearer_token is not None:
            self._scheme = "bearer"
            expected = auth.bearer_token.value.encode()
            self.challenge = f'Bearer realm="{REALM}"'
        else:
            raise ValueError("auth has no credentials")
        self._expected = _digest(expected)

    def __repr__(self) -> str:
        return f"Authenticator({self._scheme})"

    def check(self, header: str | None) -> AuthFailure | None:
        """None when ``header`` (the request's Authorization value) carries the credentials."""
        if not header:
            return AuthFailure.MISSING
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != self._scheme:
            return AuthFailure.INVALID
        credentials = credentials.strip()
        if self._scheme == "basic":
            try:
                presented = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return AuthFailure.INVALID
        else:
            # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them back.
            presented = credentials.encode("utf-8", "surrogateescape")
        # One comparison of the whole "user:password": which half differs cannot show.
        if hmac.compare_digest(_digest(presented), self._expected):
            return None
        return AuthFailure.INVALID


@functools.lru_cache(maxsize=8)
def authenticator_for(auth: AuthConfig) -> Authenticator:
    """The Authenticator of ``auth``, made once: a request pays one dict lookup, and a new
    configuration (a reload) gets its own without anyone having to rebuild it."""
    return Authenticator(auth)
