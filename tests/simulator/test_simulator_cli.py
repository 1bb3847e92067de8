"""`luma-prefect simulate` in a subprocess, driven with curl as a person would."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luma_prefect.cli import app
from luma_prefect.simulator._media import media_file

CURL = shutil.which("curl")
DEADLINE = 30.0


class Cli:
    """A running `simulate` process and what it printed."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "luma_prefect.cli", "simulate", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.process.poll() is None, (
                    self.process.stderr and self.process.stderr.read()
                )
                continue
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found.group(1)
        raise AssertionError(f"no {pattern!r} in {self.output}")

    def interrupt(self, signum: int = signal.SIGINT) -> tuple[int, str, str]:
        """Ctrl-C (or another signal); the exit code, the rest of stdout and all of stderr."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=DEADLINE)
        self.reader.join(timeout=DEADLINE)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        assert self.process.stderr is not None
        return code, "".join(rest), self.process.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)
        self.reader.join(timeout=DEADLINE)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def cli() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for process in started:
        process.close()


def curl(*args: str) -> str:
    assert CURL is not None
    result = subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("style", ["generations", "task", "official"])
def test_simulate_with_curl(style: str, cli: list[Cli], tmp_path: Path) -> None:
    process = Cli(
        "--style",
        style,
        "--key",
        "sk-cli",
        "--pending-seconds",
        "0.2",
        "--processing-seconds",
        "0.3",
    )
    cli.append(process)
    base = process.wait_for(r"LUMA_RELAY_BASE_URL=(\S+)")
    key = process.wait_for(r"LUMA_RELAY_API_KEY=(\S+)")
    assert base.startswith("http://127.0.0.1:") and key == "sk-cli"
    process.wait_for(r"(curl -s -X POST)")
    auth = ["-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]

    if style == "official":
        root = f"{base}/dream-machine/v1/generations"
        created = json.loads(curl("-X", "POST", root, *auth, "-d", '{"prompt": "a fox"}'))
        gid = created["id"]
        poll = f"{root}/{gid}"
    else:
        body = '{"user_prompt": "a fox"}'
        created = json.loads(curl("-X", "POST", f"{base}/luma/generations", *auth, "-d", body))
        obj = created["data"] if style == "task" else created
        gid = obj["id"]
        poll = f"{base}/luma/task?id={gid}" if style == "task" else f"{base}/luma/generations/{gid}"

    deadline = time.monotonic() + DEADLINE
    while True:
        answer = json.loads(curl(poll, *auth))
        obj = answer["data"] if style == "task" else answer
        if obj["state"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert obj["state"] == "completed", obj
    if style == "official":
        link = obj["assets"]["video"]
    elif style == "task":
        link = obj["video"]["url"]
    else:
        link = obj["video"]["download_url"]
    target = tmp_path / "video.mp4"
    curl("-o", str(target), link)
    assert target.read_bytes() == media_file("video.mp4")[0]
    ranged = curl("-r", "0-7", "-o", "-", link)
    assert ranged.encode("latin-1")[4:8] == b"ftyp"

    counters = json.loads(curl(f"{base}/_simulator/counters"))
    assert counters["submits_accepted"] == 1

    # Ctrl-C, or a plain `kill`: both stop cleanly.
    code, stdout, stderr = process.interrupt(
        signal.SIGTERM if style == "official" else signal.SIGINT
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Simulator stopped." in stdout


def test_simulate_rejects_bad_style() -> None:
    result = CliRunner().invoke(app, ["simulate", "--style", "soap"])
    assert result.exit_code != 0
    assert "style" in result.output


def test_simulate_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["simulate", "--port", str(port)])
    assert result.exit_code == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in result.output


def test_help_lists_simulate() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "simulate" in result.output
