"""Podman for the container tests (tests/test_containers.py): the host preparation, the image
build as the README gives it, containers and compose projects that are always removed, and
reports that say which service failed and why.

Everything here drives the real tools (podman, docker-compose) as subprocesses; nothing is
mocked. Every wait is bounded in time and names what it waited for.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PREPARE_HOST = REPO / "deploy" / "podman" / "prepare-host.sh"
IMAGE = "localhost/enrichproxy:0.1.0"
# The README's build command. `--format docker`: Podman's default OCI format drops HEALTHCHECK.
BUILD_ARGV = ["podman", "build", "--format", "docker", "-t", IMAGE, "-f", "Containerfile", "."]
# prepare-host.sh: 2 means the machine cannot run containers (the reason is on stderr).
CANNOT_RUN_CONTAINERS = 2
# A cold machine installs Podman, debootstraps a base and builds three stand-ins (about 6 min
# on 2 cores); a warm one only checks (seconds).
PREPARE_TIMEOUT_S = 1500.0
BUILD_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 120.0
# Podman runs health checks from systemd timers; without systemd nothing runs them, so the
# tests run them on the schedule compose.yaml asks for, at most this often.
HEALTH_DRIVER_INTERVAL_S = 2.0
LOG_TAIL_LINES = 25
# The host's CA bundle, mounted for the RUN steps of a build where the machine's outbound TLS
# is intercepted (a CA in LOCAL_CA_DIR). A mount is never stored in a layer.
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")

JSON = dict[str, Any]


class CannotRunContainersError(RuntimeError):
    """This machine cannot run containers (not root, or no Podman and no apt)."""


def run(
    argv: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, AssertionError showing the command and its output."""
    completed = subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {completed.returncode}:\n"
            f"{completed.stdout[-4000:]}{completed.stderr[-4000:]}"
        )
    return completed


def prepare_host() -> float:
    """Run deploy/podman/prepare-host.sh; its duration in seconds.

    CannotRunContainersError when the script says this machine cannot run containers.
    """
    started = time.monotonic()
    completed = run(["bash", str(PREPARE_HOST)], timeout=PREPARE_TIMEOUT_S, check=False)
    if completed.returncode == CANNOT_RUN_CONTAINERS:
        raise CannotRunContainersError(completed.stderr.strip())
    if completed.returncode != 0:
        raise AssertionError(
            f"{PREPARE_HOST.relative_to(REPO)} failed ({completed.returncode}):\n"
            f"{completed.stderr[-6000:]}"
        )
    return time.monotonic() - started


def build_volumes() -> list[str]:
    """The build's mount of the host's CA bundle, where a local CA says TLS is intercepted."""
    if any(LOCAL_CA_DIR.glob("*.crt")):
        return ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    return []


def build_image() -> float:
    """Build the image with the README's command (plus the CA mount where needed); seconds."""
    started = time.monotonic()
    argv = [*BUILD_ARGV[:2], *build_volumes(), *BUILD_ARGV[2:]]
    run(argv, timeout=BUILD_TIMEOUT_S)
    return time.monotonic() - started


def image_inspect(image: str) -> JSON:
    data: list[JSON] = json.loads(run(["podman", "image", "inspect", image]).stdout)
    return data[0]


def container_inspect(name: str) -> JSON:
    data: list[JSON] = json.loads(run(["podman", "container", "inspect", name]).stdout)
    return data[0]


def logs(name: str) -> str:
    completed = run(["podman", "logs", name], check=False)
    return completed.stdout + completed.stderr


def http_get(url: str, timeout: float = 5.0, accept: str | None = None) -> tuple[int, str]:
    """(status, body) for any HTTP status; (0, reason) when nothing answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 1.0,
    explain: Callable[[], str] | None = None,
) -> float:
    """Seconds until ``check()`` held; AssertionError naming ``what`` (and ``explain()``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started >= timeout:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)
    return time.monotonic() - started


def has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


