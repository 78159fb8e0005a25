"""A real rtpengine for the media tests (DESIGN.md "Tests": real components are started by the
tests that need them, with ``--table=-1``).

The ``rtpengine`` fixture starts the daemon in the foreground, userspace forwarding only, on
127.0.0.1 with a free ng port and a private range of media ports, waits until it answers a
ping, and stops it afterwards. ``--config-file=none`` keeps /etc/rtpengine out of it and
``--delete-delay=0`` makes a deleted call disappear at once (the default keeps it 30 s).

Without the binary the tests skip with the reason, except under CI=true, where they fail: CI
installs rtpengine-daemon (.ci/run), so a missing binary there is a broken setup, not a skip.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

BINARY_CANDIDATES = ("rtpengine", "/usr/bin/rtpengine", "/usr/sbin/rtpengine")


@attrs.frozen
class RtpEngine:
    address: str  # udp:127.0.0.1:PORT, the form of media.rtpengine
    ng: tuple[str, int]
    port_min: int
    port_max: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def rtpengine_binary() -> str | None:
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def require_rtpengine() -> str:
    binary = rtpengine_binary()
    if binary is None:
        reason = "rtpengine is not installed (apt-get install rtpengine-daemon; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return binary


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ping(ng: tuple[str, int], timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"fixture-ping d7:command4:pinge", ng)
            data, _ = s.recvfrom(4096)
        except OSError:
            return False
    return data == b"fixture-ping d6:result4:ponge"


def start_rtpengine(log_dir: Path, *extra: str) -> RtpEngine:
    binary = require_rtpengine()
    port = free_udp_port()
    # A private media port range per daemon, so parallel runs do not fight over ports (rtpengine
    # skips ports that are taken anyway).
    port_min = random.randrange(20000, 59000, 200)
    port_max = port_min + 199
    log_path = log_dir / f"rtpengine-{port}.log"
    cmd = [
        binary,
        "--foreground",
        "--config-file=none",
        "--table=-1",
        "--interface=127.0.0.1",
        f"--listen-ng=127.0.0.1:{port}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--delete-delay=0",
        "--log-stderr",
        "--log-level=6",
        *extra,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    engine = RtpEngine(f"udp:127.0.0.1:{port}", ("127.0.0.1", port), port_min, port_max, process, log_path)
    deadline = time.monotonic() + 15.0
    while not ping(engine.ng):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_rtpengine(engine)
            pytest.fail(f"rtpengine did not start ({' '.join(cmd)}):\n{engine.log()[-3000:]}")
    return engine


def stop_rtpengine(engine: RtpEngine) -> None:
    if engine.process.poll() is None:
        engine.process.terminate()
        try:
            engine.process.wait(5)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(5)


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[RtpEngine]:
    engine = start_rtpengine(tmp_path)
    try:
        yield engine
    finally:
        stop_rtpengine(engine)
