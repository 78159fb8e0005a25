#!/usr/bin/env bash
# Media anchoring under load (issue 18): browser-style calls through sipserver and a real
# rtpengine, driven by sipp, compared with the same calls without anchoring.
#
#   scripts/bench/media_bench.sh [--rate N] [--calls N] [--hold MS]
#
# Defaults: 600 calls at 50 calls/s, each held 4000 ms, so 200 calls are up at once in the steady
# state. Starts rtpengine (userspace, --table=-1, on loopback with a private port range), then runs
# the same load twice against a fresh sipserver (installed `sipserver`, else `python -m sipserver`
# with the interpreter _python.sh picks):
#   anchored  [media] rtpengine = that rtpengine, anchor = auto: every call is anchored (the
#             caller offers like a browser, the callee answers plain RTP/AVP)
#   direct    no [media]: the SDP passes untouched (the baseline)
# Load: the callee is ONE sipp registered with outbound over ONE TCP connection
# (scripts/sipp/outbound_register.xml + uas_invite.xml out of call, as call_bench.sh); the caller
# sipp over UDP runs scripts/sipp/uac_invite_webrtc.xml (INVITE with UDP/TLS/RTP/SAVPF + ICE +
# DTLS fingerprint, ACK, hold, BYE via Record-Route). No RTP is sent: this measures signalling
# and ng round trips.
# Checked for the anchored run, from the server's /metrics and rtpengine itself: every call was
# anchored (sipserver_media_sessions_anchored_total), no ng error or on_failure action, the peak
# of sipserver_media_sessions (calls anchored at once), and that rtpengine holds no call after
# the run (every BYE deleted its call; ng `list`).
#
# Prints a table and, as its LAST line, space-separated key=value pairs:
#   calls=N rate=N hold_ms=N failed=N failed_callee=N anchored=N peak_anchored=N ng_errors=N
#   rtpengine_calls_left=N p50_setup_ms=N p99_setup_ms=N p50_setup_direct_ms=N
#   p99_setup_direct_ms=N failed_direct=N server_cpu_s=N server_cpu_direct_s=N
# setup = INVITE sent -> 200 received (whole ms, about 4 ms steps: sipp's clock).
# Exit: 0 ran (failures are reported, not fatal), 1 setup error, 2 sipp/rtpengine missing or
# bad usage. KEEP_WORK=1 keeps the temp dir (server, rtpengine and sipp logs).
set -euo pipefail
. "$(dirname "$0")/_sipp_common.sh"

