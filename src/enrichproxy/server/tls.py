"""TLS contexts from the configuration: the only importer of ``ssl``.

The configuration checked that the PEM files can be opened; whether they hold a usable
certificate and key shows only when ``ssl`` loads them, here. Its errors become ConfigError
with the YAML path, so ``enrichproxy check`` and ``serve`` report a bad file like any other
configuration problem.
"""

from __future__ import annotations

import ssl

from enrichproxy.config.schema import ClientTLSConfig, Config, ServerTLSConfig
from enrichproxy.errors import ConfigError


def _describe(exc: OSError) -> str:
    """``ssl`` errors carry a library reason (``PEM_lib``, ``KEY_VALUES_MISMATCH``); plain
    OSErrors a strerror. Never the file's content."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


def server_context(tls: ServerTLSConfig, path: str = "tls") -> ssl.SSLContext:
    """The listener's context: our certificate chain and key; clients are not asked for one."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # Python's default today, stated so that no platform default can lower it: older versions
    # are deprecated (RFC 8996), and Prometheus' own TLS server has the same minimum.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except OSError as exc:
        raise ConfigError(
            [f"{path}.cert_file, {path}.key_file: cannot be used: {_describe(exc)}"]
        ) from None
    return context


_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
"""Prometheus' ``min_version`` spellings."""


def client_context(tls: ClientTLSConfig | None, path: str) -> ssl.SSLContext:
    """A destination's context, as Prometheus' ``tls_config`` describes it.

    ``server_name`` is not set here: it goes with each request (aiohttp's ``server_hostname``).
    """
    tls = tls or ClientTLSConfig()
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except OSError as exc:
        raise ConfigError([f"{path}.ca_file: cannot be used: {_describe(exc)}"]) from None
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except OSError as exc:
            raise ConfigError(
                [f"{path}.cert_file, {path}.key_file: cannot be used: {_describe(exc)}"]
            ) from None
    if tls.min_version is not None:
        # TLS 1.0 and 1.1 need the context's default floor lowered too (OpenSSL's security
        # level may still refuse them; Prometheus' Go client would accept them).
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check_tls(config: Config) -> None:
    """Load every TLS file of ``config`` as serving would; ConfigError listing each that fails."""
    problems: list[str] = []
    if config.tls is not None:
        try:
            server_context(config.tls)
        except ConfigError as exc:
            problems.extend(exc.problems)
    for index, destination in enumerate(config.remote_write):
        if destination.tls_config is not None:
            try:
                client_context(destination.tls_config, f"remote_write[{index}].tls_config")
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
