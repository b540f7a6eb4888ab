"""Test material for TLS and authentication, made by the real tools: openssl and htpasswd.

A certificate is self-signed and is its own CA: a client verifies it by trusting exactly that
file. The ``cryptography`` package is not a dependency; the ``openssl`` CLI is on every Debian.
Prometheus' ``--web.config.file`` wants bcrypt hashes, which ``htpasswd`` (apache2-utils,
installed by ``make test-deps``) makes.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "/usr/bin/openssl"
HTPASSWD_HINT = "htpasswd not found: run `make test-deps` (Debian package apache2-utils)"


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    def trusted_by_client(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context that trusts this certificate and nothing else."""
        context = ssl.create_default_context(cafile=str(self.cert_file))
        context.check_hostname = check_hostname
        return context

    def as_client_identity(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """``context``, presenting this certificate to servers that ask for one."""
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def self_signed_certificate(
    directory: Path, name: str, subject_alt_name: str = "IP:127.0.0.1"
) -> Certificate:
    """A fresh RSA key and a one-day certificate for ``subject_alt_name`` (``IP:...`` or
    ``DNS:...``), self-signed, as ``directory/name.crt`` and ``directory/name.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={subject_alt_name}",
            "-keyout",
            str(key_file),
            "-out",
            str(cert_file),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert_file, key_file)


def bcrypt_hash(username: str, password: str) -> str:
    """The bcrypt hash of ``password`` (cost 10) for Prometheus' ``basic_auth_users``."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise AssertionError(HTPASSWD_HINT)
    completed = subprocess.run(
        [htpasswd, "-nbBC", "10", username, password],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return completed.stdout.strip().partition(":")[2]


def basic_authorization(username: str, password: str) -> dict[str, str]:
    """An ``Authorization`` header for HTTP basic auth, built independently of enrichproxy."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
