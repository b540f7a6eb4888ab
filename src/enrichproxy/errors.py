"""The exceptions enrichproxy raises at its edges.

::

    EnrichproxyError
    ├── RequestError            the client sent something we refuse; carries its HTTP status
    │   ├── DecodeError         400: malformed snappy or protobuf
    │   ├── PayloadTooLarge     413: declared or actual size over the limit
    │   ├── UnsupportedMediaType 415: content type or encoding we do not speak
    │   ├── LimitExceeded       400: a request-shape limit; carries the limit's name
    │   ├── Unauthorized        401: credentials missing or wrong (never says which part)
    │   ├── BadQuery            400: a debug endpoint's query parameter we cannot use
    │   ├── NotReloadable       400: POST /-/reload, but there is no configuration file
    │   └── RequestTimeout      408: the body did not arrive in time (connection closed)
    ├── ClientDisconnected      the client hung up before its body was read: no one to answer
    ├── Unavailable             503: our own transient problem; the sender must retry
    └── ConfigError             a bad configuration, with the YAML path of every problem;
                                500 when a reload meets it (the running one is kept)

The server maps ``RequestError`` and ``Unavailable`` to answers in one middleware. A transient
problem of our own is never a 4xx: remote-write senders drop data on 4xx (spec, §2).
"""

from __future__ import annotations


class EnrichproxyError(Exception):
    """Base of every error enrichproxy raises on purpose."""

    extra_headers: dict[str, str] = {}  # noqa: RUF012 (replaced per instance, never mutated)
    """Headers the handler adds on its way out (remote write 2.0's written counts)."""


class RequestError(EnrichproxyError):
    status: int = 400

    @property
    def headers(self) -> dict[str, str]:
        """Headers the answer must carry besides the status and the message."""
        return {}


class DecodeError(RequestError):
    status = 400


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class LimitExceeded(RequestError):
    """A request over one of the ``limits``: refused whole, so nothing of it is applied."""

    status = 400

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(f"limits.{limit} exceeded: {message}")
        self.limit = limit
        """The limit's key under ``limits`` (the ``limit`` label of its counter)."""


class Unauthorized(RequestError):
    """Missing or wrong credentials. The message is fixed: a client learns nothing about
    which part (scheme, user name, password, token) was wrong."""

    status = 401

    def __init__(self, challenge: str) -> None:
        super().__init__("unauthorized: valid credentials are required")
        self.challenge = challenge

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class BadQuery(RequestError):
    """A missing or unusable query parameter of a read-only endpoint (``/debug/explain``)."""

    status = 400


class NotReloadable(RequestError):
    """A reload was asked of an app created without a configuration file to read again."""

    status = 400


class RequestTimeout(RequestError):
    """The request body did not arrive within the body-read timeout: a stuck or malicious
    sender must not hold a connection and its buffer for ever. The connection is closed."""

    status = 408

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class ClientDisconnected(EnrichproxyError):
    """The client closed the connection before its request body was complete. Nothing was
    applied and no answer can reach it; counted, and logged at INFO (it is the client's
    doing, and its sender retries from its WAL)."""


class Unavailable(EnrichproxyError):
    """A transient condition of ours (not ready, queue full): 503, which senders retry."""

    status = 503

    def __init__(self, reason: str, retry_after_seconds: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds


class ConfigError(EnrichproxyError):
    """One or more configuration problems, each as ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