RATE=50
CALLS=600
HOLD=4000
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) [ $# -ge 2 ] || usage; RATE="$2"; shift 2 ;;
        --calls) [ $# -ge 2 ] || usage; CALLS="$2"; shift 2 ;;
        --hold) [ $# -ge 2 ] || usage; HOLD="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
for v in "$RATE" "$CALLS" "$HOLD"; do [[ "$v" =~ ^[0-9]+$ ]] || usage; done
[ "$RATE" -gt 0 ] && [ "$CALLS" -gt 0 ] || usage
RTPENGINE_BIN="${RTPENGINE:-rtpengine}"
command -v "$RTPENGINE_BIN" >/dev/null 2>&1 || {
    echo "rtpengine not found: install it with 'apt-get install rtpengine-daemon' or set RTPENGINE=" >&2; exit 2; }

bench_setup
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# ng COMMAND-DICT-PYTHON: send one ng command to the rtpengine, print the reply dict as JSON.
ng() {
    "$PYTHON" - "$NG_PORT" "$1" <<'EOF'
import json, socket, sys
from sipserver.media.bencode import decode, encode
port, command = int(sys.argv[1]), eval(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(1.0)
    s.sendto(b"bench " + encode(command), ("127.0.0.1", port))
    data = s.recv(65535)
reply = decode(data.partition(b" ")[2])
conv = lambda v: v.decode() if isinstance(v, bytes) else [conv(x) for x in v] if isinstance(v, list) else {conv(k): conv(x) for k, x in v.items()} if isinstance(v, dict) else v
print(json.dumps(conv(reply)))
EOF
}

# --- rtpengine: userspace, loopback, 2000 media ports of its own
NG_PORT="$(free_port)"
PORT_MIN=$((20000 + (RANDOM % 15) * 2000))
"$RTPENGINE_BIN" --foreground --config-file=none --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$NG_PORT" --port-min="$PORT_MIN" --port-max="$((PORT_MIN + 1999))" \
    --delete-delay=0 --log-stderr --log-level=5 >"$WORK/rtpengine.log" 2>&1 &
RTPENGINE_PID=$!
BENCH_PIDS="$RTPENGINE_PID"
for _ in $(seq 100); do
    ng '{"command": "ping"}' >/dev/null 2>&1 && break
    kill -0 "$RTPENGINE_PID" 2>/dev/null || { echo "rtpengine exited:" >&2; cat "$WORK/rtpengine.log" >&2; exit 1; }
    sleep 0.1
done
echo "rtpengine pid $RTPENGINE_PID, ng on 127.0.0.1:$NG_PORT, media ports $PORT_MIN-$((PORT_MIN + 1999))" >&2

# run_case NAME MEDIA_TOML: one load run against a fresh server; sets NAME_* result variables.
run_case() {
    local name=$1 media=$2 dir="$WORK/$1"
    mkdir -p "$dir/callee" "$dir/caller"
    local mgmt
    mgmt="$(free_port)"
    start_server "$(printf '[server]\nlog_level = "info"\n[rate_limit]\nenabled = false\n[mgmt]\nlisten = "127.0.0.1:%s"\n%s\n' "$mgmt" "$media")"
    cp "$WORK/server.toml" "$dir/server.toml"
    echo "[$name] server pid $SERVER_PID on 127.0.0.1:$SERVER_PORT" >&2

    printf 'SEQUENTIAL\nbob;6d1c0b7e-3f4a-4b8c-9d2e-0000000b0b00\n' > "$dir/callee/users.csv"
    (cd "$dir/callee" && "$SIPP_BIN" "127.0.0.1:$SERVER_PORT" \
        -sf "$SIPP_DIR/outbound_register.xml" -oocsf "$SIPP_DIR/uas_invite.xml" \
        -inf "$dir/callee/users.csv" -key domain example.com -key supported "path, outbound" \
        -set expect "$CALLS" -t t1 -i 127.0.0.1 -p "$(free_port)" -m 1 \
        -max_recv_loops 10000 -max_sched_loops 10000 -default_behaviors all,-bye \
        -nostdin -timeout "$((CALLS / RATE + HOLD / 1000 + 120))s" \
        -trace_logs -log_file "$dir/callee/counts.log" -trace_err -error_file "$dir/callee/errors.log" \
        >"$dir/callee/sipp.out" 2>&1; echo $? > "$dir/callee/rc") &
    local callee_job=$!
    BENCH_PIDS="$BENCH_PIDS $callee_job"
    for _ in $(seq 100); do
        grep -q "^registered" "$dir/callee/counts.log" 2>/dev/null && break
        [ -f "$dir/callee/rc" ] && { echo "callee sipp ended before registering" >&2; tail -c 2000 "$dir/callee/sipp.out" >&2; exit 1; }
        sleep 0.1
    done

    # the peak of calls anchored at once, sampled from /metrics every 0.2 s
    "$PYTHON" - "$mgmt" "$dir/peak" <<'EOF' &
import re, sys, time, urllib.request
port, out, peak = sys.argv[1], sys.argv[2], 0
while True:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        m = re.search(r"^sipserver_media_sessions (\S+)$", text, re.M)
        if m and float(m.group(1)) > peak:
            peak = int(float(m.group(1)))
            open(out, "w").write(str(peak))
    except OSError:
        pass
    time.sleep(0.2)
EOF
    local sampler=$!
    BENCH_PIDS="$BENCH_PIDS $sampler"

    local cpu0 cpu1 rc=0
    cpu0="$(cpu_seconds "$SERVER_PID")"
    echo "[$name] $CALLS calls at $RATE/s, held $HOLD ms ..." >&2
    (cd "$dir/caller" && "$SIPP_BIN" "127.0.0.1:$SERVER_PORT" \
        -sf "$SIPP_DIR/uac_invite_webrtc.xml" -s bob -key domain example.com \
        -t u1 -i 127.0.0.1 -p "$(free_port)" -r "$RATE" -rp 1000 -m "$CALLS" -d "$HOLD" \
        -max_recv_loops 10000 -max_sched_loops 10000 -default_behaviors all,-bye \
        -nostdin -timeout "$((CALLS / RATE + HOLD / 1000 + 90))s" -recv_timeout 32000 \
        -trace_stat -stf "$dir/caller/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$CALLS")" \
        -trace_err -error_file "$dir/caller/errors.log" >"$dir/caller/sipp.out" 2>&1) || rc=$?
    cpu1="$(cpu_seconds "$SERVER_PID")"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 1 ] || { echo "[$name] caller sipp exited with $rc" >&2; tail -5 "$dir/caller/sipp.out" >&2; }
    for _ in $(seq 100); do [ -f "$dir/callee/rc" ] && break; sleep 0.1; done
    kill "$callee_job" 2>/dev/null || true
    sleep 0.5  # the last BYEs' deletes run in the background
    kill "$sampler" 2>/dev/null || true

    local counts started served rtt n p50 p99 pmax span metrics
    counts="$(grep "^expect=" "$dir/callee/counts.log" 2>/dev/null | tail -1 || true)"
    started="$(sed -n 's/.*started=\([0-9]*\).*/\1/p' <<<"$counts")"
    served="$(sed -n 's/.*served=\([0-9]*\).*/\1/p' <<<"$counts")"
    rtt="$(find "$dir/caller" -maxdepth 1 -name '*_rtt.csv' | head -1)"
    read -r n p50 p99 pmax span < <(if [ -n "$rtt" ]; then rtt_summary "$rtt" setup; else echo "0 NA NA NA 0"; fi)
    metrics="$(curl -s "http://127.0.0.1:$mgmt/metrics" 2>/dev/null || "$PYTHON" -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$mgmt/metrics').read().decode())")"
    printf -v "${name}_ok" '%s' "$(stat_field "$dir/caller/stat.csv" 'SuccessfulCall(C)')"
    printf -v "${name}_failed" '%s' "$(stat_field "$dir/caller/stat.csv" 'FailedCall(C)')"
    printf -v "${name}_failed_callee" '%s' "$(( ${started:-0} - ${served:-0} ))"
    printf -v "${name}_p50" '%s' "$p50"
    printf -v "${name}_p99" '%s' "$p99"
    printf -v "${name}_max" '%s' "$pmax"
    printf -v "${name}_cpu" '%s' "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
    printf -v "${name}_anchored" '%s' "$(awk '$1 == "sipserver_media_sessions_anchored_total" { print int($2) }' <<<"$metrics")"
    printf -v "${name}_ng_errors" '%s' "$(awk '/^sipserver_media_ng_errors_total/ { s += $2 } END { print int(s) }' <<<"$metrics")"
    printf -v "${name}_failures" '%s' "$(awk '/^sipserver_media_failures_total/ { s += $2 } END { print int(s) }' <<<"$metrics")"
    printf -v "${name}_ng_requests" '%s' "$(awk '/^sipserver_media_ng_requests_total/ { printf "%s%s", sep, $0; sep = ", " }' <<<"$metrics")"
    printf -v "${name}_peak" '%s' "$(cat "$dir/peak" 2>/dev/null || echo 0)"
    printf -v "${name}_errors" '%s' "$(grep -c -E ' (ERROR|CRITICAL) |Traceback' "$WORK/server.log" || true)"
    cp "$WORK/server.log" "$dir/server.log"

    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    SERVER_PID=""
}

run_case anchored "$(printf '[media]\nrtpengine = ["udp:127.0.0.1:%s"]\nanchor = "auto"\n' "$NG_PORT")"
left="$(ng '{"command": "list"}' | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin).get("calls", [])))')"
run_case direct ""

printf '%-9s %7s %7s %8s %11s %9s %9s %9s %9s %9s\n' run ok failed callee_fail anchored peak p50_ms p99_ms max_ms srv_cpu_s
for r in anchored direct; do
    v() { local x="${r}_$1"; echo "${!x:-NA}"; }
    printf '%-9s %7s %7s %8s %11s %9s %9s %9s %9s %9s\n' "$r" "$(v ok)" "$(v failed)" "$(v failed_callee)" \
        "$(v anchored)" "$(v peak)" "$(v p50)" "$(v p99)" "$(v max)" "$(v cpu)"
done
echo "anchored run: ng requests: ${anchored_ng_requests:-none}; ng errors $anchored_ng_errors; on_failure actions $anchored_failures; server error lines $anchored_errors; rtpengine calls left $left"
echo "direct run: server error lines $direct_errors"
failed=$(( anchored_failed + anchored_failed_callee ))
echo "calls=$CALLS rate=$RATE hold_ms=$HOLD failed=$failed failed_callee=$anchored_failed_callee anchored=${anchored_anchored:-0} peak_anchored=$anchored_peak ng_errors=$anchored_ng_errors rtpengine_calls_left=$left p50_setup_ms=$anchored_p50 p99_setup_ms=$anchored_p99 p50_setup_direct_ms=$direct_p50 p99_setup_direct_ms=$direct_p99 failed_direct=$(( direct_failed + direct_failed_callee )) server_cpu_s=$anchored_cpu server_cpu_direct_s=$direct_cpu"
