"""Real parts for integration tests: secantusdb as MongoDB, Debian's Prometheus, an exporter.

Everything listens on 127.0.0.1 on ports the kernel picked, keeps its files under a directory
the caller owns (pytest's ``tmp_path``) and is stopped by the caller (fixtures in conftest.py).
Child processes are also killed at interpreter exit, as a last resort if a teardown never ran.

The query and readiness helpers block. From an async test whose event loop also runs the code
under test, use the ``*_async`` variants (or ``asyncio.to_thread``) so that code keeps running.
See /work/shared/docs/components.md for how these parts behave.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from wsgiref.simple_server import WSGIServer

import yaml
from prometheus_client import CollectorRegistry, start_http_server
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from secantus import SecantusDBServer

from enrichproxy.model import Labels
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

LOCALHOST = "127.0.0.1"

PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMTOOL_BINARY = "/usr/bin/promtool"
INSTALL_HINT = "run `apt-get install -y prometheus` (Debian 12 ships Prometheus 2.42)"

REJECTION_MARKERS = ("out of order", "duplicate sample", "out of bounds", "rejected")
"""Lowercase fragments of the log lines a remote-write receiver writes for refused samples."""

STOP_TIMEOUT = 10.0
"""Seconds between SIGTERM and SIGKILL (Prometheus exits in well under 1 s, secantusd in ~2 s)."""

_LOG_TAIL_CHARS = 4000

# No proxy from the environment for 127.0.0.1, ever.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

JSON = dict[str, Any]


class MissingBinaryError(RuntimeError):
    """A program the integration tests need is not installed."""


class PrometheusAPIError(RuntimeError):
    """The Prometheus HTTP API answered with an error."""


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = LOCALHOST, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_binary(name: str, preferred: str) -> str:
    """``preferred`` if it exists, else ``name`` on PATH; MissingBinaryError with the fix if not."""
    if os.access(preferred, os.X_OK):
        return preferred
    found = shutil.which(name)
    if found is None:
        raise MissingBinaryError(f"{preferred} not found (and no {name!r} on PATH): {INSTALL_HINT}")
    return found


def find_prometheus() -> str:
    return find_binary("prometheus", PROMETHEUS_BINARY)


def find_promtool() -> str:
    return find_binary("promtool", PROMTOOL_BINARY)


def poll_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Call ``check`` until it returns True; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return text[-chars:]


# --- child processes ----------------------------------------------------------------------------

_live_processes: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live_processes)
        _live_processes.clear()
    for process in leftovers:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


class ManagedProcess:
    """One child process at a time, its stdout and stderr appended to ``log_path``.

    ``stop`` sends SIGTERM, waits up to ``STOP_TIMEOUT`` and then SIGKILLs; ``kill`` is SIGKILL
    straight away. Both reap the child and are no-ops when it is not running, so they are safe
    in teardown. The object can be started again after either.
    """

    def __init__(self, name: str, log_path: Path, port: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._port = port
        self._port_fixed = port is not None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _spawn(self, argv: Sequence[str], cwd: Path) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name}: {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches pytest, which tears down in order.
                start_new_session=True,
            )
        self._process = process
        with _live_lock:
            _live_processes.add(process)

    def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
        with _live_lock:
            _live_processes.discard(process)
        self._process = None

    def _check_alive(self) -> None:
        process = self._process
        if process is None:
            raise RuntimeError(f"{self.name} is not started")
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see ``stop_all``)."""
        if self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code (None if idle)."""
        process = self._process
        if process is None:
            return None
        self.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        self._reap()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL (like an OOM kill or a crash): no shutdown work, nothing flushed by the child."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        self._reap()

    def log_text(self) -> str:
        """Everything the child (and earlier runs of it) wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, *needles: str) -> list[str]:
        """Log lines containing any of ``needles``, compared case-insensitively."""
        lowered = [needle.lower() for needle in needles]
        return [
            line
            for line in self.log_text().splitlines()
            if any(needle in line.lower() for needle in lowered)
        ]

    def start(self, timeout: float = 20.0) -> None:
        raise NotImplementedError

    def _start_on_free_port(
        self, argv: Callable[[int], Sequence[str]], cwd: Path, wait: Callable[[], None]
    ) -> int:
        """Spawn ``argv(port)`` and ``wait``; the port. ``port`` None picks a free one, and a
        first start whose picked port got taken meanwhile is tried again on another."""
        port = self._fixed_port
        for attempt in range(3):
            chosen = port if port is not None else free_port()
            self._spawn(argv(chosen), cwd=cwd)
            try:
                wait()
            except RuntimeError:
                self._reap()
                in_use = "address already in use" in _tail(self.log_path, 2000).lower()
                if port is not None or not in_use or attempt == 2:
                    raise
                continue
            except BaseException:
                self.stop()
                raise
            return chosen
        raise AssertionError("unreachable")

    @property
    def _fixed_port(self) -> int | None:
        """The port this start must use: the one given, or the first start's for a restart."""
        return self._port if self._port_fixed or self.starts else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_all(processes: Iterable[ManagedProcess], timeout: float = STOP_TIMEOUT) -> None:
    """Stop several processes in parallel: SIGTERM to all first, then wait for each."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop(timeout)


# --- MongoDB: secantusdb ------------------------------------------------------------------------


def wait_for_mongo(
    uri: str, timeout: float = 20.0, alive: Callable[[], None] | None = None
) -> None:
    """Poll ``ping`` on ``uri`` until it answers; ``alive`` may raise to give up early."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    client: MongoClient[JSON] = MongoClient(
        uri, directConnection=True, serverSelectionTimeoutMS=200, connectTimeoutMS=200
    )
    try:
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                client.admin.command("ping")
                return
            except PyMongoError as exc:
                last_error = exc
                time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"MongoDB at {uri} not answering ping after {timeout:g} s: {last_error}")


