#!/usr/bin/env bash
# Overload curve (issue 19): sipserver and Kamailio offered 0.5x, 1x, 1.5x, 2x and 3x their
# capacity (fresh server per step, ~8 s a step), goodput / failures / p99 of the answered 200s,
# then a recovery step (2x for 10 s, then 0.5x: seconds until the p99 per 1 s window is back
# under 50 ms). Writes a markdown table, a plot (docs/img/overload_curve.png by default; needs
# matplotlib, the dev extra) and last a key=value line.
#
#   scripts/bench/overload_curve.sh [--workloads reg_udp,reg_tcp,calls] [--fractions 0.5,1,2]
#       [--capacity reg_udp:sipserver=4790,...] [--step-dur 8] [--no-recovery] [--keep] [--plot FILE]
#       [--sipserver-toml 'overload_queue_delay = 0.1'] [--from-output SAVED_STDOUT]
#
# The capacities are passed in (defaults: compare.sh --capacity of 2026-12-06 03:18 UTC, see
# docs/performance.md), not measured; `scripts/bench/compare.sh --capacity` measures them.
# Servers, clients and sipp scenarios are compare.sh's (scripts/bench/compare/*.xml,
# scripts/bench/kamailio/kamailio.cfg), but sipp sends no BYE/CANCEL for a call it aborts (a
# REGISTER answered 503 or unanswered): -default_behaviors all,-bye. The options are in
# scripts/bench/overload_curve.py (--help). About 8 minutes for the three workloads, both servers.
# Installs nothing: exit 2 when sipp, kamailio or a Python with trio is missing.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/_sipp_common.sh"    # PYTHON, need_sipp
need_sipp
KAMAILIO="$(command -v kamailio || true)"
[ -n "$KAMAILIO" ] || { [ -x /usr/sbin/kamailio ] && KAMAILIO=/usr/sbin/kamailio; }
if [ -z "$KAMAILIO" ]; then
    echo "kamailio not found: install it with 'apt-get install kamailio kamailio-outbound-modules" \
         "kamailio-websocket-modules' (Debian/Ubuntu)" >&2
    exit 2
fi
"$PYTHON" -c 'import trio' 2>/dev/null || { echo "$PYTHON has no trio: run ./scripts/test once or set PYTHON" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PYTHON" "$HERE/overload_curve.py" --kamailio "$KAMAILIO" "$@"
