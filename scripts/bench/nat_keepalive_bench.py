#!/usr/bin/env python3
"""Server-sent NAT keepalives at scale (issue 17): N UDP phones without outbound registered over
loopback, each from its own socket (one implicit flow per source address+port, one AoR and
Contact each), answering the server's keepalive OPTIONS with 200 as a phone's SIP stack does.

Measures over a window of at least two keepalive intervals (after one interval of warm-up, so
every flow has reached its steady phase):
- the server's CPU, from /proc/PID/stat (utime+stime), as a percentage of one core;
- the keepalive OPTIONS arriving per wall-clock second: mean, largest one-second count, and
  their ratio (the pings should be spread evenly over the interval, not bunched); the largest
  100 ms count too (the server sends its pings in batches on a 100 ms tick: max_100ms is about
  one batch, never a burst of a whole interval's pings);
- per binding: how many pings it got (every binding alive, none pinged too often).

Targets: server_cpu_pct < 10 and burst_ratio <= 2 (no second with more than twice the mean).

The phones live in --procs worker processes (file-descriptor limits), on several loopback
addresses 127.0.1.x. Only 127.0.0.0/8 is ever used; the server and workers stop by themselves.

Usage: nat_keepalive_bench.py [--bindings 20000] [--interval 25] [--window-intervals 2]
                              [--procs 2] [--store sqlite|memory] [--profile FILE] [--source DIR]
Last line: bindings=N interval_s=N window_s=N pings=N mean_rate=N max_1s_rate=N
           burst_ratio=N max_100ms=N server_cpu_pct=N ... verdict=PASS|FAIL
(50,000 bindings: --bindings 50000 --procs 4, for the per-process file-descriptor limit.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDRS = [f"127.0.1.{i}" for i in range(1, 21)]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_udp_tcp_port() -> int:
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


class Server:
    """sipserver on 127.0.0.1 (UDP + TCP for the readiness probe), log in a file (a pipe nobody
    reads could fill up and stall it)."""

    def __init__(self, interval: float, store: str, bindings: int, profile: str | None = None,
                 source: Path = REPO) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sipserver-natka-"))
        self.port = free_udp_tcp_port()
        cfg = self.dir / "bench.toml"
        cfg.write_text(f"""
