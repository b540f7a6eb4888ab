"""A full disk under load, against the real parts: enrichproxy → Prometheus, state on a tmpfs.

The state file, the input log and the disk queue live on a small tmpfs that the test fills
while it writes to the proxy, then frees; afterwards the proxy is SIGKILLed and, with the disk
full again, SIGTERMed, and restarted each time. The test is the sender: it knows exactly which
writes were acknowledged (204), so the downstream's final value must equal the sum of the
last acknowledged value of each input counter, and never go down on the way.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    sample_value,
)

pytestmark = pytest.mark.integration

QUERY = 'order_create_failed_total{view="business",service="checkout"}'
PODS = ("checkout-a", "checkout-b")
MANY_PODS = tuple(f"checkout-{index:02d}" for index in range(60))
"""With a view that keeps ``endpoint`` (one per pod): output batches large enough to fill a
page in a second."""
TMPFS_SIZE = "4m"
# Each write answered within this (a refused one too: 503 is immediate).
WRITE_TIMEOUT_S = 5.0


@contextlib.contextmanager
def small_filesystem(path: Path, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE (and ``inodes`` files and directories at most) mounted at
    ``path`` for the test; skipped where mounting is not allowed (not root, or a container
    without CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: this machine runs the tests unprivileged")
    path.mkdir(parents=True)
    options = f"size={TMPFS_SIZE}" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem of ``path``; the file that holds them."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        for _ in range(10_000):  # 625 MiB at most: far beyond TMPFS_SIZE
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as handle:
        for _ in range(64):  # the last partial page
            handle.write(b"\0" * 512)
    return filler


def fill_inodes(path: Path) -> list[Path]:
    """Take every free inode of the filesystem of ``path`` (empty files): on tmpfs, whose
    directories take no data blocks, that is what makes ``mkdir`` fail with ENOSPC, as a full
    ext4 or XFS does. The files, to free them."""
    taken: list[Path] = []
    for number in range(100_000):
        candidate = path / f"inode-{number}"
        try:
            candidate.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return taken
        taken.append(candidate)
    raise AssertionError("the filesystem has more inodes than the test can take")


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    """POST a remote-write body; (status, headers)."""
    host, _, rest = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=WRITE_TIMEOUT_S)
    try:
        connection.request(
            "POST",
            "/" + rest,
            body,
            {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"},
        )
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


class Sender:
    """Writes one increasing counter sample per pod per request and keeps what was
    acknowledged, as a remote-write sender would (it retries nothing: the next sample
    carries the whole increase)."""

    def __init__(self, proxy: ProxyProcess, pods: tuple[str, ...] = PODS) -> None:
        self.proxy = proxy
        self.pods = pods
        self.values = dict.fromkeys(pods, 0.0)
        self.acknowledged = dict.fromkeys(pods, 0.0)
        self.answers: dict[int, int] = {}
        self.retry_after: set[str] = set()

    def write(self, increase: bool = True) -> int:
        """One request; ``increase=False`` repeats the values at a new timestamp (moves the
        proxy's watermark, so open windows close, without changing the expected sums)."""
        now = int(time.time() * 1000)
        for pod in self.pods:
            self.values[pod] += 1 if increase else 0
        body = build_write_request(
            [
                (
                    {
                        "__name__": "order_create_failed_total",
                        "pod": pod,
                        "endpoint": f"/orders/{pod}",
                        "error_type": "timeout",
                    },
                    [(now, self.values[pod])],
                )
                for pod in self.pods
            ]
        )
        try:
            status, headers = post(self.proxy.write_url, body)
        except OSError:
            status, headers = 0, {}
        self.answers[status] = self.answers.get(status, 0) + 1
        if status == 204:
            self.acknowledged = dict(self.values)
        elif status == 503:
            self.retry_after.add(headers.get("retry-after", ""))
        return status

    def run(self, seconds: float, pause: float = 0.05) -> dict[int, int]:
        """Write for ``seconds``; the answers of this run by status."""
        answers: dict[int, int] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = self.write()
            answers[status] = answers.get(status, 0) + 1
            time.sleep(pause)
        return answers

    @property
    def expected(self) -> float:
        return sum(self.acknowledged.values())

    def delivered(self, receiver: PrometheusProcess, timeout: float = 30) -> float:
        """Keep the windows closing until the receiver shows the acknowledged sum (or the
        timeout); what it shows."""
        self.values = dict(self.acknowledged)  # refused increases were never applied
        deadline = time.monotonic() + timeout
        shown = -1.0
        while time.monotonic() < deadline:
            self.write(increase=False)
            result = receiver.query(QUERY)
            shown = sample_value(result[0]) if result else -1.0
            if shown == self.expected:
                break
            time.sleep(0.2)
        return shown


@pytest.fixture
def seeded(mongo: MongoServer, mongo_db_name: str) -> str:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_many(
            [{"pod": pod, "service": "checkout", "tier": "gold"} for pod in {*PODS, *MANY_PODS}]
        )
    finally:
        client.close()
    return mongo_db_name


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def ready_status(proxy: ProxyProcess) -> int:
    try:
        return proxy.get("/-/ready")[0]
    except OSError:
        return 0


def proxy_config(
    mongo: MongoServer, database: str, receiver: PrometheusProcess, state: Path, queue: Path
) -> dict[str, Any]:
    return {
        "metadata": {"mongodb_uri": mongo.uri, "database": database, "refresh_interval": "1h"},
        "views": [{"name": "business", "keep": ["service", "tier"]}],
        "aggregation": {
            "interval": "1s",
            "lateness": "1s",
            "state_path": str(state / "aggregation.json"),
            "checkpoint_interval": "1s",
        },
        "remote_write": [
            {
                "url": receiver.write_url,
                "name": "sink",
                "min_backoff": "50ms",
                "max_backoff": "500ms",
                "queue": {"path": str(queue)},
            }
        ],
        "shutdown_timeout": "5s",
    }


def test_a_full_disk_loses_no_acknowledged_sample_and_heals_by_itself(
    tmp_path: Path, mongo: MongoServer, seeded: str, prometheus_receiver: PrometheusProcess
) -> None:
    with small_filesystem(tmp_path / "disk") as disk:
        config = proxy_config(mongo, seeded, prometheus_receiver, disk / "state", disk / "queue")
        proxy = ProxyProcess(tmp_path / "proxy", config)
        proxy.start()
        sender = Sender(proxy)
        try:
            assert sender.run(3).get(204, 0) > 10

            # The disk fills under load: refused with 503 and Retry-After, not ready, counted.
            filler = fill(disk)
            during = sender.run(4)
            assert during.get(503, 0) > 10, during
            assert set(during) <= {204, 503}, during
            assert sender.retry_after == {"5"}
            assert ready_status(proxy) == 503
            assert proxy.metric("enrichproxy_durability_impaired") == 1
            errors = proxy.metric(
                "enrichproxy_durability_errors_total", file="input_log", op="append"
            )
            assert errors is not None and errors >= during[503]
            # Each distinct failure logged once, not once per refused write.
            impaired_lines = proxy.log_lines("durability impaired")
            assert 1 <= len(impaired_lines) <= 8, impaired_lines
            assert all("errno=28 (ENOSPC)" in line for line in impaired_lines)
            assert proxy.log_lines("Traceback") == []

            # Space comes back: everything resumes by itself.
            filler.unlink()
            wait_until(lambda: sender.write() == 204 and ready_status(proxy) == 200, 20, "ready")
            assert proxy.metric("enrichproxy_durability_impaired") == 0
            assert sender.run(3).get(204, 0) > 10
            assert sender.delivered(prometheus_receiver) == sender.expected

            # A kill -9 right after writes that were acknowledged once space came back.
            sender.run(1)
            proxy.kill()
            proxy.start()
            assert sender.run(2).get(204, 0) > 5

            # A SIGTERM while the disk is full ends cleanly and keeps everything acknowledged.
            filler = fill(disk)
            sender.run(2)
            assert proxy.stop() == 0
            assert proxy.log_lines("Traceback") == []
            filler.unlink()
            proxy.start()
            assert sender.run(2).get(204, 0) > 5

            delivered = sender.delivered(prometheus_receiver)
            assert delivered == sender.expected
            history = prometheus_receiver.query(f"{QUERY}[10m]")[0]["values"]
            values = [float(v) for _, v in history]
            assert values == sorted(values)  # never goes down
            assert prometheus_receiver.rejection_lines() == []
            print(
                f"answers {sender.answers}; acknowledged sum {sender.expected}; "
                f"delivered {delivered}"
            )
        finally:
            proxy.stop()
            # A start needs free space; nothing must stay mounted with the proxy still on it.
            with contextlib.suppress(OSError):
                (disk / "filler").unlink()


def test_a_first_start_on_a_full_disk_serves_impaired_and_heals_by_itself(
    tmp_path: Path, mongo: MongoServer, seeded: str, prometheus_receiver: PrometheusProcess
) -> None:
    """No state, input log or queue directory exists yet and the disk cannot take one: the
    proxy starts all the same (a crash loop would help nobody), says durability is impaired,
    refuses writes with 503 until the directories can be made, then carries on alone."""
    with small_filesystem(tmp_path / "disk", inodes=256) as disk:
        filler = fill(disk)
        taken = fill_inodes(disk)
        config = proxy_config(mongo, seeded, prometheus_receiver, disk / "state", disk / "queue")
        proxy = ProxyProcess(tmp_path / "proxy", config)
        proxy.start(wait_ready=False)
        sender = Sender(proxy)
        try:
            assert proxy.get("/-/healthy")[0] == 200
            wait_until(lambda: proxy.metric("enrichproxy_durability_impaired") == 1, 10, "impaired")
            status, text = proxy.get("/-/ready")
            assert status == 503 and "durability impaired" in text, text
            during = sender.run(2)
            assert set(during) == {503}, during
            assert sender.retry_after == {"5"}
            lines = proxy.log_lines("durability impaired")
            assert lines and all("errno=28 (ENOSPC)" in line for line in lines), lines
            assert any("create" in line for line in lines), lines
            assert proxy.log_lines("Traceback") == []

            filler.unlink()
            for path in taken:
                path.unlink()
            wait_until(lambda: sender.write() == 204 and ready_status(proxy) == 200, 20, "ready")
            assert proxy.metric("enrichproxy_durability_impaired") == 0
            assert sender.run(3).get(204, 0) > 10
            assert (disk / "queue").is_dir() and (disk / "state").is_dir()
            delivered = sender.delivered(prometheus_receiver)
            assert delivered == sender.expected
            print(f"answers {sender.answers}; acknowledged {sender.expected}; {delivered=}")
        finally:
            proxy.stop()
            with contextlib.suppress(OSError):
                (disk / "filler").unlink()
            for path in taken:
                path.unlink(missing_ok=True)


def test_a_full_queue_disk_holds_output_back_and_a_kill_then_loses_no_total(
    tmp_path: Path, mongo: MongoServer, seeded: str, prometheus_receiver: PrometheusProcess
) -> None:
    """Only the disk queue is on the small filesystem: writes go on being acknowledged (the
    input log has room), the output the queue refuses waits in memory and holds further
    windows and checkpoints back; a kill -9 in that state loses nothing the input log cannot
    bring back."""
    with small_filesystem(tmp_path / "disk") as disk:
        config = proxy_config(mongo, seeded, prometheus_receiver, tmp_path / "state", disk / "q")
        config["views"].append({"name": "per_endpoint", "keep": ["endpoint"]})
        proxy = ProxyProcess(tmp_path / "proxy", config)
        proxy.start()
        sender = Sender(proxy, MANY_PODS)
        try:
            assert sender.run(3).get(204, 0) > 10
            filler = fill(disk)

            def queue_refused() -> bool:
                assert sender.write() == 204  # the input log still takes them
                refused = proxy.metric(
                    "enrichproxy_durability_errors_total", file="queue", op="append"
                )
                return (refused or 0) > 0

            wait_until(queue_refused, 20, "the disk queue refuses an append")
            sender.run(2)
            assert ready_status(proxy) == 503
            assert proxy.metric("enrichproxy_durability_impaired") == 1
            proxy.kill()  # the output held in memory goes with it
            proxy.start(wait_ready=False)  # not ready: the queue's disk is still full
            sender.run(2)
            assert ready_status(proxy) == 503
            filler.unlink()
            wait_until(lambda: ready_status(proxy) == 200, 20, "ready once the disk has room")
            assert sender.run(2).get(204, 0) > 5
            delivered = sender.delivered(prometheus_receiver)
            assert delivered == sender.expected
            history = prometheus_receiver.query(f"{QUERY}[10m]")[0]["values"]
            values = [float(v) for _, v in history]
            assert values == sorted(values)
            assert prometheus_receiver.rejection_lines() == []
            assert proxy.log_lines("Traceback") == []
            print(f"answers {sender.answers}; sum {sender.expected}; delivered {delivered}")
        finally:
            proxy.stop()


def test_the_host_can_mount_a_small_filesystem(tmp_path: Path) -> None:
    """The fault test above must not be skipped silently where it can run."""
    with small_filesystem(tmp_path / "disk") as disk:
        filler = fill(disk)
        assert filler.stat().st_size > 3 * 1024 * 1024
        with pytest.raises(OSError) as failure:
            (disk / "more").write_bytes(b"x" * 8192)
        assert failure.value.errno == errno.ENOSPC
