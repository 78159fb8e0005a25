#!/usr/bin/env python3
"""/proc and sipp-output helpers for scripts/bench/compare.sh, and its report.

Server-agnostic on purpose: the same code reads sipserver (one process) and Kamailio (a main
process and its forked workers), so a figure means the same thing for both.

  proc.py tree ROOTPID            pids of ROOTPID and all its descendants, one line
  proc.py cpu ROOTPID             user+system CPU seconds of that process tree so far
  proc.py mem ROOTPID             "rss_bytes pss_bytes" summed over that tree
  proc.py sipp STATCSV RTTCSV RTD "sent ok failed per_s p50_ms p99_ms" from sipp's -trace_stat
                                  and -trace_rtt files (per_s = ok / first-to-last response)
  proc.py report RESULTS.TSV      the table for people, then the one key=value line

Everything here only reads files; nothing is started or stopped.
"""

from __future__ import annotations

import os
import statistics
import sys
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


def cpu_seconds(root: int) -> float:
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command name: utime is the 12th, stime the 13th (proc(5))
        total += int(rest[11]) + int(rest[12])
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
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
    per_s = ok / span if span > 0 else 0.0
    p50 = percentile(rtts, 50)
    p99 = percentile(rtts, 99)
    return f"{sent} {ok} {failed} {per_s:.0f} {p50:.0f} {p99:.0f}"


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


def report(results_tsv: str) -> None:
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

    hdr = (f"{'workload':<18} {'unit':<11} {'better':<6} {'sipserver':>10} {'kamailio':>10} {'ratio':>8}  "
           f"{'cpu_s sipsrv':>12} {'cpu_s kam':>10} {'per cpu_s':>17} {'cpu_s client':>12}  rounds (sipserver | kamailio)")
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
    print("ratio = sipserver / kamailio (for bytes and ms lower is better, for /s higher is better);")
    print("cpu_s = server CPU seconds (user+system, whole process tree) during the measured phase,")
    print("mean over rounds; per cpu_s = successful requests (or calls) per server CPU second,")
    print("sipserver/kamailio; cpu_s client = sipp / load-client CPU (sipserver run / kamailio run).")
    if notes_out:
        print("notes:")
        print("\n".join(notes_out))
    if any("MACHINE_BUSY" in n for n in notes_out):
        print("WARNING: other processes used the CPU during the runs marked MACHINE_BUSY;"
              " their figures are not clean.")
    print(" ".join(keys))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "tree":
        print(" ".join(str(p) for p in tree(int(argv[2]))))
    elif cmd == "cpu":
        print(f"{cpu_seconds(int(argv[2])):.2f}")
    elif cmd == "mem":
        rss, pss = memory(int(argv[2]))
        print(rss, pss)
    elif cmd == "sipp" and len(argv) == 5:
        print(sipp_summary(argv[2], argv[3], argv[4]))
    elif cmd == "report":
        report(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
