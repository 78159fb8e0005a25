"""Shared pieces of the Python benchmarks: start sipserver as a subprocess on free loopback ports
with a benchmark config, read its memory and CPU from /proc, and small SIP message builders.

Benchmarks only ever talk to 127.0.0.1 and stop by themselves."""

from __future__ import annotations

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class BenchServer:
    """sipserver on 127.0.0.1 with limits opened up for load (the defaults protect a real server
    from exactly this kind of traffic from one address)."""

    def __init__(self, *, store: str = "memory", extra_toml: str = "", limits: str = "") -> None:
        """extra_toml: appended after the configuration's last table; limits: lines added to its
        [limits] table (e.g. ``overload_queue_delay = 0.1``)."""
        self.dir = Path(tempfile.mkdtemp(prefix="sipserver-bench-"))
        self.port = free_port()
        self.ws_port = free_port()
        while self.ws_port == self.port:  # a closed probe socket's port can come back at once
            self.ws_port = free_port()
        cfg = self.dir / "bench.toml"
        cfg.write_text(
            f"""
[server]
listen = ["udp:127.0.0.1:{self.port}", "tcp:127.0.0.1:{self.port}", "ws:127.0.0.1:{self.ws_port}"]
domains = ["example.com"]
data_dir = "{self.dir / 'data'}"
log_level = "warning"
[store]
backend = "{store}"
[limits]
max_connections = 200000
max_connections_per_ip = 200000
{limits}
[rate_limit]
enabled = false
{extra_toml}
"""
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sipserver", "run", "-c", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        return out


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def register_text(user: str, local: tuple[str, int], *, transport: str = "TCP", reg_id: int = 1,
                  instance: str | None = None, call_id: str | None = None, cseq: int = 1) -> bytes:
    inst = instance or f"urn:uuid:{secrets.token_hex(4)}-0000-1000-8000-{secrets.token_hex(6)}"
    host, port = local
    tparam = f";transport={transport.lower()}" if transport != "UDP" else ""
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag={secrets.token_hex(4)}\r\n"
        f"Call-ID: {call_id or secrets.token_hex(8)}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Supported: path, outbound\r\n"
        f'Contact: <sip:{user}@10.200.0.1:5060{tparam};ob>;reg-id={reg_id};+sip.instance="<{inst}>"\r\n'
        f"Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]
