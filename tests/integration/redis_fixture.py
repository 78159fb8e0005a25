"""A real redis-server for the Redis store tests (DESIGN.md "Tests": real components are started
by the tests that need them).

The ``redis`` fixture starts ``redis-server`` on 127.0.0.1 with a free port, in the test's temp
dir, with no RDB snapshots and the append-only file on (``appendfsync always``: a write Redis
acknowledged survives a SIGKILL of redis-server), and stops it afterwards. ``stop`` and
``start`` let a test take Redis away and bring it back on the same port and files.

Without the binary the tests skip with the reason, except under CI=true, where they fail: CI
installs redis-server (.ci/run), so a missing binary there is a broken setup, not a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client

BINARY_CANDIDATES = ("redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server")


def require_redis_server() -> str:
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    reason = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.port = free_tcp_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
            "--daemonize", "no",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if self.client().ping():
                    return
            except redis_client.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start ({' '.join(cmd)}):\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def client(self) -> redis_client.Redis:
        return redis_client.Redis.from_url(self.url, socket_timeout=2, decode_responses=True)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(require_redis_server(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
