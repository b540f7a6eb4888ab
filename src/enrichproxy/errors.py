"""The exceptions enrichproxy raises at its edges.

::

    EnrichproxyError
    ├── RequestError            the client sent something we refuse; carries its HTTP status
    │   ├── DecodeError         400: malformed snappy or protobuf
    │   ├── PayloadTooLarge     413: declared or actual size over the limit
    │   ├── UnsupportedMediaType 415: content type or encoding we do not speak
    │   ├── LimitExceeded       400: a request-shape limit
    │   └── BadQuery            400: a debug endpoint's query parameter we cannot use
    ├── Unavailable             503: our own transient problem; the sender must retry
    └── ConfigError             a bad configuration, with the YAML path of every problem

The server maps ``RequestError`` and ``Unavailable`` to answers in one middleware. A transient
problem of our own is never a 4xx: remote-write senders drop data on 4xx (spec, §2).
"""

from __future__ import annotations


class EnrichproxyError(Exception):
    """Base of every error enrichproxy raises on purpose."""


class RequestError(EnrichproxyError):
    status: int = 400


class DecodeError(RequestError):
    status = 400


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class LimitExceeded(RequestError):
    status = 400


class BadQuery(RequestError):
    """A missing or unusable query parameter of a read-only endpoint (``/debug/explain``)."""

    status = 400


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
