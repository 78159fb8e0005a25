#!/usr/bin/env python3
"""Overload curve (issue 19): goodput and latency of sipserver and Kamailio offered 0.5x .. 3x
their capacity, and how fast each is back to normal latency after an overload. Run it through
scripts/bench/overload_curve.sh (which checks the tools); the options are listed by --help.

Servers and clients are compare.sh's: the same sipserver configuration (benchlib.BenchServer with
the SQLite store: rate limit off, connection limits raised, everything else default, so the
overload control as shipped; --sipserver-toml adds [limits] lines), the same Kamailio
configuration (scripts/bench/kamailio/kamailio.cfg, 2 workers) and the same sipp scenarios
(scripts/bench/compare/*.xml), except that the load clients run with
-default_behaviors all,-bye (see NO_BYE). Every step starts a FRESH server and stops it after.
--from-output FILE redraws the plot and the key=value line from an earlier run's printed tables.

Capacity is PASSED IN (--capacity), not measured: the defaults are the capacities of
compare.sh --capacity run at 03:18 UTC on 2026-12-06 (docs/performance.md, "Capacity at
saturation"). Offered rate of a step = fraction x that server's capacity.

Step: sipp offers the rate for --step-dur s (one sipp process per 25,000 REGISTER/s or 5,000
calls/s, as compare.sh). Readings: sent/s (what sipp really sent: on 2 cores sipp cannot offer
Kamailio 2-3x its capacity, the table shows that), goodput (200s over max(offered span, first to
last 200)), failed (no 200 within 2 s, or a non-200 answer: sipserver's 503s), p50/p99 of the
answered-200 requests (sipp's whole-millisecond response times).

Recovery: --recovery-high x capacity for --high-dur s, then --recovery-low x capacity for
--low-dur s (a second sipp starting when the first stops sending). The requests of the low phase
are put in 1 s windows by the time they were sent (from the drop); recovery_s is the start of the
first window from which every later window has p99 < --normal-ms (0 = normal at once; resolution
1 s; "na" = never within the low phase).

Output: progress lines, a markdown table (steps) and one (recovery), the plot (--plot, needs
matplotlib: the dev extra), and last one line of key=value pairs:
<w>_capacity_<srv>, <w>_goodput_<f>x_<srv>, <w>_goodput_<f>x_ratio_of_capacity_<srv>,
<w>_p99_<f>x_ms_<srv>, <w>_failed_<f>x_<srv>, <w>_sent_<f>x_<srv>, <w>_recovery_s_<srv>,
<w>_recovery_p99_first_s_ms_<srv> (p99 of the first window after the drop).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "compare"))
from benchlib import REPO, BenchServer, free_port, raise_nofile  # noqa: E402
from proc import percentile, rtt_samples, tree, window  # noqa: E402

CMP = HERE / "compare"
KCFG = HERE / "kamailio" / "kamailio.cfg"
SIPP_COMMON = ["-i", "127.0.0.1", "-nostdin", "-max_recv_loops", "10000",
               "-max_sched_loops", "10000", "-trace_err"]
RECV_TIMEOUT_MS = 2000
# The load clients do not send sipp's BYE (or CANCEL) for a call it aborts (a REGISTER answered
# 503, or unanswered for RECV_TIMEOUT_MS): no registering UA does. (Against sipserver before
# 2026-12-06 each 503 then brought an in-dialog BYE (To tag of the 503) that took the full proxy
# path; it is answered 481 from its bytes now, --sipp-bye measures that.) compare.sh's sweeps keep
# sipp's default.
NO_BYE = ["-default_behaviors", "all,-bye"]
PER_SIPP = {"reg_udp": 25000, "reg_tcp": 25000, "calls": 5000}   # compare.sh's SWEEP_*_RATE
CALLEE_RATE = 5000
CALLEES = 500
EXTRA_TOML = ""  # --sipserver-toml: lines added to the [limits] table of sipserver's configuration
# compare.sh --capacity, 2026-12-06 03:18 UTC (docs/performance.md "Capacity at saturation";
# the machine did about a quarter less per CPU second for both servers than on 2026-12-05)
DEFAULT_CAPACITY = {
    ("reg_udp", "sipserver"): 3750, ("reg_udp", "kamailio"): 12030,
    ("reg_tcp", "sipserver"): 3570, ("reg_tcp", "kamailio"): 9280,
    ("calls", "sipserver"): 540, ("calls", "kamailio"): 2190,
}


def ports(n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


# ---------------------------------------------------------------- servers

class Server:
    """sipserver or Kamailio on 127.0.0.1, configured as compare.sh's start_server does."""

    def __init__(self, name: str, work: Path, kamailio: str, extra_toml: str = "") -> None:
        self.name = name
        self.dir = work
        work.mkdir(parents=True, exist_ok=True)
        if name == "sipserver":
            # compare.sh's sipserver configuration: benchlib's, with the SQLite store
            self.bench: BenchServer | None = BenchServer(store="sqlite", limits=extra_toml)
            self.port, self.proc = self.bench.port, self.bench.proc
            time.sleep(0.5)
            return
        self.bench = None
        self.port, ws_port = ports(2)
        log = open(work / "server.log", "wb")
        cmd = [kamailio, "-f", str(KCFG), "-DD", "-E", "-A", f"WS_PORT={ws_port}",
               "-l", f"udp:127.0.0.1:{self.port}", "-l", f"tcp:127.0.0.1:{self.port}",
               "-l", f"tcp:127.0.0.1:{ws_port}", "-m", "1024", "-M", "16"]
        self.proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start-up: {(work / 'server.log').read_text()[-2000:]}")
            try:
                for p in (self.port, ws_port):
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                time.sleep(0.5)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start listening")

    def stop(self) -> None:
        if self.bench is not None:
            out = self.bench.stop()
            (self.dir / "server.log").write_text(out)
            shutil.rmtree(self.bench.dir, ignore_errors=True)
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids:       # Kamailio's workers, sipserver's store writer: by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()


