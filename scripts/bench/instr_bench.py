#!/usr/bin/env python3
"""Instructions per REGISTER through the whole runtime, counted by valgrind's callgrind.

On a shared virtual machine the CPU-second figures of ``register_bench.sh`` and ``compare.sh``
move by 20-30% from one run to the next (the host's other guests), more than most levers buy.
An instruction count does not: callgrind counts the instructions the process executes, the same
for the same code and input whatever else the machine does. This runs ``runtime_bench.py`` (the
real ``Server``, memory store, every REGISTER through the UDP path to a 200 OK) under callgrind
twice, with a small and a large count, and divides the difference by the difference in
REGISTERs, so start-up and imports cancel out. It also splits the figure by where the
instructions ran: the interpreter (libpython), the mypyc build (``_native__mypyc``), libc, the
rest (cryptography's HMAC for flow tokens among it).

    python scripts/bench/instr_bench.py [--small 500] [--large 2500] [--keep DIR]

Runs pure Python or the compiled build as ``sipserver`` would (``SIPSERVER_PURE=1`` for pure).
Needs valgrind (Debian ``valgrind``); takes about a minute (the two runs go in parallel).
Last line: ``register_instr=N interp_instr=N native_instr=N libc_instr=N other_instr=N code=...``
(instructions per REGISTER). Not a time: a change that trades instructions for cache misses or
system calls shows here only as the instructions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench" / "runtime_bench.py"
OBJ = re.compile(r"\((\d+)\)(?:\s+(.*))?$")


def buckets(out: Path) -> dict[str, int]:
    """Self instructions per shared object, read from the callgrind file itself (the
    ``ob=`` blocks; callgrind_annotate's listing leaves the object off many lines). A cost line
    right after ``calls=`` is the inclusive cost of that call, counted where it was spent."""
    names: dict[str, str] = {}
    sums = {"interp": 0, "native": 0, "libc": 0, "other": 0}
    bucket = "other"
    after_call = False
    with out.open() as f:
        for line in f:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    sums[bucket] += int(parts[1])
            elif line.startswith(("ob=", "cob=")):
                m = OBJ.match(line.split("=", 1)[1].strip())
                if m is None:
                    continue
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    bucket = _bucket(names.get(m.group(1), ""))
            elif line.startswith("calls="):
                after_call = True
    return sums


def _bucket(obj: str) -> str:
    if "libpython" in obj:
        return "interp"
    if "_native__mypyc" in obj:
        return "native"
    if "/libc.so" in obj:
        return "libc"
    return "other"


def total(log: str) -> int:
    m = re.search(r"Collected : (\d+)", log)
    if not m:
        raise SystemExit(f"callgrind printed no total:\n{log[-2000:]}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", type=int, default=500, help="REGISTERs per round in the small run")
    ap.add_argument("--large", type=int, default=2500, help="REGISTERs per round in the large run")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = ap.parse_args()
    if args.large <= args.small:
        ap.error("--large must be above --small")
    if not shutil.which("valgrind"):
        print("valgrind not found: install it with 'apt-get install valgrind'", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="instr_bench."))
    work.mkdir(parents=True, exist_ok=True)
    # the same string hashes in both runs; bytecode not written, so not read either
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    procs = {}
    for n in (args.small, args.large):
        procs[n] = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={work}/callgrind.{n}",
                sys.executable,
                str(BENCH),
                "--count",
                str(n),
                "--rounds",
                "1",
                "--mock-clock",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=env,
        )
    logs = {}
    for n, p in procs.items():
        logs[n] = p.communicate()[0]
        if p.returncode != 0:
            print(logs[n][-3000:], file=sys.stderr)
            return 1
    sys.path.insert(0, str(REPO))
    import sipserver  # noqa: F401  (installs the mypyc hook as the runs did)
    from sipserver import native

    code = "mypyc" if native.compiled_modules() else "pure"
    # runtime_bench sends (rounds + 1) * count REGISTERs: a warm-up round and the measured one
    regs = 2 * (args.large - args.small)
    per = (total(logs[args.large]) - total(logs[args.small])) / regs
    b_small, b_large = (
        buckets(work / f"callgrind.{args.small}"),
        buckets(work / f"callgrind.{args.large}"),
    )
    split = {k: (b_large[k] - b_small[k]) / regs for k in b_small}
    print(f"sipserver code: {native.status()}")
    print(f"instructions per REGISTER ({code}, {regs} REGISTERs between the two runs): {per:,.0f}")
    for k, label in (
        ("interp", "interpreter (libpython)"),
        ("native", "mypyc build"),
        ("libc", "libc"),
        ("other", "other (cryptography, sqlite, ...)"),
    ):
        print(f"  {label:<34} {split[k]:>10,.0f}  {100 * split[k] / per:5.1f}%")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"register_instr={per:.0f} interp_instr={split['interp']:.0f} native_instr={split['native']:.0f}"
        f" libc_instr={split['libc']:.0f} other_instr={split['other']:.0f} code={code}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
