#!/usr/bin/env bash
# Call setup/teardown throughput through the proxy, driven by sipp.
#
#   scripts/bench/call_bench.sh [--rate N] [--duration S] [--hold MS]
#
# Starts sipserver (installed `sipserver`, else `python -m sipserver` from this checkout with the
# interpreter _python.sh picks: $PYTHON, .venv/bin/python or python3) on free
# loopback ports with the default SQLite location store in a temp data dir, then:
#   callee  ONE sipp process, ONE TCP connection (-t t1): its main scenario
#           (scripts/sipp/outbound_register.xml) registers bob@example.com with outbound
#           (Contact 192.0.2.1:5999, where nothing listens) and keeps the connection open; every
#           INVITE arriving on it has an unknown Call-ID, so sipp runs the out-of-call scenario
#           scripts/sipp/uas_invite.xml for it (180, 200, ACK, BYE -> 200). All calls therefore
#           reach the callee over its single registered flow, as RFC 5626 intends.
#   caller  sipp over UDP (-t u1), scripts/sipp/uac_invite.xml: INVITE sip:bob@example.com with
#           SDP, 100/180/200, ACK and BYE sent to the Record-Route route set, at RATE calls/s
#           for DURATION s, each call held HOLD ms (default 0) between ACK and BYE.
# The per-address rate limiter is turned off (all traffic comes from 127.0.0.1); logging stays at
# info.
#
# Prints a table and, as its LAST line:
#   calls_per_s=N failed_caller=N failed_callee=N p99_setup_ms=N server_cpu_s=N ...
# calls_per_s = successful calls / (last 200 for INVITE - first one); setup = INVITE sent ->
# 200 received (whole ms, in about 4 ms steps: sipp's clock); failed_callee = INVITEs the callee
# started minus calls it completed (its own counters, logged when it finishes). server_cpu_s is
# the server's user+system CPU over the run (from /proc/PID/stat), sipp_*_cpu_s each sipp's;
# udp_rcvbuf_drops counts datagrams the kernel dropped on full UDP receive buffers during the
# run (host-wide counter). A dropped ACK is never resent (the callee is on TCP and sipp does not
# retransmit its 200 there), so under overload the callee sees BYE before ACK and fails the call.
# Exit: 0 ran (failures are reported, not fatal), 1 setup error, 2 sipp missing / bad usage.
# KEEP_WORK=1 keeps the temp dir (server log, sipp stats, message and error logs).
set -euo pipefail
. "$(dirname "$0")/_sipp_common.sh"

RATE=500
DURATION=10
HOLD=0
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) [ $# -ge 2 ] || usage; RATE="$2"; shift 2 ;;
        --duration) [ $# -ge 2 ] || usage; DURATION="$2"; shift 2 ;;
        --hold) [ $# -ge 2 ] || usage; HOLD="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
for v in "$RATE" "$DURATION" "$HOLD"; do [[ "$v" =~ ^[0-9]+$ ]] || usage; done
[ "$RATE" -gt 0 ] && [ "$DURATION" -gt 0 ] || usage

bench_setup
TOTAL=$((RATE * DURATION))

start_server "$(cat <<'EOF'
[server]
log_level = "info"

[rate_limit]
enabled = false
EOF
)"
echo "server pid $SERVER_PID on 127.0.0.1:$SERVER_PORT ($(server_cmd)), work dir $WORK" >&2

# --- callee: register over one TCP connection, then serve every INVITE on it
CALLEE="$WORK/callee"; CALLER="$WORK/caller"; mkdir -p "$CALLEE" "$CALLER"
printf 'SEQUENTIAL\nbob;6d1c0b7e-3f4a-4b8c-9d2e-0000000b0b00\n' > "$CALLEE/users.csv"
(cd "$CALLEE" && run_timed "$CALLEE/sipp_cpu" "$SIPP_BIN" "127.0.0.1:$SERVER_PORT" \
    -sf "$SIPP_DIR/outbound_register.xml" -oocsf "$SIPP_DIR/uas_invite.xml" \
    -inf "$CALLEE/users.csv" -key domain example.com -key supported "path, outbound" \
    -set expect "$TOTAL" -t t1 -i 127.0.0.1 -p "$(free_port)" -m 1 \
    -max_recv_loops 10000 -max_sched_loops 10000 -default_behaviors all,-bye \
    -nostdin -timeout "$((DURATION * 2 + 120))s" \
    -trace_logs -log_file "$CALLEE/counts.log" \
    -trace_err -error_file "$CALLEE/errors.log" -trace_screen -screen_file "$CALLEE/screen.txt" \
    >"$CALLEE/sipp.out" 2>&1; echo $? > "$CALLEE/rc") &
CALLEE_JOB=$!
BENCH_PIDS="$CALLEE_JOB"

# the callee logs "registered" once its 200 (with Require: outbound) has arrived
for _ in $(seq 100); do
    grep -q "^registered" "$CALLEE/counts.log" 2>/dev/null && break
    if [ -f "$CALLEE/rc" ]; then
        echo "callee sipp ended before registering:" >&2
        tail -c 3000 "$CALLEE/errors.log" "$CALLEE/sipp.out" >&2 2>/dev/null || true; exit 1
    fi
    sleep 0.1
done
sleep 0.2