def drop_database(uri: str, name: str) -> None:
    client: MongoClient[JSON] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


class MongoServer:
    """secantusdb served from this process's threads (``SecantusDBServer``); cannot restart.

    ``storage_path`` is a directory (created if missing) or ``":memory:"``. ``stop`` takes ~2 s.
    """

    def __init__(self, storage_path: Path | str = ":memory:", port: int = 0) -> None:
        self.storage_path = storage_path
        self._requested_port = port
        self._server: Any = None

    def start(self, timeout: float = 20.0) -> None:
        if self._server is not None:
            raise RuntimeError("MongoServer is already started")
        server = SecantusDBServer(
            host=LOCALHOST, port=self._requested_port, storage_path=str(self.storage_path)
        )
        try:
            server.start()
            wait_for_mongo(str(server.uri), timeout)
        except BaseException:
            server.stop()
            raise
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MongoServer is not started")
        return int(self._server.address[1])

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/``: a one-node replica set named ``secantus``."""
        return f"mongodb://{LOCALHOST}:{self.port}/"

    def drop_database(self, name: str) -> None:
        drop_database(self.uri, name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MongoProcess(ManagedProcess):
    """secantusdb as a child process (``python -m secantus``), killable and restartable.

    The port is fixed at the first start and kept, like the storage directory, so a restart
    after ``kill()`` (SIGKILL) or ``stop()`` comes back on the same URI with its data, except
    that a w:1 write acknowledged less than ~0.5 s before a SIGKILL can be lost (WiredTiger's
    journal is not flushed per commit): write with ``WriteConcern(j=True)`` what must survive.
    Clients see ``AutoReconnect`` on the first operation after the kill (a pooled connection
    died), then ``ServerSelectionTimeoutError`` until it is back, then reconnect by themselves.
    Files:
    ``workdir/data`` (WiredTiger), ``workdir/secantusd.toml`` (empty: it turns off the daemon's
    config auto-discovery in ./, ~/.secantus and /etc/secantus), ``workdir/secantusd.log``.
    """

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__("secantusd", workdir / "secantusd.log", port)
        self.extra_args = tuple(extra_args)
        """More daemon flags, e.g. ``--standalone`` (no change streams, like a real standalone)."""
        self.workdir = workdir
        self.storage_path = workdir / "data"
        self.config_path = workdir / "secantusd.toml"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MongoProcess has no port before its first start")
        return self._port

    @property
    def uri(self) -> str:
        return f"mongodb://{LOCALHOST}:{self.port}/"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait for ``ping``. Retries a first start whose random port got taken."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.touch()

        def argv(port: int) -> list[str]:
            self._port = port  # uri reads it
            return [
                sys.executable,
                "-m",
                "secantus",
                "--config",
                str(self.config_path),
                "--host",
                LOCALHOST,
                "--port",
                str(port),
                "--storage-path",
                str(self.storage_path),
                *self.extra_args,
            ]

        def wait() -> None:
            wait_for_mongo(self.uri, timeout, alive=self._check_alive)

        self._port = self._start_on_free_port(argv, self.workdir, wait)
        self.starts += 1

    async def start_async(self, timeout: float = 20.0) -> None:
        """``start`` in a worker thread, so the calling event loop keeps running."""
        await asyncio.to_thread(self.start, timeout)

    def restart(self, *, hard: bool = True, timeout: float = 20.0) -> None:
        """SIGKILL (``hard``) or SIGTERM it, then start again on the same port and storage."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    def drop_database(self, name: str) -> None:
        drop_database(self.uri, name)