[server]
listen = ["udp:127.0.0.1:{self.port}", "tcp:127.0.0.1:{self.port}"]
domains = ["example.com"]
data_dir = "{self.dir / 'data'}"
log_level = "warning"
[store]
backend = "{store}"
[limits]
max_udp_flows = {max(100000, bindings * 2)}
[rate_limit]
enabled = false
[nat]
keepalive = true
keepalive_interval = {interval}
""")
        self.log_path = self.dir / "server.log"
        self._log = open(self.log_path, "wb")
        prof = ["-m", "cProfile", "-o", str(Path(profile).resolve())] if profile else []
        self.proc = subprocess.Popen([sys.executable, *prof, "-m", "sipserver", "run", "-c", str(cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=source)
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
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text(errors='replace')}")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------------------------
# worker: phones


def register_text(user: str, local: tuple[str, int], call_id: str, cseq: int) -> bytes:
    """A phone without outbound: private Contact, no Supported: outbound, no reg-id, no ;ob."""
    host, port = local
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:{user}@example.com>\r\n"
            f"From: <sip:{user}@example.com>;tag={secrets.token_hex(4)}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@10.200.{port >> 8 & 255}.{port & 255}:5060>\r\n"
            f"Expires: 3600\r\nContent-Length: 0\r\n\r\n").encode()


KEEP = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")


def ok_for(request: bytes) -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    lines = [b"SIP/2.0 200 OK"]
    for line in head[1:]:
        low = line[:9].lower().replace(b" ", b"")
        if low.startswith(KEEP):
            lines.append(line)
    lines += [b"Content-Length: 0", b"", b""]
    return b"\r\n".join(lines)


def worker(conn: mp.connection.Connection, wid: int, count: int, port: int) -> None:
    raise_nofile()
    server = ("127.0.0.1", port)
    socks: list[socket.socket] = []
    by_fd: dict[int, int] = {}
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((ADDRS[(wid * count + i) % len(ADDRS)], 0))
        socks.append(s)
        by_fd[s.fileno()] = i
    users = [f"nk{wid}x{i}" for i in range(count)]
    call_ids = [secrets.token_hex(8) for _ in range(count)]
    locals_ = [s.getsockname() for s in socks]
    registered = [False] * count
    sent_at = [0.0] * count
    cseq = [0] * count
    next_to_send = 0
    n_registered = 0
    outstanding = 0
    max_outstanding = 400
    pings: list[tuple[float, int]] = []  # (wall time, binding index)
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    ep.register(conn.fileno(), select.EPOLLIN)

    def send_register(i: int) -> None:
        cseq[i] += 1
        sent_at[i] = time.monotonic()
        socks[i].sendto(register_text(users[i], locals_[i], call_ids[i], cseq[i]), server)

    stop = False
    reported = False
    while not stop:
        # Registration with a bounded number in flight; retransmit what went unanswered.
        now = time.monotonic()
        while next_to_send < count and outstanding < max_outstanding:
            send_register(next_to_send)
            next_to_send += 1
            outstanding += 1
        if n_registered < count:
            for i in range(next_to_send):
                if not registered[i] and now - sent_at[i] > 2.0:
                    send_register(i)
        elif not reported:
            conn.send(("registered", n_registered))
            reported = True
        for fd, _ in ep.poll(0.2):
            if fd == conn.fileno():
                cmd = conn.recv()
                if cmd[0] == "collect":
                    t0, t1 = cmd[1], cmd[2]
                    window = [(t, i) for t, i in pings if t0 <= t < t1]
                    per_second = Counter(int(t) for t, _ in window)
                    per_tenth = Counter(int(t * 10) for t, _ in window)
                    per_binding = Counter(i for _, i in window)
                    counts = [per_binding.get(i, 0) for i in range(count)]
                    conn.send(("collected", dict(per_second), dict(per_tenth), len(window), min(counts),
                               max(counts), sum(1 for c in counts if c > 0), n_registered))
                elif cmd[0] == "stop":
                    stop = True
                continue
            i = by_fd[fd]
            s = socks[i]
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if data.startswith(b"OPTIONS "):
                    pings.append((time.time(), i))
                    s.sendto(ok_for(data), server)
                elif data.startswith(b"SIP/2.0 200") and b"REGISTER" in data:
                    if not registered[i]:
                        registered[i] = True
                        n_registered += 1
                        outstanding -= 1
                elif data.startswith(b"SIP/2.0 "):
                    code = data[8:11]
                    if code != b"100" and not registered[i]:
                        sent_at[i] = 0.0  # refused (e.g. 503 under load): send again soon
    for s in socks:
        s.close()


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--bindings", type=int, default=20000)
    ap.add_argument("--interval", type=float, default=25.0, help="nat.keepalive_interval, seconds")
    ap.add_argument("--window-intervals", type=float, default=2.0, help="measurement window, in intervals (>= 2)")
    ap.add_argument("--procs", type=int, default=2, help="worker processes holding the phones")
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    ap.add_argument("--profile", metavar="FILE", help="run the server under cProfile, stats written to FILE at exit")
    ap.add_argument("--source", metavar="DIR", type=Path, default=REPO,
                    help="the sipserver checkout the server runs from (its working directory, so `-m sipserver` "
                         "imports that one), e.g. a `git worktree` of an older commit for a before/after comparison")
    args = ap.parse_args()
    if args.window_intervals < 2:
        ap.error("--window-intervals must be at least 2")
    raise_nofile()

    server = Server(args.interval, args.store, args.bindings, args.profile, args.source.resolve())
    workers = []
    try:
        per = [args.bindings // args.procs + (1 if w < args.bindings % args.procs else 0) for w in range(args.procs)]
        ctx = mp.get_context("fork")
        for wid, count in enumerate(per):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, wid, count, server.port), daemon=True)
            p.start()
            workers.append((p, parent))
        t_reg0 = time.monotonic()
        registered = 0
        for _p, parent in workers:
            if not parent.poll(300):
                raise RuntimeError("registration did not finish within 300 s")
            registered += parent.recv()[1]
        reg_s = time.monotonic() - t_reg0
        print(f"# {registered} bindings registered in {reg_s:.1f} s; warm-up {args.interval:g} s", flush=True)
        time.sleep(args.interval)  # every flow reaches its phase; registration work is over

        window = args.interval * args.window_intervals
        cpu0, w0, t0 = server.cpu_seconds(), time.monotonic(), time.time()
        time.sleep(window)
        cpu1, w1, t1 = server.cpu_seconds(), time.monotonic(), time.time()
        rss = server.rss_mb()

        per_second: Counter[int] = Counter()
        per_tenth: Counter[int] = Counter()
        pings = min_per = max_per = pinged = alive = 0
        min_per = 1 << 30
        for _p, parent in workers:
            parent.send(("collect", t0, t1))
            _, secs, tenths, n, lo, hi, got, n_reg = parent.recv()
            per_second.update(secs)
            per_tenth.update(tenths)
            pings += n
            min_per, max_per = min(min_per, lo), max(max_per, hi)
            pinged += got
            alive += n_reg
        # Only whole seconds inside the window count for the one-second maximum.
        full = [per_second.get(sec, 0) for sec in range(int(t0) + 1, int(t1))]
        mean_rate = pings / (t1 - t0)
        max_1s = max(full) if full else 0
        max_100ms = max((per_tenth.get(k, 0) for k in range(int(t0 * 10) + 1, int(t1 * 10))), default=0)
        burst = max_1s / mean_rate if mean_rate else float("inf")
        cpu_pct = 100.0 * (cpu1 - cpu0) / (w1 - w0)
        expected = args.bindings / args.interval
        ok = cpu_pct < 10.0 and burst <= 2.0 and pinged == args.bindings
        print(f"bindings={registered} interval_s={args.interval:g} window_s={window:g} pings={pings} "
              f"expected_rate={expected:.1f} mean_rate={mean_rate:.1f} max_1s_rate={max_1s} "
              f"min_1s_rate={min(full) if full else 0} burst_ratio={burst:.2f} max_100ms={max_100ms} "
              f"server_cpu_pct={cpu_pct:.2f} "
              f"bindings_pinged={pinged} pings_per_binding_min={min_per} pings_per_binding_max={max_per} "
              f"server_rss_mb={rss:.0f} register_s={reg_s:.1f} verdict={'PASS' if ok else 'FAIL'}", flush=True)
    finally:
        for _p, parent in workers:
            try:
                parent.send(("stop",))
            except OSError:
                pass
        for p, _ in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
        server.stop()


if __name__ == "__main__":
    main()
