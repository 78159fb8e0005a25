"""Interop tests' shared pieces: the installed server as a subprocess on free loopback ports, and
the rule that a missing third-party tool skips locally but fails under CI (CI=true)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, hint: str) -> str:
    """Path of an executable; skip (developer machine) or fail (CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed ({hint})"
        if in_ci():
            pytest.fail(f"interop tool missing in CI: {msg}")
        pytest.skip(msg)
    return path


def free_port(kind: int = socket.SOCK_STREAM, both: bool = True) -> int:
    """A port free for TCP (and UDP unless ``both`` is False) on 127.0.0.1.

    Ports are drawn below Linux's ephemeral range (32768-60999): the kernel hands ephemeral ports
    to every outgoing connection of the test run, so a probe there can collide with a socket in
    TIME_WAIT that a server binding the same number (baresip's TLS listener) would trip over."""
    for _ in range(200):
        port = _rng.randrange(20000, 32000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
            if both:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


_rng = random.Random()


def _distinct(taken: set[int]) -> int:
    """A free TCP port not already chosen: a closed probe socket's port can come back at once."""
    while True:
        port = free_port(both=False)
        if port not in taken:
            taken.add(port)
            return port


def sipserver_cmd() -> list[str]:
    exe = shutil.which("sipserver", path=str(Path(sys.executable).parent)) or shutil.which("sipserver")
    if exe:
        return [exe]
    return [sys.executable, "-m", "sipserver"]


class ServerProcess:
    """`sipserver run` with --listen flags; stopped with SIGTERM."""

    def __init__(self, tmp_path: Path, *, tls: tuple[Path, Path] | None = None, config: str = "", extra: list[str] | None = None) -> None:
        self.port = free_port()
        taken = {self.port}
        self.ws_port = _distinct(taken)
        self.tls_port = _distinct(taken)
        self.data_dir = tmp_path / "server-data"
        self.log_path = tmp_path / "server.log"
        listen = [f"udp:127.0.0.1:{self.port}", f"tcp:127.0.0.1:{self.port}", f"ws:127.0.0.1:{self.ws_port}"]
        args = [*sipserver_cmd(), "run", "--data-dir", str(self.data_dir), "--domain", "example.com", "--log-level", "debug"]
        cfg_text = config
        if tls is not None:
            listen.append(f"tls:127.0.0.1:{self.tls_port}")
            cfg_text += f'\n[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'
        if cfg_text:
            cfg_path = tmp_path / "server.toml"
            cfg_path.write_text(cfg_text)
            args += ["-c", str(cfg_path)]
        for spec in listen:
            args += ["--listen", spec]
        args += extra or []
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def server_proc(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = ServerProcess(tmp_path)
    yield srv
    srv.stop()