@dataclass
class HealthDriver:
    """Runs the health checks of the containers ``names()`` lists where systemd does not.

    Podman schedules health checks with systemd timers; on a machine without systemd a
    container stays "starting" for ever and nothing waiting on it (docker-compose's
    ``condition: service_healthy``) goes on. This thread does what the timer would: `podman
    healthcheck run` for each container, every HEALTH_DRIVER_INTERVAL_S.
    """

    names: Callable[[], list[str]]
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(HEALTH_DRIVER_INTERVAL_S):
            for name in self.names():
                run(["podman", "healthcheck", "run", name], check=False, timeout=30)

    def __enter__(self) -> HealthDriver:
        if not has_systemd():
            self._thread = threading.Thread(target=self._loop, name="health-driver", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


def health_report(name: str) -> str:
    """One container's state, health, last health check output and log tail."""
    try:
        state = container_inspect(name)["State"]
    except AssertionError as exc:
        return f"{name}: cannot inspect: {exc}"
    health = state.get("Health") or state.get("Healthcheck") or {}
    checks = health.get("Log") or []
    last = checks[-1] if checks else {}
    lines = logs(name).splitlines()[-LOG_TAIL_LINES:]
    return (
        f"--- {name}: {state.get('Status')} (exit code {state.get('ExitCode')}), "
        f"health {health.get('Status', 'none')}, failing streak {health.get('FailingStreak', 0)}"
        f"\n    last health check: exit {last.get('ExitCode')} "
        f"{str(last.get('Output', '')).strip()[-500:]!r}\n    log:\n      " + "\n      ".join(lines)
    )


@contextmanager
def container(argv: Sequence[str], name: str) -> Iterator[str]:
    """``podman run -d --name NAME ARGV...``; the container is removed afterwards."""
    run(["podman", "run", "-d", "--name", name, *argv])
    try:
        yield name
    finally:
        run(["podman", "rm", "--force", "--volumes", "--time", "10", name], check=False)


@contextmanager
def podman_api(socket_path: Path) -> Iterator[str]:
    """Podman's Docker-compatible API on a unix socket of this test; its DOCKER_HOST.

    The service is this process's child, stopped afterwards; it serves only that socket.
    """
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: socket_path.exists() or process.poll() is not None,
            30,
            "podman system service to open its socket",
            interval=0.1,
        )
        if process.poll() is not None:
            raise AssertionError(f"podman system service exited: {process.stderr}")
        yield f"unix://{socket_path}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


@dataclass
class ComposeProject:
    """A compose.yaml project of its own name, run by docker-compose against ``docker_host``."""

    name: str
    docker_host: str
    ports: Mapping[str, int]
    compose_file: Path = REPO / "compose.yaml"

    @property
    def env(self) -> dict[str, str]:
        return {
            "DOCKER_HOST": self.docker_host,
            "COMPOSE_PROJECT_NAME": self.name,
            **{variable: str(port) for variable, port in self.ports.items()},
        }

    def compose(self, *arguments: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        argv = ["docker-compose", "-f", str(self.compose_file), *arguments]
        completed = run(argv, env=self.env, timeout=timeout, check=False)
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(arguments)} exited {completed.returncode}:\n"
                f"{output[-4000:]}\n{self.report()}"
            )
        return output

    def containers(self) -> list[str]:
        """Names of this project's containers, as Podman knows them."""
        completed = run(
            [
                "podman",
                "ps",
                "--all",
                "--filter",
                f"label=com.docker.compose.project={self.name}",
                "--format",
                "{{.Names}}",
            ],
            check=False,
        )
        return sorted(completed.stdout.split())

    def container_of(self, service: str) -> str:
        completed = run(
            [
                "podman",
                "ps",
                "--all",
                "--filter",
                f"label=com.docker.compose.project={self.name}",
                "--filter",
                f"label=com.docker.compose.service={service}",
                "--format",
                "{{.Names}}",
            ]
        )
        names = completed.stdout.split()
        assert len(names) == 1, f"service {service}: containers {names}"
        return names[0]

    def report(self) -> str:
        """State, health and log tail of every container of the project: which one, and why."""
        names = self.containers()
        if not names:
            return f"project {self.name} has no containers"
        return "\n".join(health_report(name) for name in names)

    def down(self) -> None:
        """Remove the containers, the network and the volumes; never raises."""
        try:
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
        except (AssertionError, subprocess.TimeoutExpired):
            for name in self.containers():
                run(["podman", "rm", "--force", "--volumes", name], check=False)
