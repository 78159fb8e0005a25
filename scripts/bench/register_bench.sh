#!/usr/bin/env bash
# Outbound REGISTER throughput and latency, driven by sipp.
#
#   scripts/bench/register_bench.sh [--transport udp|tcp|tcpn|all] [--rate N] [--duration S]
#
# Starts sipserver (installed `sipserver`, else `python -m sipserver` from this checkout with the
# interpreter _python.sh picks: $PYTHON, .venv/bin/python or python3) on free
# loopback ports with the default SQLite location store in a temp data dir, then for each
# transport runs scripts/sipp/outbound_register.xml at RATE registrations/s for DURATION s, every
# REGISTER a different AoR and +sip.instance (sipp -inf), each one checked for 200 +
# `Require: outbound`:
#   udp   sipp -t u1: one UDP socket
#   tcp   sipp -t t1: one TCP connection carrying every registration
#   tcpn  sipp -t tn: one TCP connection per registration, closed when the call ends (which also
#         makes the server drop the flow's binding: connection churn plus store deletes)
# Default: udp and tcp. The per-address rate limiter is turned off (all traffic comes from
# 127.0.0.1); the connection limits are raised for tcpn; logging stays at info.
#
# Prints a table and, as its LAST line, key=value pairs for every transport run, e.g.
#   rate=3000 duration=10 udp_sent=.. udp_ok=.. udp_failed=.. udp_reg_per_s=.. udp_p99_ms=.. ...
# reg_per_s = successful registrations / (last response - first response); latency is REGISTER
# sent -> 200 received as sipp measures it (whole ms, in about 4 ms steps). server_cpu_s is the
# server's user+system CPU during that transport's run (from /proc/PID/stat), sipp_cpu_s sipp's;
# (server_cpu_s includes the SQLite writer child process.) udp_rcvbuf_drops counts datagrams the kernel dropped on full UDP receive buffers during the
# run (host-wide counter: a server falling behind on UDP).
# Exit: 0 ran (failures are reported, not fatal), 1 setup error, 2 sipp missing / bad usage.
# KEEP_WORK=1 keeps the temp dir (server log, sipp stats and error logs). BENCH_EXTRA_TOML is
# appended to the server's configuration (e.g. a [store] table, to compare settings).
set -euo pipefail
. "$(dirname "$0")/_sipp_common.sh"

TRANSPORTS="udp tcp"
RATE=3000
DURATION=10
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --transport) [ $# -ge 2 ] || usage
            case "$2" in udp|tcp|tcpn) TRANSPORTS="$2" ;; all) TRANSPORTS="udp tcp tcpn" ;; *) usage ;; esac
            shift 2 ;;
        --rate) [ $# -ge 2 ] || usage; RATE="$2"; shift 2 ;;
        --duration) [ $# -ge 2 ] || usage; DURATION="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
[[ "$RATE" =~ ^[0-9]+$ && "$DURATION" =~ ^[0-9]+$ && "$RATE" -gt 0 && "$DURATION" -gt 0 ]] || usage

bench_setup
TOTAL=$((RATE * DURATION))

start_server "$(cat <<EOF
[server]
log_level = "info"

[rate_limit]
enabled = false

[limits]
max_connections = 100000
max_connections_per_ip = 100000

${BENCH_EXTRA_TOML:-}
EOF
)"
echo "server pid $SERVER_PID on 127.0.0.1:$SERVER_PORT ($(server_cmd)), work dir $WORK" >&2

SUMMARY=""
LAST="rate=$RATE duration=$DURATION"
printf '%-9s %7s %7s %7s %8s %9s %7s %7s %7s %9s %10s %9s\n' transport rate sent ok failed reg_per_s \
    p50_ms p99_ms max_ms srv_cpu_s sipp_cpu_s udp_drops > "$WORK/table.txt"