def users_file(path: Path, prefix: str, n: int) -> None:
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for i in range(n):
            f.write(f"{prefix}{i};6d1c0b7e-3f4a-4b8c-9d2e-{i:012x}\n")


def rtt_freq(total: int) -> int:   # sipp drops an unfinished batch of samples at exit
    return next(f for f in (100, 50, 25, 20, 10, 5, 4, 2, 1) if total % f == 0)


def start_callees(srv: Server, d: Path, rate: float, life_s: float) -> tuple[list[subprocess.Popen], Path]:
    """compare.sh's callees: ceil(rate / 5000) sipp processes registering CALLEES over one TCP
    connection each and answering the calls. Returns them and the callers' -inf file."""
    n = min(CALLEES, max(1, math.ceil(rate / CALLEE_RATE)))
    per = CALLEES // n
    procs = []
    all_users = d / "callees.csv"
    lines = ["SEQUENTIAL"]
    for j, port in enumerate(ports(n), 1):
        cd = d / f"callee{j}"
        cd.mkdir(parents=True, exist_ok=True)
        users_file(cd / "callees.csv", f"callee{j}_", per)
        lines += (cd / "callees.csv").read_text().splitlines()[1:]
        procs.append(subprocess.Popen(
            ["sipp", f"127.0.0.1:{srv.port}", "-sf", str(CMP / "callee.xml"), "-oocsf", str(CMP / "uas.xml"),
             "-inf", str(cd / "callees.csv"), "-key", "domain", "example.com", "-set", "expect", "1000000000",
             "-t", "tn", "-p", str(port), "-r", "1000", "-rp", "1000", "-m", str(per), "-l", str(per + 10),
             "-max_socket", str(per + 100), *SIPP_COMMON, "-error_file", str(cd / "errors.log"),
             "-trace_logs", "-log_file", str(cd / "log.log"), "-timeout", f"{int(life_s) + 50}s"],
            cwd=cd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    all_users.write_text("\n".join(lines) + "\n")
    for _ in range(300):
        reg = sum(p.read_text(errors="replace").count("registered")
                  for p in d.glob("callee*/log.log") if p.exists())
        if reg >= per * n:
            break
        time.sleep(0.1)
    time.sleep(0.3)
    return procs, all_users


def stop_all(callees: list[subprocess.Popen], srv: Server) -> None:
    for p in callees:
        p.terminate()
    for p in callees:
        p.wait()
    srv.stop()


# ---------------------------------------------------------------- load

@dataclass
class Phase:
    rate: float
    dur: int
    rtd: str
    procs: list[tuple[subprocess.Popen, Path, float]] = field(default_factory=list)  # (sipp, dir, wall start)
    total: int = 0

    def start(self, wl: str, srv: Server, d: Path, tag: str, callers_inf: Path | None) -> None:
        n = max(1, math.ceil(self.rate / PER_SIPP[wl]))
        rate = int(round(self.rate))
        mode = "t1" if wl == "reg_tcp" else "u1"
        for i, port in enumerate(ports(n), 1):
            share = rate // n + (rate - n * (rate // n) if i == 1 else 0)
            m = share * self.dur
            self.total += m
            cd = d / f"{tag}{i}"
            cd.mkdir(parents=True, exist_ok=True)
            if callers_inf is None:
                inf, sf = cd / "users.csv", CMP / "register.xml"
                users_file(inf, f"{tag}p{i}_", m)
            else:
                inf, sf = callers_inf, CMP / "caller.xml"
            limit = share * (RECV_TIMEOUT_MS // 1000 + 2) + 100
            cmd = ["sipp", f"127.0.0.1:{srv.port}", "-sf", str(sf), "-inf", str(inf), "-key", "domain",
                   "example.com", "-t", mode, "-p", str(port), "-r", str(share), "-rp", "1000", "-m", str(m),
                   "-l", str(limit), "-max_socket", "15000", *SIPP_COMMON, *NO_BYE,
                   "-error_file", str(cd / "errors.log"), "-timeout", f"{self.dur + 5}s",
                   "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_stat", "-stf", str(cd / "stat.csv"),
                   "-fd", "1", "-trace_rtt", "-rtt_freq", str(rtt_freq(m))]
            t = time.time()
            self.procs.append((subprocess.Popen(cmd, cwd=cd, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL), cd, t))

    def wait(self) -> None:
        for p, _, _ in self.procs:
            try:
                p.wait(self.dur + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def samples(self) -> list[tuple[float, float]]:
        """(send time in wall-clock seconds, response time ms) of every answered-200 request."""
        out = []
        for _, cd, t0 in self.procs:
            rtt = next(iter(cd.glob("*_rtt.csv")), None)
            if rtt is None:
                continue
            stamps, rtts = rtt_samples(str(rtt), self.rtd)
            for s, r in zip(stamps, rtts, strict=True):
                # sipp's Date_ms: wall-clock ms (epoch) in sipp 3.6, relative to its start in others
                done = s / 1000 if s > 1e12 else t0 + s / 1000
                out.append((done - r / 1000, r))
        return out

    def counts(self) -> tuple[int, int, int]:
        """(sent, ok, non-200 answers) from the sipp statistics files."""
        sent = ok = unexpected = 0
        for _, cd, _ in self.procs:
            try:
                lines = (cd / "stat.csv").read_text(errors="replace").splitlines()
                col = {k: i for i, k in enumerate(lines[0].split(";"))}
                last = lines[-1].split(";")
                sent += int(last[col["OutgoingCall(C)"]])
                ok += int(last[col["SuccessfulCall(C)"]])
                unexpected += int(last[col["FailedUnexpectedMessage(C)"]])
            except (OSError, IndexError, KeyError, ValueError):
                pass
        return sent, ok, unexpected


@dataclass
class Step:
    wl: str
    srv: str
    capacity: float
    frac: float
    rate: float
    sent_per_s: float = 0.0
    goodput: float = 0.0
    failed: int = 0
    non200: int = 0
    p50: float = float("nan")
    p99: float = float("nan")
    server_cores: float = float("nan")
    sipp_max: float = float("nan")
    other_cpu_s: float = float("nan")


def summarize(ph: Phase, step: Step) -> None:
    sent, ok, unexpected = ph.counts()
    smp = ph.samples()
    rtts = [r for _, r in smp]
    dones = [s + r / 1000 for s, r in smp]
    span = max(ph.dur, (max(dones) - min(dones)) if len(dones) > 1 else 0.0)
    step.sent_per_s = sent / ph.dur
    step.goodput = ok / span
    step.failed = max(0, ph.total - ok)
    step.non200 = unexpected
    step.p50 = percentile(rtts, 50)
    step.p99 = percentile(rtts, 99)


def run_step(wl: str, srv_name: str, cap: float, frac: float, dur: int, work: Path, kam: str) -> Step:
    d = work / f"{wl}-{srv_name}-{frac:g}x"
    st = Step(wl, srv_name, cap, frac, frac * cap)
    srv = Server(srv_name, d / "server", kam, EXTRA_TOML)
    callee_procs: list[subprocess.Popen] = []
    try:
        inf = None
        if wl == "calls":
            callee_procs, inf = start_callees(srv, d, st.rate, dur + 10)
        ph = Phase(st.rate, dur, "setup" if wl == "calls" else "reg")
        ph.start(wl, srv, d, "s", inf)
        res: list[str] = []
        w = threading.Thread(target=lambda: res.append(window(
            0.5, dur - 1, [srv.proc.pid], [p.pid for p, _, _ in ph.procs] + [p.pid for p in callee_procs])))
        w.start()
        ph.wait()
        w.join()
        if res:
            sc, sm, _mc, oc = (float(x) for x in res[0].split())
            st.server_cores, st.sipp_max, st.other_cpu_s = sc, sm, oc
        summarize(ph, st)
    finally:
        stop_all(callee_procs, srv)
    return st


@dataclass
class Recovery:
    wl: str
    srv: str
    capacity: float
    high: Step
    low: Step
    windows: list[tuple[int, int, float]]   # (second from the drop, answered, p99 ms)
    recovery_s: float | None


def run_recovery(wl: str, srv_name: str, cap: float, hi: float, lo: float, hi_dur: int, lo_dur: int,
                 normal_ms: float, work: Path, kam: str) -> Recovery:
    d = work / f"{wl}-{srv_name}-recovery"
    srv = Server(srv_name, d / "server", kam, EXTRA_TOML)
    callee_procs: list[subprocess.Popen] = []
    rtd = "setup" if wl == "calls" else "reg"
    try:
        inf = None
        if wl == "calls":
            callee_procs, inf = start_callees(srv, d, hi * cap, hi_dur + lo_dur + 10)
        high = Phase(hi * cap, hi_dur, rtd)
        low = Phase(lo * cap, lo_dur, rtd)
        high.start(wl, srv, d, "h", inf)
        t_drop = high.procs[0][2] + hi_dur
        time.sleep(max(0.0, t_drop - time.time()))
        low.start(wl, srv, d, "l", inf)
        t_drop = low.procs[0][2]
        high.wait()
        low.wait()
    finally:
        stop_all(callee_procs, srv)
    hs, ls = Step(wl, srv_name, cap, hi, hi * cap), Step(wl, srv_name, cap, lo, lo * cap)
    summarize(high, hs)
    summarize(low, ls)
    bins: dict[int, list[float]] = {}
    for sent, r in low.samples():
        k = int(sent - t_drop)
        if 0 <= k < lo_dur:
            bins.setdefault(k, []).append(r)
    windows = [(k, len(bins.get(k, [])), percentile(bins.get(k, []), 99)) for k in range(lo_dur)]
    rec: float | None = None
    for k in range(lo_dur):
        if all(n > 0 and p < normal_ms for _, n, p in windows[k:]):
            rec = float(k)
            break
    return Recovery(wl, srv_name, cap, hs, ls, windows, rec)


# ---------------------------------------------------------------- report

def fmt(x: float, d: int = 0) -> str:
    if x != x:
        return "na"
    return f"{x:,.{d}f}"


def flabel(f: float) -> str:
    return f"{f:g}x"


def table(steps: list[Step]) -> list[str]:
    out = ["| workload | server | capacity | offered | offered/s | sent/s | goodput/s | goodput / capacity | failed | non-200 (503) | p50 ms | p99 ms (200s) | server cores | busiest sipp cores | other_cpu_s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in steps:
        out.append(f"| {s.wl} | {s.srv} | {fmt(s.capacity)} | {flabel(s.frac)} | {fmt(s.rate)} | {fmt(s.sent_per_s)} | "
                   f"{fmt(s.goodput)} | {s.goodput / s.capacity:.2f} | {s.failed:,} | {s.non200:,} | {fmt(s.p50)} | "
                   f"{fmt(s.p99)} | {fmt(s.server_cores, 2)} | {fmt(s.sipp_max, 2)} | {fmt(s.other_cpu_s, 2)} |")
    return out


def rec_table(recs: list[Recovery], normal_ms: float) -> list[str]:
    out = [f"| workload | server | high phase: offered/s, goodput/s, failed, p99 ms | low phase: offered/s, goodput/s, failed | p99 ms per 1 s window after the drop | back under {normal_ms:g} ms after |",
           "|---|---|---|---|---|---:|"]
    for r in recs:
        wins = ", ".join(fmt(p) if n else "-" for _, n, p in r.windows)
        out.append(f"| {r.wl} | {r.srv} | {fmt(r.high.rate)}, {fmt(r.high.goodput)}, {r.high.failed:,}, {fmt(r.high.p99)} | "
                   f"{fmt(r.low.rate)}, {fmt(r.low.goodput)}, {r.low.failed:,} | {wins} | "
                   f"{'not within the low phase' if r.recovery_s is None else f'{r.recovery_s:g} s'} |")
    return out


def plot(steps: list[Step], recs: list[Recovery], path: Path, normal_ms: float) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[dev]')"
    wls = list(dict.fromkeys(s.wl for s in steps))
    rows = 3 if recs else 2
    fig, axes = plt.subplots(rows, len(wls), figsize=(5.2 * len(wls), 3.6 * rows), squeeze=False)
    colors = {"sipserver": "tab:blue", "kamailio": "tab:orange"}
    for c, wl in enumerate(wls):
        ga, la = axes[0][c], axes[1][c]
        unit = "calls/s" if wl == "calls" else "REGISTER/s"
        for srv in ("sipserver", "kamailio"):
            ss = sorted((s for s in steps if s.wl == wl and s.srv == srv), key=lambda s: s.frac)
            if not ss:
                continue
            # both servers on one scale: offered and goodput as multiples of each one's capacity
            x = [s.sent_per_s / s.capacity for s in ss]
            ga.plot(x, [s.goodput / s.capacity for s in ss], "o-", color=colors[srv],
                    label=f"{srv} (capacity {ss[0].capacity:,.0f} {unit})")
            la.plot(x, [s.p99 if s.p99 == s.p99 else None for s in ss], "o-", color=colors[srv], label=srv)
        top = max(s.sent_per_s / s.capacity for s in steps if s.wl == wl)
        ga.plot([0, 1, top], [0, 1, 1], color="grey", lw=0.6, label="ideal: min(offered, capacity)")
        ga.axhline(0.9, color="red", ls="--", lw=0.8, label="target: 90% of capacity")
        ga.set_ylim(0, 1.15)
        ga.set_title(f"{wl}: goodput (200s/s) / capacity")
        ga.set_xlabel("offered (sent) / capacity")
        ga.set_ylabel("goodput / capacity")
        ga.legend(fontsize=7, loc="lower left")
        la.set_yscale("log")
        la.axhline(200, color="red", ls="--", lw=0.8, label="target: 200 ms")
        la.set_title(f"{wl}: p99 of the answered 200s")
        la.set_xlabel("offered (sent) / capacity")
        la.set_ylabel("ms")
        la.legend(fontsize=7)
        if recs:
            ra = axes[2][c]
            for r in recs:
                if r.wl != wl:
                    continue
                ra.plot([k for k, n, _ in r.windows], [p if n else None for _, n, p in r.windows], "o-",
                        color=colors[r.srv], label=f"{r.srv} ({flabel(r.high.frac)} -> {flabel(r.low.frac)})")
            ra.axhline(normal_ms, color="green", ls="--", lw=0.8, label=f"{normal_ms:g} ms")
            ra.set_yscale("log")
            ra.set_title(f"{wl}: recovery, p99 per 1 s after the drop")
            ra.set_xlabel("seconds after the load dropped (send time)")
            ra.set_ylabel("ms")
            ra.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return f"plot written to {path}"


def num(cell: str) -> float:
    cell = cell.strip().replace(",", "")
    return float("nan") if cell in ("na", "-", "") else float(cell)


def parse_output(text: str, normal_ms: float) -> tuple[list[Step], list[Recovery]]:
    """The two tables of an earlier run's output (--from-output): redraw without re-running."""
    steps: list[Step] = []
    recs: list[Recovery] = []
    for line in text.splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or c[0] not in PER_SIPP:
            continue
        if len(c) == 15:
            st = Step(c[0], c[1], num(c[2]), num(c[3].rstrip("x")), num(c[4]), num(c[5]), num(c[6]),
                      int(num(c[8])), int(num(c[9])), num(c[10]), num(c[11]), num(c[12]), num(c[13]),
                      num(c[14]))
            steps.append(st)
        elif len(c) == 6:
            hi = [num(x) for x in c[2].split(", ")]
            lo = [num(x) for x in c[3].split(", ")]
            cap = next((s.capacity for s in steps if s.wl == c[0] and s.srv == c[1]), float("nan"))
            hs = Step(c[0], c[1], cap, hi[0] / cap, hi[0], hi[0], hi[1], int(hi[2]), p99=hi[3])
            ls = Step(c[0], c[1], cap, lo[0] / cap, lo[0], lo[0], lo[1], int(lo[2]))
            wins = [(k, 0 if x == "-" else 1, num(x)) for k, x in enumerate(c[4].split(", "))]
            rec = None if c[5].startswith("not") else num(c[5].split()[0])
            recs.append(Recovery(c[0], c[1], cap, hs, ls, wins, rec))
    return steps, recs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="reg_udp,reg_tcp,calls")
    ap.add_argument("--servers", default="sipserver,kamailio")
    ap.add_argument("--fractions", default="0.5,1,1.5,2,3", help="offered load, x capacity")
    ap.add_argument("--step-dur", type=int, default=8)
    ap.add_argument("--capacity", default="",
                    help="WORKLOAD:SERVER=RATE,... overriding the defaults "
                    + ", ".join(f"{w}:{s}={r}" for (w, s), r in DEFAULT_CAPACITY.items()))
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--from-output", metavar="FILE",
                    help="run nothing: redraw the plot and the key=value line from the tables in "
                    "an earlier run's output")
    ap.add_argument("--recovery-high", type=float, default=2.0)
    ap.add_argument("--recovery-low", type=float, default=0.5)
    ap.add_argument("--high-dur", type=int, default=10)
    ap.add_argument("--low-dur", type=int, default=8)
    ap.add_argument("--normal-ms", type=float, default=50.0)
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "overload_curve.png"))
    ap.add_argument("--sipserver-toml", default="",
                    help="lines added to the [limits] table of sipserver's configuration "
                    "(e.g. 'overload_queue_delay = 0.1'); without it the defaults")
    ap.add_argument("--sipp-bye", action="store_true",
                    help="sipp with its default behaviours: a BYE after every aborted call or "
                    "REGISTER (carrying the 503's To tag), as compare.sh's sweeps run it")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, sipp files)")
    ap.add_argument("--kamailio", default=shutil.which("kamailio") or "/usr/sbin/kamailio")
    a = ap.parse_args()
    cap = dict(DEFAULT_CAPACITY)
    for item in filter(None, a.capacity.split(",")):
        key, rate = item.split("=")
        w, s = key.split(":")
        cap[(w, s)] = float(rate)
    global EXTRA_TOML, NO_BYE
    EXTRA_TOML = a.sipserver_toml.replace("\\n", "\n")
    if a.sipp_bye:
        NO_BYE = []
        print("sipp with its default behaviours (abort BYEs on)")
    wls = a.workloads.split(",")
    srvs = a.servers.split(",")
    fracs = [float(f) for f in a.fractions.split(",") if f]
    if a.from_output:
        steps, recs = parse_output(Path(a.from_output).read_text(), a.normal_ms)
        wls = list(dict.fromkeys(st.wl for st in steps))
        srvs = list(dict.fromkeys(st.srv for st in steps))
        for st in steps:
            cap[(st.wl, st.srv)] = st.capacity
        return report(steps, recs, a, cap, wls, srvs)
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="sipserver-overload."))
    print(f"== overload curve, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs; work dir {work}")
    if EXTRA_TOML:
        print(f"sipserver configuration: compare.sh's plus {EXTRA_TOML!r}")
    print("capacity (passed in, not measured): " + ", ".join(f"{w}:{s}={cap[(w, s)]:g}" for w in wls for s in srvs))
    steps: list[Step] = []
    recs: list[Recovery] = []
    try:
        for wl in wls:
            for srv in srvs:
                for f in fracs:
                    s = run_step(wl, srv, cap[(wl, srv)], f, a.step_dur, work, a.kamailio)
                    steps.append(s)
                    print(f"  {wl:7} {srv:9} {flabel(f):>5} {s.rate:8.0f}/s: sent {s.sent_per_s:.0f}/s goodput "
                          f"{s.goodput:.0f}/s ({s.goodput / s.capacity:.2f} of capacity) failed {s.failed} "
                          f"(non-200 {s.non200}) p50/p99 {fmt(s.p50)}/{fmt(s.p99)} ms; cores server "
                          f"{s.server_cores:.2f} sipp {s.sipp_max:.2f}; other_cpu_s {s.other_cpu_s:.2f}", flush=True)
                if not a.no_recovery:
                    r = run_recovery(wl, srv, cap[(wl, srv)], a.recovery_high, a.recovery_low, a.high_dur,
                                     a.low_dur, a.normal_ms, work, a.kamailio)
                    recs.append(r)
                    print(f"  {wl:7} {srv:9} recovery {flabel(a.recovery_high)} for {a.high_dur} s -> "
                          f"{flabel(a.recovery_low)}: p99 per s " + " ".join(fmt(p) for _, _, p in r.windows)
                          + f"; back under {a.normal_ms:g} ms after "
                          + ("never" if r.recovery_s is None else f"{r.recovery_s:g} s"), flush=True)
    finally:
        if a.keep:
            print(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report(steps, recs, a, cap, wls, srvs)


def report(steps: list[Step], recs: list[Recovery], a: argparse.Namespace,
           cap: dict[tuple[str, str], float], wls: list[str], srvs: list[str]) -> int:
    print()
    print("\n".join(table(steps)))
    if recs:
        print()
        print("\n".join(rec_table(recs, a.normal_ms)))
    print()
    print(plot(steps, recs, Path(a.plot), a.normal_ms))
    kv: list[str] = []
    for s in steps:
        f, p = flabel(s.frac), f"{s.wl}"
        kv += [f"{p}_goodput_{f}_{s.srv}={s.goodput:.0f}",
               f"{p}_goodput_{f}_ratio_of_capacity_{s.srv}={s.goodput / s.capacity:.3f}",
               f"{p}_p99_{f}_ms_{s.srv}={fmt(s.p99).replace(',', '')}",
               f"{p}_failed_{f}_{s.srv}={s.failed}", f"{p}_sent_{f}_{s.srv}={s.sent_per_s:.0f}"]
    for w in wls:
        for srv in srvs:
            kv.append(f"{w}_capacity_{srv}={cap[(w, srv)]:g}")
    for r in recs:
        kv.append(f"{r.wl}_recovery_s_{r.srv}={'na' if r.recovery_s is None else f'{r.recovery_s:g}'}")
        kv.append(f"{r.wl}_recovery_p99_first_s_ms_{r.srv}={fmt(r.windows[0][2]).replace(',', '')}")
    print(" ".join(kv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