# --- Prometheus ---------------------------------------------------------------------------------


def scrape_config(
    job: str,
    targets: Sequence[str],
    scrape_interval: str = "1s",
    *,
    scrape_timeout: str | None = None,
    labels: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSON:
    """One ``scrape_configs`` entry with static targets (``host:port``)."""
    static: JSON = {"targets": list(targets)}
    if labels:
        static["labels"] = dict(labels)
    config: JSON = {
        "job_name": job,
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_timeout or scrape_interval,
        "static_configs": [static],
    }
    config.update(extra)
    return config


def remote_write_config(
    url: str,
    *,
    batch_send_deadline: str = "200ms",
    min_backoff: str = "50ms",
    max_backoff: str = "1s",
    send_metadata: bool = True,
    metadata_send_interval: str = "10s",
    queue_config: Mapping[str, Any] | None = None,
    **extra: Any,
) -> JSON:
    """One ``remote_write`` entry, with the fast queue settings of components.md.

    ``queue_config`` adds or overrides queue keys (``max_samples_per_send``, ``capacity``, ...);
    ``extra`` adds top-level keys (``name``, ``write_relabel_configs``, ``headers``, ...).
    """
    queue: JSON = {
        "batch_send_deadline": batch_send_deadline,
        "min_backoff": min_backoff,
        "max_backoff": max_backoff,
    }
    queue.update(queue_config or {})
    config: JSON = {
        "url": url,
        "queue_config": queue,
        "metadata_config": {"send": send_metadata, "send_interval": metadata_send_interval},
    }
    config.update(extra)
    return config


def prometheus_config(
    *,
    scrape_configs: Iterable[Mapping[str, Any]] = (),
    remote_write: Iterable[Mapping[str, Any]] = (),
    external_labels: Mapping[str, str] | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    **extra: Any,
) -> JSON:
    """A whole prometheus.yml as a dict; the default (no arguments) suits a receiver."""
    global_section: JSON = {
        "scrape_interval": scrape_interval,
        "evaluation_interval": evaluation_interval,
    }
    if external_labels:
        global_section["external_labels"] = dict(external_labels)
    config: JSON = {"global": global_section}
    scrapes = [dict(item) for item in scrape_configs]
    if scrapes:
        config["scrape_configs"] = scrapes
    writes = [dict(item) for item in remote_write]
    if writes:
        config["remote_write"] = writes
    config.update(extra)
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def promtool_check_config(path: Path) -> str:
    """Run ``promtool check config``; its output, or AssertionError with it when it fails."""
    completed = subprocess.run(
        [find_promtool(), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise AssertionError(f"promtool check config {path} failed:\n{output}")
    return output


def _http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """(status, body) for any HTTP status; OSError only when nothing answered.

    ``context`` verifies an https server (e.g. one whose self-signed certificate is its CA).
    """
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    opener = _HTTP
    if context is not None:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())


def labels_from(mapping: Mapping[str, str]) -> Labels:
    """A mapping as a sorted ``Labels`` tuple (what ``encode_labels`` expects)."""
    return tuple(sorted(mapping.items()))


def build_write_request(
    series: Iterable[tuple[Mapping[str, str] | Labels, Iterable[tuple[int, float]]]],
) -> bytes:
    """A snappy-compressed remote-write 1.0 body from (labels, [(timestamp_ms, value)]) pairs."""
    encoded = []
    for labels, samples in series:
        label_set = labels_from(labels) if isinstance(labels, Mapping) else tuple(sorted(labels))
        encoded.append((encode_labels(label_set), list(samples)))
    return compress(encode_write_request(encoded))


def post_remote_write(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, str]:
    """POST a compressed body with a Prometheus sender's headers; (status, response text)."""
    status, content = _http(
        "POST",
        url,
        data=body,
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": "enrichproxy-tests",
        },
        timeout=timeout,
    )
    return status, content.decode(errors="replace")


def sample_value(item: Mapping[str, Any]) -> float:
    """The float of one instant-vector element of a query result."""
    return float(item["value"][1])


def values_by(result: Iterable[Mapping[str, Any]], label: str) -> dict[str, float]:
    """``{metric[label]: value}`` for an instant-query result."""
    return {str(item["metric"].get(label, "")): sample_value(item) for item in result}


class PrometheusProcess(ManagedProcess):
    """``/usr/bin/prometheus`` with its own config, TSDB and log under ``workdir``.

    ``receiver=True`` adds ``--web.enable-remote-write-receiver`` (``write_url`` accepts RW 1.0).
    ``config`` is a prometheus.yml as a dict (see ``prometheus_config``); it is written to
    ``workdir/prometheus.yml`` at each start. The TSDB (``workdir/data``) is kept across restarts.

    Ready in ~0.1 s, but a sender's first scrape comes ~5 s after start (2.42's scrape manager
    applies targets on a 5 s ticker), then every ``scrape_interval``; its samples reach a
    receiver ~0.2 s later. Start senders early and give the first ``wait_for`` >= 10 s.

    Behind ``--web.config.file`` (in ``extra_args``) with TLS and basic auth, pass
    ``client_ssl`` (the URLs become https) and ``client_headers`` (``Authorization``): the
    readiness poll and the API queries use them.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any] | None = None,
        *,
        receiver: bool = False,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        binary: str | None = None,
        name: str = "prometheus",
        client_ssl: ssl.SSLContext | None = None,
        client_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, workdir / "prometheus.log", port)
        self.client_ssl = client_ssl
        self.client_headers = dict(client_headers or {})
        self.workdir = workdir
        self.config: JSON = dict(config) if config is not None else prometheus_config()
        self.receiver = receiver
        self.extra_args = list(extra_args)
        self.config_path = workdir / "prometheus.yml"
        self.storage_path = workdir / "data"
        self.binary = binary

    # -- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} has no port before its first start")
        return self._port

    @property
    def url(self) -> str:
        scheme = "http" if self.client_ssl is None else "https"
        return f"{scheme}://{LOCALHOST}:{self.port}"

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def argv(self) -> list[str]:
        argv = [
            self.binary or find_prometheus(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address={LOCALHOST}:{self.port}",
        ]
        if self.receiver:
            argv.append("--web.enable-remote-write-receiver")
        return argv + self.extra_args

    def _ready(self) -> bool:
        self._check_alive()
        try:
            status, _ = _http(
                "GET",
                f"{self.url}/-/ready",
                headers=self.client_headers,
                timeout=1.0,
                context=self.client_ssl,
            )
        except OSError:
            return False
        return status == 200

    def start(self, timeout: float = 20.0) -> None:
        """Write the config, start, wait for ``GET /-/ready``. Retries a taken random port."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.config)

        def argv(port: int) -> list[str]:
            self._port = port  # argv() and url read it
            return self.argv()

        def wait() -> None:
            poll_until(self._ready, timeout, f"{self.name} at {self.url}/-/ready")

        self._port = self._start_on_free_port(argv, self.workdir, wait)
        self.starts += 1

    async def start_async(self, timeout: float = 20.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    # -- HTTP API

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>``; its ``data``, or PrometheusAPIError."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = _http("GET", url, headers=self.client_headers, context=self.client_ssl)
        try:
            payload = json.loads(body)
        except ValueError:
            raise PrometheusAPIError(f"GET {url}: HTTP {status}: {body[:500]!r}") from None
        if status != 200 or payload.get("status") != "success":
            raise PrometheusAPIError(
                f"GET {url}: HTTP {status}: {payload.get('errorType')}: {payload.get('error')}"
            )
        return payload["data"]

    def query(self, promql: str, time: float | None = None) -> list[JSON]:
        """Instant query; ``data.result`` (for a vector: ``[{metric, value: [t, "v"]}]``)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = repr(time)
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):  # result is one [t, "v"]
            return [{"metric": {}, "value": data["result"]}]
        result: list[JSON] = data["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float | str = 1.0
    ) -> list[JSON]:
        """Range query; ``data.result`` (``[{metric, values: [[t, "v"], ...]}]``)."""
        params = {"query": promql, "start": repr(start), "end": repr(end), "step": str(step)}
        result: list[JSON] = self.api("query_range", params)["result"]
        return result

    def series(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[JSON]:
        """``/api/v1/series?match[]=...``: the label sets of matching series."""
        params = {"match[]": match}
        if start is not None:
            params["start"] = repr(start)
        if end is not None:
            params["end"] = repr(end)
        result: list[JSON] = self.api("series", params)
        return result

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[JSON]], bool] = bool,
        timeout: float = 15.0,
        interval: float = 0.1,
    ) -> list[JSON]:
        """Poll ``query(promql)`` until ``predicate(result)``; the result, or AssertionError."""
        deadline = time.monotonic() + timeout
        last: list[JSON] | None = None
        last_error: Exception | None = None
        while True:
            try:
                last = self.query(promql)
                last_error = None
                if predicate(last):
                    return last
            except (PrometheusAPIError, OSError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(promql, timeout, last, last_error))
            time.sleep(interval)

    async def query_async(self, promql: str, time: float | None = None) -> list[JSON]:
        return await asyncio.to_thread(self.query, promql, time)

    async def wait_for_async(
        self,
        promql: str,
        predicate: Callable[[list[JSON]], bool] = bool,
        timeout: float = 15.0,
        interval: float = 0.1,
    ) -> list[JSON]:
        """``wait_for`` that sleeps with ``asyncio.sleep`` and queries from a worker thread."""
        deadline = time.monotonic() + timeout
        last: list[JSON] | None = None
        last_error: Exception | None = None
        while True:
            try:
                last = await self.query_async(promql)
                last_error = None
                if predicate(last):
                    return last
            except (PrometheusAPIError, OSError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(promql, timeout, last, last_error))
            await asyncio.sleep(interval)

    def _timeout_message(
        self,
        promql: str,
        timeout: float,
        last: list[JSON] | None,
        last_error: Exception | None,
    ) -> str:
        message = f"{self.name}: {promql!r} did not satisfy the predicate within {timeout:g} s"
        message += f"; last result: {json.dumps(last)}"
        if last_error is not None:
            message += f"; last error: {last_error}"
        return message

    def remote_write(self, body: bytes) -> tuple[int, str]:
        """POST a compressed remote-write body to this receiver; (status, response text)."""
        return post_remote_write(self.write_url, body)

    def rejection_lines(self) -> list[str]:
        """Log lines about refused samples (out of order, duplicate, out of bounds, rejected)."""
        return self.log_lines(*REJECTION_MARKERS)


class PrometheusFactory:
    """Starts Prometheus processes under ``root`` (one subdirectory each); ``close`` stops all."""

    def __init__(self, root: Path, binary: str | None = None) -> None:
        self.root = root
        self.binary = binary
        self.processes: list[PrometheusProcess] = []

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        receiver: bool = False,
        extra_args: Sequence[str] = (),
        name: str = "sender",
        start: bool = True,
    ) -> PrometheusProcess:
        workdir = self.root / f"{name}-{len(self.processes)}"
        process = PrometheusProcess(
            workdir,
            config,
            receiver=receiver,
            extra_args=extra_args,
            binary=self.binary,
            name=f"prometheus {name}",
        )
        self.processes.append(process)
        if start:
            process.start()
        return process

    def close(self) -> None:
        stop_all(self.processes)


# --- exporter -----------------------------------------------------------------------------------


class Exporter:
    """A prometheus_client exporter on 127.0.0.1 serving its own ``CollectorRegistry``.

    Create metrics with ``registry=exporter.registry``; scrape ``exporter.target``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("exporter is already started")
        # Port 0: the kernel picks a free port and the server keeps it bound (no race).
        server, thread = start_http_server(0, addr=LOCALHOST, registry=self.registry)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("exporter is not started")
        return int(self._server.server_port)

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``, for ``scrape_config(targets=[...])``."""
        return f"{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def scrape(self) -> str:
        """The exposition text, fetched over HTTP like Prometheus does."""
        status, body = _http("GET", self.url)
        if status != 200:
            raise AssertionError(f"exporter answered HTTP {status}")
        return body.decode()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- enrichproxy itself -------------------------------------------------------------------------


class ProxyProcess(ManagedProcess):
    """``python -m enrichproxy serve`` with a config written from a dict, on a free port.

    ``config`` is the YAML document as a dict; ``listen`` is filled in. ``start`` waits for
    ``/-/ready`` (metadata loaded) unless ``wait_ready=False``, then only for ``/-/healthy``.

    With ``tls`` in the config, pass ``client_ssl`` (a context that trusts its certificate):
    the URLs become https. ``client_headers`` (e.g. ``Authorization``) go with every request.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        client_ssl: ssl.SSLContext | None = None,
        client_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("enrichproxy", workdir / "enrichproxy.log")
        self.workdir = workdir
        self.port = free_port()
        self.config = {**config, "listen": f"{LOCALHOST}:{self.port}"}
        self.config_path = workdir / "enrichproxy.yaml"
        self.client_ssl = client_ssl
        self.client_headers = dict(client_headers or {})

    @property
    def url(self) -> str:
        scheme = "http" if self.client_ssl is None else "https"
        return f"{scheme}://{LOCALHOST}:{self.port}"

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.config)
        self._spawn(
            [sys.executable, "-m", "enrichproxy", "serve", "--config", str(self.config_path)],
            cwd=self.workdir,
        )
        path = "/-/ready" if wait_ready else "/-/healthy"

        def answered() -> bool:
            self._check_alive()
            try:
                return self.get(path)[0] == 200
            except OSError:
                return False

        try:
            poll_until(answered, timeout, f"enrichproxy {path}")
        except BaseException:
            self.stop()
            raise

    def get(self, path: str) -> tuple[int, str]:
        status, body = _http(
            "GET", f"{self.url}{path}", headers=self.client_headers, context=self.client_ssl
        )
        return status, body.decode(errors="replace")

    def post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        status, content = _http(
            "POST",
            self.write_url,
            data=body,
            headers={**self.client_headers, **headers},
            context=self.client_ssl,
        )
        return status, content.decode(errors="replace")

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the proxy's own /metrics, or None when it is not exposed."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def reload(self, config: Mapping[str, Any] | None = None, text: str | None = None) -> None:
        """SIGHUP, after writing ``config`` (a dict; ``listen`` is kept) or the raw ``text`` to
        the config file. Returns at once: the reload metrics tell how it went."""
        if config is not None:
            self.config = {**config, "listen": self.config["listen"]}
            write_config(self.config_path, self.config)
        if text is not None:
            self.config_path.write_text(text)
        self._check_alive()
        assert self.pid is not None
        os.kill(self.pid, signal.SIGHUP)