for tr in $TRANSPORTS; do
    case "$tr" in udp) mode=u1 ;; tcp) mode=t1 ;; tcpn) mode=tn ;; esac
    dir="$WORK/$tr"; mkdir -p "$dir"
    make_users "$dir/users.csv" "reg-$tr-" "$TOTAL"
    cpu0="$(cpu_seconds "$SERVER_PID")"
    drops0="$(udp_rcvbuf_errors)"
    echo "running $tr: $TOTAL REGISTERs at $RATE/s ..." >&2
    rc=0
    (cd "$dir" && run_timed "$dir/sipp_cpu" "$SIPP_BIN" "127.0.0.1:$SERVER_PORT" \
        -sf "$SIPP_DIR/outbound_register.xml" -inf "$dir/users.csv" \
        -key domain example.com -key supported "path, outbound" \
        -t "$mode" -i 127.0.0.1 -p "$(free_port)" -r "$RATE" -rp 1000 -m "$TOTAL" \
        -max_recv_loops 10000 -max_sched_loops 10000 -max_socket 10000 -default_behaviors all,-bye \
        -nostdin -timeout "$((DURATION + 60))s" -recv_timeout 10000 \
        -trace_stat -stf "$dir/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$TOTAL")" \
        -trace_err -error_file "$dir/errors.log" -trace_screen -screen_file "$dir/screen.txt" \
        >"$dir/sipp.out" 2>&1) || rc=$?
    cpu1="$(cpu_seconds "$SERVER_PID")"
    drops=$(( $(udp_rcvbuf_errors) - drops0 ))
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
        echo "sipp ($tr) exited with $rc:" >&2; tail -20 "$dir/sipp.out" >&2
    fi
    rtt="$(find "$dir" -maxdepth 1 -name '*_rtt.csv' | head -1)"
    read -r n p50 p99 pmax span < <(if [ -n "$rtt" ]; then rtt_summary "$rtt" register; else echo "0 NA NA NA 0"; fi)
    sent="$(stat_field "$dir/stat.csv" 'OutgoingCall(C)')"
    ok="$(stat_field "$dir/stat.csv" 'SuccessfulCall(C)')"
    failed="$(stat_field "$dir/stat.csv" 'FailedCall(C)')"
    per_s="$(awk -v n="$ok" -v s="$span" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
    srv_cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
    sipp_cpu="$(cat "$dir/sipp_cpu" 2>/dev/null || echo NA)"
    printf '%-9s %7s %7s %7s %8s %9s %7s %7s %7s %9s %10s %9s\n' "$tr" "$RATE" "$sent" "$ok" "$failed" \
        "$per_s" "$p50" "$p99" "$pmax" "$srv_cpu" "$sipp_cpu" "$drops" >> "$WORK/table.txt"
    SUMMARY+="transport=$tr rate=$RATE sent=$sent ok=$ok failed=$failed reg_per_s=$per_s p50_ms=$p50 p99_ms=$p99 server_cpu_s=$srv_cpu sipp_cpu_s=$sipp_cpu udp_rcvbuf_drops=$drops"$'\n'
    LAST+=" ${tr}_sent=$sent ${tr}_ok=$ok ${tr}_failed=$failed ${tr}_reg_per_s=$per_s ${tr}_p99_ms=$p99 ${tr}_server_cpu_s=$srv_cpu ${tr}_sipp_cpu_s=$sipp_cpu ${tr}_rcvbuf_drops=$drops"
    if [ "$failed" != 0 ] && [ -s "$dir/errors.log" ]; then
        echo "first sipp errors ($tr):" >&2
        head -c 1500 "$dir/errors.log" | tr -d '\r' >&2; echo >&2
    fi
done

srv_errors="$(grep -c -E ' (ERROR|CRITICAL) |Traceback' "$WORK/server.log" || true)"
cat "$WORK/table.txt"
echo "server log: $(wc -l < "$WORK/server.log") lines, $srv_errors error/traceback lines"
if [ "$srv_errors" != 0 ]; then
    grep -m 5 -A 3 -E ' (ERROR|CRITICAL) |Traceback' "$WORK/server.log" || true
fi
printf '%s' "$SUMMARY"
echo "$LAST server_errors=$srv_errors"
