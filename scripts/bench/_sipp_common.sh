# Shared pieces of the sipp-driven benchmarks (sourced by register_bench.sh and call_bench.sh).
# Installs nothing: a missing sipp is reported with the command that installs it (exit 2).
#
# After `bench_setup`, these are set: REPO, SIPP_DIR, PYTHON (see _python.sh), WORK (temp dir,
# removed on exit unless KEEP_WORK=1), CLK_TCK. `start_server CONFIG_TEXT` sets SERVER_PID and
# SERVER_PORT (UDP+TCP).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
. "$REPO/scripts/bench/_python.sh"
SIPP_DIR="$REPO/scripts/sipp"
SERVER_PID=""
SIPP_BIN="${SIPP:-sipp}"

need_sipp() {
    if ! command -v "$SIPP_BIN" >/dev/null 2>&1; then
        echo "sipp not found: install it with 'apt-get install sip-tester' (Debian/Ubuntu)" \
             "or set SIPP=/path/to/sipp" >&2
        exit 2
    fi
}

bench_setup() {
    need_sipp
    command -v "$PYTHON" >/dev/null 2>&1 || {
        echo "$PYTHON not found: set PYTHON, or run ./scripts/test once to create .venv" >&2; exit 2; }
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/sipserver-bench.XXXXXX")"
    CLK_TCK="$(getconf CLK_TCK)"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local rc=$?
    # only what this script started, by pid
    for pid in ${BENCH_PIDS:-}; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "work files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# A loopback port free for both TCP and UDP.
free_port() {
    "$PYTHON" - <<'EOF'
import socket
for _ in range(100):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        u.close(); t.close()
    print(port); break
EOF
}

# The installed entry point if there is one, else the package from this checkout run by $PYTHON.
# server_cmd prints it; run_sipserver ARGS... runs it.
server_cmd() {
    if command -v sipserver >/dev/null 2>&1; then
        echo sipserver
    else
        echo "$PYTHON -m sipserver"
    fi
}

# exec: started with & it runs in a subshell, which it replaces, so $! is the server's own pid
# (without it the cleanup killed only the subshell and left the server running, issue 19).
run_sipserver() {
    if command -v sipserver >/dev/null 2>&1; then
        exec sipserver "$@"
    else
        exec "$PYTHON" -m sipserver "$@"
    fi
}

# start_server CONFIG_TEXT: sipserver on 127.0.0.1:SERVER_PORT (udp+tcp), data dir in WORK.
start_server() {
    SERVER_PORT="$(free_port)"
    printf '%s\n' "$1" > "$WORK/server.toml"
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" run_sipserver run -c "$WORK/server.toml" \
        --listen "udp:127.0.0.1:$SERVER_PORT" --listen "tcp:127.0.0.1:$SERVER_PORT" \
        --data-dir "$WORK/data" --domain example.com >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 150); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited at start-up:" >&2; cat "$WORK/server.log" >&2; exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "server did not start listening:" >&2; cat "$WORK/server.log" >&2; exit 1
}

# cpu_seconds PID: user+system CPU seconds the process and its children (sipserver's SQLite
# writer process) have used so far.
cpu_seconds() {
    local pids="$1 $(pgrep -P "$1" 2>/dev/null | tr '\n' ' ')"
    # fields after the ")" that ends the command name: utime is the 12th, stime the 13th
    for pid in $pids; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        awk -v tck="$CLK_TCK" '{ sub(/.*\) /, ""); s += $12 + $13 } END { printf "%.2f\n", s / tck }'
}

# run_timed OUTFILE CMD...: run CMD in a subshell and write the CPU seconds its children used
# (cutime+cstime of that subshell, so sipp's own CPU) into OUTFILE. Returns CMD's status.
run_timed() {
    local out=$1; shift
    (
        rc=0
        "$@" || rc=$?
        awk -v tck="$CLK_TCK" '{ sub(/.*\) /, ""); printf "%.2f\n", ($14 + $15) / tck }' \
            "/proc/$BASHPID/stat" > "$out"
        exit "$rc"
    )
}

# stat_field STATFILE NAME: value of column NAME on the last line of a sipp -trace_stat file.
stat_field() {
    awk -F';' -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
        { if (col) v = $col } END { print (v == "" ? 0 : v) }' "$1"
}

# rtt_summary RTTFILE RTD: "count p50 p99 max span_s" of one response-time name from a sipp
# -trace_rtt file (values are whole milliseconds; sipp's clock ticks in about 4 ms steps).
rtt_summary() {
    awk -F';' -v rtd="$2" 'NR > 1 && $3 == rtd { print $1, $2 }' "$1" | sort -k2,2n | awk '
        { t[NR] = $1; v[NR] = $2; if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1 }
        END {
            n = NR
            if (n == 0) { print "0 NA NA NA 0"; exit }
            i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
            printf "%d %d %d %d %.3f\n", n, v[i50], v[i99], v[n], (hi - lo) / 1000
        }'
}

# make_users FILE PREFIX COUNT: sipp -inf file "USER;INSTANCE-UUID", one unique AoR per line.
make_users() {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import sys
path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "w") as f:
    f.write("SEQUENTIAL\n")
    for i in range(count):
        f.write(f"{prefix}{i};6d1c0b7e-3f4a-4b8c-9d2e-{i:012x}\n")
EOF
}

# rtt_freq TOTAL: a -rtt_freq that divides TOTAL. sipp writes -trace_rtt samples in batches of
# that size and drops an unfinished batch at exit; with a divisor only failed calls go missing.
rtt_freq() {
    local f
    for f in 1000 500 250 200 100 50 25 20 10 5 4 2 1; do
        if [ $(($1 % f)) -eq 0 ]; then echo "$f"; return; fi
    done
}

# udp_rcvbuf_errors: the kernel's count of UDP datagrams dropped because a socket's receive
# buffer was full (whole host, /proc/net/snmp). The delta over a run shows a server that falls
# behind on UDP: those requests or ACKs never reach it.
udp_rcvbuf_errors() {
    awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 }
                        else { print $c; exit } }' /proc/net/snmp 2>/dev/null || echo 0
}