# --- caller
cpu0="$(cpu_seconds "$SERVER_PID")"
drops0="$(udp_rcvbuf_errors)"
echo "running: $TOTAL calls at $RATE/s (hold ${HOLD} ms) ..." >&2
rc=0
(cd "$CALLER" && run_timed "$CALLER/sipp_cpu" "$SIPP_BIN" "127.0.0.1:$SERVER_PORT" \
    -sf "$SIPP_DIR/uac_invite.xml" -s bob -key domain example.com \
    -t u1 -i 127.0.0.1 -p "$(free_port)" -r "$RATE" -rp 1000 -m "$TOTAL" -d "$HOLD" \
    -max_recv_loops 10000 -max_sched_loops 10000 -default_behaviors all,-bye \
    -nostdin -timeout "$((DURATION + 90))s" -recv_timeout 32000 \
    -trace_stat -stf "$CALLER/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$TOTAL")" \
    -trace_err -error_file "$CALLER/errors.log" -trace_screen -screen_file "$CALLER/screen.txt" \
    >"$CALLER/sipp.out" 2>&1) || rc=$?
cpu1="$(cpu_seconds "$SERVER_PID")"
drops=$(( $(udp_rcvbuf_errors) - drops0 ))
if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
    echo "caller sipp exited with $rc:" >&2; tail -20 "$CALLER/sipp.out" >&2
fi

# the callee ends by itself once it has served TOTAL calls, or 20 s after its last one
for _ in $(seq 300); do [ -f "$CALLEE/rc" ] && break; sleep 0.1; done
callee_rc="$(cat "$CALLEE/rc" 2>/dev/null || echo running)"
if [ "$callee_rc" = running ]; then
    kill "$CALLEE_JOB" 2>/dev/null || true
fi
counts="$(grep "^expect=" "$CALLEE/counts.log" 2>/dev/null | tail -1 || true)"
started="$(sed -n 's/.*started=\([0-9.]*\).*/\1/p' <<<"$counts")"
served="$(sed -n 's/.*served=\([0-9.]*\).*/\1/p' <<<"$counts")"
started="${started%%.*}"; served="${served%%.*}"
if [ -n "$started" ] && [ -n "$served" ]; then
    failed_callee=$((started - served))
else
    failed_callee=NA
fi

sent="$(stat_field "$CALLER/stat.csv" 'OutgoingCall(C)')"
ok="$(stat_field "$CALLER/stat.csv" 'SuccessfulCall(C)')"
failed="$(stat_field "$CALLER/stat.csv" 'FailedCall(C)')"
rtt="$(find "$CALLER" -maxdepth 1 -name '*_rtt.csv' | head -1)"
read -r n p50 p99 pmax span < <(if [ -n "$rtt" ]; then rtt_summary "$rtt" setup; else echo "0 NA NA NA 0"; fi)
per_s="$(awk -v n="$ok" -v s="$span" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')"
srv_cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
caller_cpu="$(cat "$CALLER/sipp_cpu" 2>/dev/null || echo NA)"
callee_cpu="$(cat "$CALLEE/sipp_cpu" 2>/dev/null || echo NA)"
srv_errors="$(grep -c -E ' (ERROR|CRITICAL) |Traceback' "$WORK/server.log" || true)"

printf '%7s %7s %7s %8s %10s %9s %9s %9s %9s %9s %10s %10s %9s\n' rate sent ok failed callee_fail \
    calls_per_s p50_ms p99_ms max_ms srv_cpu_s caller_cpu callee_cpu udp_drops
printf '%7s %7s %7s %8s %10s %9s %9s %9s %9s %9s %10s %10s %9s\n' "$RATE" "$sent" "$ok" "$failed" \
    "$failed_callee" "$per_s" "$p50" "$p99" "$pmax" "$srv_cpu" "$caller_cpu" "$callee_cpu" "$drops"
echo "callee: exit $callee_rc, started=${started:-NA} served=${served:-NA} of expected $TOTAL"
echo "server log: $(wc -l < "$WORK/server.log") lines, $srv_errors error/traceback lines"
if [ "$srv_errors" != 0 ]; then
    grep -m 5 -A 3 -E ' (ERROR|CRITICAL) |Traceback' "$WORK/server.log" || true
fi
# what sipp complained about, by kind (a "Dead call" is a response to a retransmission that
# arrived after its call had ended: the sign of answers slower than sipp's 500 ms retransmit)
for side in caller callee; do
    f="$WORK/$side/errors.log"
    [ -s "$f" ] || continue
    kinds="$(grep -o -E "Dead call|receive timeout on message [^:]*|Aborting call on [a-z ]*|while expecting '[0-9A-Z]+'[^']*received '[^']{0,40}|Failed regexp [a-z ]*" "$f" \
        | sort | uniq -c | sort -rn | head -8 || true)"
    [ -n "$kinds" ] && { echo "$side sipp errors by kind:"; echo "$kinds"; }
done
echo "rate=$RATE duration=$DURATION hold_ms=$HOLD sent=$sent calls_per_s=$per_s failed_caller=$failed failed_callee=$failed_callee p50_setup_ms=$p50 p99_setup_ms=$p99 server_cpu_s=$srv_cpu sipp_caller_cpu_s=$caller_cpu sipp_callee_cpu_s=$callee_cpu udp_rcvbuf_drops=$drops server_errors=$srv_errors"
