#!/usr/bin/env python3
"""/proc and sipp-output helpers for scripts/bench/compare.sh, and its report.

Server-agnostic on purpose: the same code reads sipserver (one process) and Kamailio (a main
process and its forked workers), so a figure means the same thing for both.

  proc.py tree ROOTPID            pids of ROOTPID and all its descendants, one line
  proc.py cpu ROOTPID[,PID..]     user+system CPU seconds of that process tree (trees) so far
  proc.py mem ROOTPID             "rss_bytes pss_bytes" summed over that tree
  proc.py sipp STATCSV RTTCSV RTD "sent ok failed per_s p50_ms p99_ms" from sipp's -trace_stat
                                  and -trace_rtt files (per_s = ok / first-to-last response)
  proc.py busy SECONDS            cores the whole machine kept busy over SECONDS (the larger of
                                  the per-process sum and /proc/stat's tick-sampled busy time)
  proc.py window DELAY LENGTH SERVERPID[,PID..] CLIENTPID...
                                  sleep DELAY, then over LENGTH seconds: "server_cores
                                  sipp_cores_max machine_cores other_cpu_s" (a capacity step's
                                  steady state: the server, the busiest client, the machine;
                                  several server pids (sipserver's supervisor, its Redis) add up)
  proc.py step RTD OFFERED TOTAL P99_MS STATCSV RTTCSV [STATCSV RTTCSV..]
                                  one capacity-sweep step, over all its sipp processes:
                                  "ok failed achieved_per_s p50_ms p99_ms pass reason"
  proc.py report RESULTS.TSV [CAPACITY.TSV]
                                  the table for people, then the one key=value line

Everything here only reads files; nothing is started or stopped.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(rest[1]), []).append(int(entry))
    return kids


def tree(root: int) -> list[int]:
    """root and every descendant still alive (Kamailio forks its workers from the main process)."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(root: int, reaped: bool = False) -> float:
    """reaped: add the CPU of finished children each process of the tree has waited for
    (cutime, cstime), so a client that exits within a sampling window is still counted through
    its parent (the `timeout` that runs it)."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command name: utime is the 12th, stime the 13th (proc(5))
        total += int(rest[11]) + int(rest[12])
        if reaped:
            total += int(rest[13]) + int(rest[14])
    return total / CLK_TCK


def memory(root: int) -> tuple[int, int]:
    """(sum of Rss, sum of Pss) in bytes over the tree. Rss counts a shared page once per process
    that maps it; Pss divides it among them, so the Pss sum is what the tree really holds."""
    rss = pss = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def vmrss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rtt_samples(rtt_csv: str, rtd: str) -> tuple[list[float], list[float]]:
    """sipp's -trace_rtt file: (timestamps in ms, round-trip times in ms) of the ``rtd`` timer;
    empty lists when the file is missing or unreadable."""
    stamps: list[float] = []
    rtts: list[float] = []
    try:
        for line in Path(rtt_csv).read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3 and parts[2].strip() == rtd:
                stamps.append(float(parts[0]))
                rtts.append(float(parts[1]))
    except (OSError, ValueError):
        pass
    return stamps, rtts


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the value below which p% of the samples fall)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def sipp_summary(stat_csv: str, rtt_csv: str, rtd: str) -> str:
    sent = ok = failed = 0
    try:
        lines = Path(stat_csv).read_text(errors="replace").splitlines()
        head = lines[0].split(";")
        last = lines[-1].split(";")
        col = {name: i for i, name in enumerate(head)}
        sent = int(last[col["OutgoingCall(C)"]])
        ok = int(last[col["SuccessfulCall(C)"]])
        failed = int(last[col["FailedCall(C)"]])
    except (OSError, IndexError, KeyError, ValueError):
        pass
    stamps, rtts = rtt_samples(rtt_csv, rtd)
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
    per_s = ok / span if span > 0 else 0.0
    p50 = percentile(rtts, 50)
    p99 = percentile(rtts, 99)
    return f"{sent} {ok} {failed} {per_s:.0f} {p50:.0f} {p99:.0f}"


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (user nice system irq softirq steal)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK
    return 0.0


def all_cpu() -> dict[tuple[int, int], int]:
    """(pid, start time) -> own CPU ticks (utime + stime) of every live process. Children reaped
    meanwhile are not added: a parent reaping a long-lived child would count that child's whole
    life in the window."""
    out: dict[tuple[int, int], int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[(int(entry), int(rest[19]))] = int(rest[11]) + int(rest[12])
    return out


def machine_cpu(
    a0: dict[tuple[int, int], int], b0: float, a1: dict[tuple[int, int], int], b1: float
) -> float:
    """CPU seconds the machine used between two (all_cpu(), machine_busy_seconds()) readings: the
    larger of the sum over processes (misses processes that ended in between) and /proc/stat's
    busy time (sampled on the timer tick: on this kind of VM it reads far below the per-process
    figures for a loopback SIP load, but it sees processes that came and went)."""
    procs = sum(max(0, v - a0.get(k, 0)) for k, v in a1.items()) / CLK_TCK
    return max(procs, b1 - b0)


def busy_cores(seconds: float) -> float:
    a0, b0, t0 = all_cpu(), machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    a1, b1, t1 = all_cpu(), machine_busy_seconds(), time.monotonic()
    return machine_cpu(a0, b0, a1, b1) / max(t1 - t0, 1e-9)


def _sample(pids: list[int]) -> tuple[float, dict[tuple[int, int], int], float, list[float]]:
    return (
        time.monotonic(),
        all_cpu(),
        machine_busy_seconds(),
        [cpu_seconds(p, reaped=True) for p in pids],
    )


def window(delay: float, length: float, servers: list[int], clients: list[int]) -> str:
    """Sleep DELAY, sample, sleep LENGTH, sample: "server_cores sipp_cores_max machine_cores
    other_cpu_s" over that window (server = the sum over the SERVERS process trees; other =
    machine CPU used by neither the server nor the clients)."""
    ns = len(servers)
    time.sleep(delay)
    t0, a0, b0, c0 = _sample(servers + clients)
    time.sleep(length)
    t1, a1, b1, c1 = _sample(servers + clients)
    w = max(t1 - t0, 1e-9)
    d = [max(0.0, y - x) for x, y in zip(c0, c1, strict=True)]
    sipp_max = max((x / w for x in d[ns:]), default=0.0)
    machine = machine_cpu(a0, b0, a1, b1)
    other = max(0.0, machine - sum(d))
    return f"{sum(d[:ns]) / w:.2f} {sipp_max:.2f} {machine / w:.2f} {other:.2f}"


def step_summary(rtd: str, offered: float, total: int, p99_limit: float, files: list[str]) -> str:
    """One step of the capacity sweep, pooled over its sipp processes (each has its own -trace_stat
    and -trace_rtt file; RTT time stamps are relative to each process's start, so the span is the
    longest first-to-last response of any process). failed = TOTAL - successful, so calls that
    sipp never finished (timed out, killed) count as failures too. The step passes with 0 failed,
    achieved >= 95% of OFFERED and p99 < P99_MS."""
    ok = 0
    rtts: list[float] = []
    span = 0.0
    for stat_csv, rtt_csv in zip(files[0::2], files[1::2], strict=True):
        try:
            lines = Path(stat_csv).read_text(errors="replace").splitlines()
            col = {name: i for i, name in enumerate(lines[0].split(";"))}
            ok += int(lines[-1].split(";")[col["SuccessfulCall(C)"]])
        except (OSError, IndexError, KeyError, ValueError):
            pass
        stamps, step_rtts = rtt_samples(rtt_csv, rtd)
        rtts.extend(step_rtts)
        if len(stamps) > 1:
            span = max(span, (max(stamps) - min(stamps)) / 1000)
    failed = max(0, total - ok)
    # never a shorter span than the offered one: when most requests fail (a server shedding with
    # 503) the few 200s can be bunched in a fraction of a second
    span = max(span, (total - 1) / offered if offered > 0 else 0.0)
    achieved = ok / span if span > 0 else 0.0
    p50 = percentile(rtts, 50)
    p99 = percentile(rtts, 99)
    reasons = []
    if failed:
        reasons.append(f"failed={failed}")
    if achieved < 0.95 * offered:
        reasons.append("achieved<95%")
    if not rtts or not p99 < p99_limit:
        reasons.append(f"p99>={p99_limit:g}ms")
    passed = 0 if reasons else 1
    return f"{ok} {failed} {achieved:.0f} {p50:.0f} {p99:.0f} {passed} {','.join(reasons) or 'ok'}"


# ---------------------------------------------------------------- report

# workload -> (unit, which direction is better)
WORKLOADS = {
    "reg_udp": ("REGISTER/s", "higher"),
    "reg_tcp": ("REGISTER/s", "higher"),
    "reg_tcpn": ("REGISTER/s", "higher"),
    "calls": ("calls/s", "higher"),
    "flow_bytes_tcp": ("bytes/flow", "lower"),
    "flow_bytes_ws": ("bytes/flow", "lower"),
    "keepalive_p99_ms": ("ms", "lower"),
    "failover_p99_ms": ("ms", "lower"),
    "failover430_p99_ms": ("ms", "lower"),  # extra: the same failover after a 430 answer
}
SERVERS = ("sipserver", "kamailio")


def _num(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return None if x != x else x  # NaN -> None


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "na"
    if digits < 0:  # ratios: three significant digits, so 0.000249 does not print as 0.000
        return f"{x:.3f}" if abs(x) >= 0.01 else f"{x:.3g}"
    if digits == 0:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def report(results_tsv: str, capacity_tsv: str | None = None) -> None:
    """The fixed-rate table (RESULTS.TSV), the capacity table (CAPACITY.TSV), then the one
    key=value line of both."""
    keys: list[str] = []
    busy = False
    if Path(results_tsv).exists() and Path(results_tsv).read_text().strip():
        k, busy = report_fixed(results_tsv)
        keys += k
    if capacity_tsv and Path(capacity_tsv).exists() and Path(capacity_tsv).read_text().strip():
        k, b = report_capacity(capacity_tsv)
        keys += k
        busy = busy or b
    if busy:
        print(
            "WARNING: other processes used the CPU during the runs marked MACHINE_BUSY;"
            " their figures are not clean."
        )
    if keys:
        status = sipserver_code()
        print(f"sipserver code: {status}")
        keys.append("sipserver_code=" + ("mypyc" if status.startswith("compiled") else "pure"))
    print(" ".join(keys) if keys else "no_results=1")


def sipserver_code() -> str:
    """What the benchmarked sipserver ran: the mypyc build or pure Python (sipserver/native.py),
    asked of this interpreter and environment, which started the server."""
    try:
        out = subprocess.run([sys.executable, "-c", "import sipserver.native as n; print(n.status())"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def report_fixed(results_tsv: str) -> tuple[list[str], bool]:
    """RESULTS.TSV lines: workload server round value cpu_server cpu_client note [count]
    (value "na" when the run produced no figure; count = requests or calls that succeeded).
    Several rounds -> median of the values, mean of the CPU seconds; work per server CPU
    second = all counts / all server CPU seconds of that workload and server."""
    rows: dict[tuple[str, str], list[list[str]]] = {}
    for line in Path(results_tsv).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 6 or parts[0] not in WORKLOADS:
            continue
        rows.setdefault((parts[0], parts[1]), []).append(parts)

    agg: dict[tuple[str, str], dict[str, object]] = {}
    for (wl, srv), rs in rows.items():
        vals = [v for v in (_num(r[3]) for r in rs) if v is not None]
        cpus = [v for v in (_num(r[4]) for r in rs) if v is not None]
        ccpu = [v for v in (_num(r[5]) for r in rs) if v is not None]
        notes = [f"round {r[2]}: {r[6]}" for r in rs if len(r) > 6 and r[6]]
        counts = [_num(r[7]) if len(r) > 7 else None for r in rs]
        per_cpu = None
        if rs and all(c is not None for c in counts) and len(cpus) == len(rs) and sum(cpus) > 0:
            per_cpu = sum(c for c in counts if c is not None) / sum(cpus)
        agg[(wl, srv)] = {
            "value": statistics.median(vals) if vals else None,
            "all": [r[3] for r in rs],
            "cpu": statistics.mean(cpus) if cpus else None,
            "ccpu": statistics.mean(ccpu) if ccpu else None,
            "notes": notes,
            "per_cpu": per_cpu,
        }

    hdr = (
        f"{'workload':<18} {'unit':<11} {'better':<6} {'sipserver':>10} {'kamailio':>10} {'ratio':>8}  "
        f"{'cpu_s sipsrv':>12} {'cpu_s kam':>10} {'per cpu_s':>17} {'cpu_s client':>12}  rounds (sipserver | kamailio)"
    )
    print(hdr)
    print("-" * len(hdr))
    keys: list[str] = []
    notes_out: list[str] = []
    for wl, (unit, better) in WORKLOADS.items():
        a = agg.get((wl, "sipserver"))
        b = agg.get((wl, "kamailio"))
        if a is None and b is None:
            continue
        va = a["value"] if a else None
        vb = b["value"] if b else None
        ratio = (va / vb) if (va is not None and vb not in (None, 0)) else None
        digits = 2 if wl.endswith("_ms") else 0
        ca = a["cpu"] if a else None
        cb = b["cpu"] if b else None
        cc = [x["ccpu"] for x in (a, b) if x and x["ccpu"] is not None]
        ra = ",".join(a["all"]) if a else "-"
        rb = ",".join(b["all"]) if b else "-"
        pa = a["per_cpu"] if a else None
        pb = b["per_cpu"] if b else None
        per = f"{_fmt(pa)}/{_fmt(pb)}" if (pa is not None or pb is not None) else "-"
        print(
            f"{wl:<18} {unit:<11} {better:<6} {_fmt(va, digits):>10} {_fmt(vb, digits):>10} "
            f"{_fmt(ratio, -1):>8}  {_fmt(ca, 2):>12} {_fmt(cb, 2):>10} {per:>17} "
            f"{'/'.join(_fmt(x, 2) for x in cc) or 'na':>12}  {ra} | {rb}"
        )
        keys += [
            f"{wl}_sipserver={_fmt(va, digits)}",
            f"{wl}_kamailio={_fmt(vb, digits)}",
            f"{wl}_ratio={_fmt(ratio, -1)}",
            f"{wl}_cpu_sipserver={_fmt(ca, 2)}",
            f"{wl}_cpu_kamailio={_fmt(cb, 2)}",
        ]
        for srv, x in (("sipserver", a), ("kamailio", b)):
            if x:
                notes_out += [f"  {wl} {srv}: {n}" for n in x["notes"]]
    print()
    print(
        "ratio = sipserver / kamailio (for bytes and ms lower is better, for /s higher is better);"
    )
    print("cpu_s = server CPU seconds (user+system, whole process tree) during the measured phase,")
    print("mean over rounds; per cpu_s = successful requests (or calls) per server CPU second,")
    print(
        "sipserver/kamailio; cpu_s client = sipp / load-client CPU (sipserver run / kamailio run)."
    )
    if notes_out:
        print("notes:")
        print("\n".join(notes_out))
    return keys, any("MACHINE_BUSY" in n for n in notes_out)


# capacity.tsv columns, one line per sweep step (written by compare.sh's sweep_step)
CAP_COLS = (
    "workload server step phase rate pass ok failed achieved p50 p99 server_cpu_s "
    "sipp_procs server_cores sipp_cores_max machine_cores other_cpu_s reason"
).split()
# optional after them: redis_cpu_s (compare.sh --workers N: the part of server_cpu_s that was
# the server's redis-server; "na" or absent otherwise)
CAP_UNITS = {"reg_udp": "REGISTER/s", "reg_tcp": "REGISTER/s", "calls": "calls/s"}


@dataclass
class _Sweep:
    cap: float  # highest passing rate (0: none passed)
    bound: dict[str, str] | None  # the first failing step above cap (None: none failed)
    sipp_limited: bool
    machine_saturated: bool
    good: dict[float, dict[str, str]]  # passing steps by rate


def report_capacity(capacity_tsv: str) -> tuple[list[str], bool]:
    """Capacity = the highest offered rate of a sweep whose step passed (0 failed, >= 95% of the
    offered rate achieved, p99 under the limit). The step that bounds it is the lowest failing
    rate above it; that step's client and machine readings say who gave out: sipp_limited when
    one sipp process used >= SIPP_LIMIT_CORES of a core there (the client, not the server, may
    have been the limit), machine_saturated when the whole machine was >= 90% busy.
    per_cpu_s = successful requests per server CPU second, taken at the highest rate that both
    servers' sweeps ran and passed (the x1.5 grid is the same for both), so both did the same
    work at the same offered rate."""
    sipp_limit = float(os.environ.get("SIPP_LIMIT_CORES", "0.85"))
    # compare.sh --workers N: "_wN", put after each key's measure (reg_udp_capacity_w2_ratio)
    sfx = os.environ.get("CAP_SUFFIX", "")
    busy_limit = float(os.environ.get("SWEEP_BUSY_S", "1"))
    ncpu = os.cpu_count() or 1
    steps: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in Path(capacity_tsv).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < len(CAP_COLS):
            continue
        row = dict(zip(CAP_COLS, parts[: len(CAP_COLS)], strict=True))
        row["redis_cpu_s"] = parts[len(CAP_COLS)] if len(parts) > len(CAP_COLS) else "na"
        steps.setdefault((row["workload"], row["server"]), []).append(row)

    def f(row: dict[str, str], key: str) -> float:
        return _num(row.get(key, "na")) or 0.0

    summary: dict[tuple[str, str], _Sweep] = {}
    for (wl, srv), rs in steps.items():
        good = [r for r in rs if r["pass"] == "1"]
        cap = max((f(r, "rate") for r in good), default=0.0)
        bad = [r for r in rs if r["pass"] != "1" and f(r, "rate") > cap]
        # the lowest failing rate; of a step and its retry, the retry
        bound = min(bad, key=lambda r: (f(r, "rate"), -f(r, "step"))) if bad else None
        summary[(wl, srv)] = _Sweep(
            cap=cap,
            bound=bound,
            sipp_limited=bool(bound and f(bound, "sipp_cores_max") >= sipp_limit),
            machine_saturated=bool(bound and f(bound, "machine_cores") >= 0.9 * ncpu),
            good={f(r, "rate"): r for r in good},
        )

    print()
    print(
        "capacity: highest offered rate with 0 failures, >= 95% of it achieved and p99 < 50 ms"
        " (fresh server per step)"
    )
    hdr = (
        f"{'workload':<9} {'unit':<11} {'sipserver':>10} {'kamailio':>10} {'ratio':>7}  "
        f"{'per cpu_s at rate':>17} {'sipserver/kamailio':>19} {'ratio':>7}  limits"
    )
    print(hdr)
    print("-" * len(hdr))
    keys: list[str] = []
    notes: list[str] = []
    busy = False
    for wl, unit in CAP_UNITS.items():
        a = summary.get((wl, "sipserver"))
        b = summary.get((wl, "kamailio"))
        if a is None and b is None:
            continue
        ca = a.cap if a else None
        cb = b.cap if b else None
        ratio = ca / cb if (ca is not None and cb) else None
        common = sorted(set(a.good) & set(b.good)) if (a and b) else []
        per_rate = common[-1] if common else None
        pa: float | None = None
        pb: float | None = None
        per_ratio: float | None = None
        redis_share: float | None = None
        if a and b and per_rate is not None:
            ra, rb = a.good[per_rate], b.good[per_rate]
            if _num(ra["redis_cpu_s"]) is not None and f(ra, "server_cpu_s") > 0:
                redis_share = f(ra, "redis_cpu_s") / f(ra, "server_cpu_s")
            pa = f(ra, "ok") / f(ra, "server_cpu_s") if f(ra, "server_cpu_s") > 0 else None
            pb = f(rb, "ok") / f(rb, "server_cpu_s") if f(rb, "server_cpu_s") > 0 else None
            per_ratio = pa / pb if (pa is not None and pb) else None
        limits = []
        for srv, x in (("sipserver", a), ("kamailio", b)):
            if not x:
                continue
            bd = x.bound
            if bd is None:
                limits.append(f"{srv}: no step failed (capacity >= {x.cap:.0f})")
                continue
            who = "sipp" if x.sipp_limited else "machine" if x.machine_saturated else "server"
            limits.append(f"{srv}: {who} at {f(bd, 'rate'):.0f}/s ({bd['reason']})")
        sipp_limited = any(x and x.sipp_limited for x in (a, b))
        print(
            f"{wl:<9} {unit:<11} {_fmt(ca):>10} {_fmt(cb):>10} {_fmt(ratio, -1):>7}  "
            f"{_fmt(per_rate):>17} {_fmt(pa) + '/' + _fmt(pb):>19} {_fmt(per_ratio, -1):>7}  "
            f"{'; '.join(limits)}"
        )
        keys += [
            f"{wl}_capacity{sfx}_sipserver={_fmt(ca)}",
            f"{wl}_capacity{sfx}_kamailio={_fmt(cb)}",
            f"{wl}_capacity{sfx}_ratio={_fmt(ratio, -1)}",
            f"{wl}_per_cpu_s{sfx}_sipserver={_fmt(pa)}",
            f"{wl}_per_cpu_s{sfx}_kamailio={_fmt(pb)}",
            f"{wl}_per_cpu_s{sfx}_ratio={_fmt(per_ratio, -1)}",
            f"{wl}_per_cpu_s{sfx}_rate={_fmt(per_rate)}",
            f"{wl}_sipp_limited{sfx}={1 if sipp_limited else 0}",
        ]
        if redis_share is not None:
            keys.append(f"{wl}_redis_cpu_share{sfx}={_fmt(redis_share, -1)}")
        for srv, x in (("sipserver", a), ("kamailio", b)):
            if not x:
                continue
            for r in steps[(wl, srv)]:
                other = f(r, "other_cpu_s")
                busy = busy or other > busy_limit
                notes.append(
                    f"  {wl} {srv} step {r['step']} ({r['phase']}): {f(r, 'rate'):.0f}/s "
                    f"{'pass' if r['pass'] == '1' else 'FAIL'} ({r['reason']}) achieved="
                    f"{r['achieved']}/s ok={r['ok']} failed={r['failed']} p50_ms={r['p50']} "
                    f"p99_ms={r['p99']} server_cpu_s={r['server_cpu_s']} cores: server="
                    f"{r['server_cores']} sipp_max={r['sipp_cores_max']}x{r['sipp_procs']} "
                    f"machine={r['machine_cores']}/{ncpu} other_cpu_s={other:.2f}"
                    f"{'' if r['redis_cpu_s'] == 'na' else ' redis_cpu_s=' + r['redis_cpu_s']}"
                    f"{' MACHINE_BUSY' if other > busy_limit else ''}"
                )
    print()
    print(
        "ratio = sipserver / kamailio; per cpu_s = successful requests (calls) per server CPU"
        " second in the step at 'rate', the highest rate both passed; limits = what gave out at"
        f" the first failing rate above the capacity: sipp (a sipp process >= {sipp_limit:g}"
        " cores: the client may be the limit), machine (all CPUs >= 90% busy) or server."
    )
    if any(x.sipp_limited for x in summary.values()):
        print(
            "NOTE: sipp was the limit in a sweep marked 'sipp': that capacity is a lower bound"
            " (run more sipp processes: SWEEP_SIPP_RATE)."
        )
    print("steps:")
    print("\n".join(notes))
    return keys, busy


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "tree":
        print(" ".join(str(p) for p in tree(int(argv[2]))))
    elif cmd == "cpu":
        print(f"{sum(cpu_seconds(int(p)) for p in argv[2].split(',') if p):.2f}")
    elif cmd == "mem":
        rss, pss = memory(int(argv[2]))
        print(rss, pss)
    elif cmd == "sipp" and len(argv) == 5:
        print(sipp_summary(argv[2], argv[3], argv[4]))
    elif cmd == "report":
        report(argv[2], argv[3] if len(argv) > 3 else None)
    elif cmd == "busy":
        print(f"{busy_cores(float(argv[2])):.2f}")
    elif cmd == "window" and len(argv) >= 5:
        servers = [int(p) for p in argv[4].split(",") if p]
        print(window(float(argv[2]), float(argv[3]), servers, [int(x) for x in argv[5:]]))
    elif cmd == "step" and len(argv) >= 8 and len(argv) % 2 == 0:
        print(step_summary(argv[2], float(argv[3]), int(argv[4]), float(argv[5]), argv[6:]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
