"""Log lines: real logfmt or JSON, read back by independent parsers; Prometheus' flag spellings."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from realparts import MongoServer, free_port, poll_until, port_is_open, write_config

from enrichproxy.server.logs import JSONFormatter, LogfmtFormatter, logfmt_value

# logfmt as go-logfmt reads it: key=bare or key="quoted with \" escapes".
_PAIR = re.compile(r'([^\s=]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"=]*))(?:\s+|$)')


def parse_logfmt(line: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        assert match is not None, f"not logfmt at {position}: {line!r}"
        key, quoted, bare = match.groups()
        value = bare if quoted is None else json.loads(f'"{quoted}"')
        pairs[key] = value
        position = match.end()
    return pairs


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("enrichproxy.test", level, __file__, 1, message, (), None)


@pytest.mark.parametrize(
    "message",
    [
        "plain",
        "enrichproxy 0.1.0 listening on http://127.0.0.1:9201",
        'destination=sink refused answer="out of order"',
        "line one\nline two\ttab \\ backslash",
        "",
        "ünïcödé ✓",
    ],
)
def test_logfmt_lines_read_back(message: str) -> None:
    line = LogfmtFormatter().format(_record(message, logging.WARNING))
    assert "\n" not in line
    parsed = parse_logfmt(line)
    assert list(parsed) == ["ts", "level", "caller", "msg"]
    assert parsed["msg"] == message
    assert parsed["level"] == "warn"
    assert parsed["caller"] == "enrichproxy.test"
    assert datetime.fromisoformat(parsed["ts"]).utcoffset() is not None  # RFC 3339, zoned


def test_logfmt_quotes_only_what_needs_it() -> None:
    assert logfmt_value("info") == "info"
    assert logfmt_value("a b") == '"a b"'
    assert logfmt_value("a=b") == '"a=b"'
    assert logfmt_value("") == '""'
    assert logfmt_value('say "hi"') == '"say \\"hi\\""'


def test_json_lines_carry_the_same_fields() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record("failed", logging.ERROR)
        record.exc_info = sys.exc_info()
    parsed = json.loads(JSONFormatter().format(record))
    assert parsed["level"] == "error"
    assert parsed["msg"] == "failed"
    assert "RuntimeError: boom" in parsed["err"]
    assert parsed["ts"].endswith("Z")


def _config(mongo: MongoServer, port: int, tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "enrichproxy.yaml",
        {
            "listen": "127.0.0.1:1",  # the flag below must win
            "metadata": {"mongodb_uri": mongo.uri, "database": "logs_test"},
            "views": [{"name": "v", "keep": ["service"]}],
            "remote_write": [{"url": f"http://127.0.0.1:{free_port()}/api/v1/write"}],
        },
    )


def _serve_and_stop(config: Path, port: int, *flags: str) -> list[str]:
    """Run the proxy with Prometheus' flag spellings, SIGTERM it, return its stderr lines."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enrichproxy",
            "serve",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll_until(lambda: port_is_open(port), 20, "enrichproxy listening")
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    return [line for line in err.splitlines() if line]


@pytest.mark.integration
def test_serve_logs_logfmt_and_says_why_it_stops(mongo: MongoServer, tmp_path: Path) -> None:
    port = free_port()
    lines = _serve_and_stop(_config(mongo, port, tmp_path), port, "--log.level=info")
    parsed = [parse_logfmt(line) for line in lines]
    messages = [entry["msg"] for entry in parsed]
    assert any(f"listening on http://127.0.0.1:{port}" in message for message in messages)
    assert any(message.startswith("received SIGTERM: stopping") for message in messages)
    assert messages[-1] == "stopped"
    assert {entry["level"] for entry in parsed} <= {"debug", "info", "warn", "error"}


@pytest.mark.integration
def test_serve_logs_json_lines(mongo: MongoServer, tmp_path: Path) -> None:
    port = free_port()
    lines = _serve_and_stop(_config(mongo, port, tmp_path), port, "--log.format", "json")
    parsed: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert any(entry["msg"].startswith("received SIGTERM") for entry in parsed)
    assert all(set(entry) >= {"ts", "level", "caller", "msg"} for entry in parsed)


@pytest.mark.integration
def test_log_level_takes_prometheus_warn(mongo: MongoServer, tmp_path: Path) -> None:
    port = free_port()
    lines = _serve_and_stop(_config(mongo, port, tmp_path), port, "--log.level", "warn")
    # It started (the port answered) and wrote none of its info lines.
    assert all(parse_logfmt(line)["level"] in ("warn", "error") for line in lines), lines
