#!/usr/bin/env bash
# Side-by-side benchmark: sipserver against Kamailio doing the same RFC 5626 edge proxy +
# registrar job, on the same machine, with the same clients.
#
#   scripts/bench/compare.sh [--rounds N] [--quick] [--only WORKLOAD[,WORKLOAD..]]
#                            [--capacity | --no-capacity] [--workers N] [--store memory]
#                            [--wait-idle SECONDS] [--keep] [--check]
#
# Servers (both on 127.0.0.1, free ports, started fresh for every measurement, stopped after):
#   sipserver  `$PYTHON -m sipserver run -c FILE` from this checkout: SQLite location store (the
#              default), rate limits off, connection limits raised, log level warning. PYTHON
#              (also for the Python load clients) is $PYTHON if set, else .venv/bin/python of
#              this checkout if there is one, else python3 (scripts/bench/_python.sh).
#   Kamailio   scripts/bench/kamailio/kamailio.cfg: tm, sl, rr (append_fromtag), path, outbound,
#              registrar (outbound_mode 1: Require: outbound), usrloc in memory (db_mode 0),
#              websocket; children=2, tcp_children=2. Before measuring, a sipp REGISTER checks
#              that each server answers 200 with Require: outbound.
# Workloads (each run against sipserver, then Kamailio, then again, for --rounds rounds, so
# drift of the machine hits both alike):
#   reg_udp          outbound REGISTERs over UDP (sipp -t u1), a new AoR each, at REG_RATE/s for
#                    REG_DUR s: successful REGISTERs/s (failures and p99 in the notes)
#   reg_tcp          the same over one TCP connection (-t t1)
#   reg_tcpn         the same, one TCP connection per REGISTER, closed after it (-t tn), at
#                    REG_TCPN_RATE/s: sipp opening a connection per call saturates itself (in the
#                    kernel's port allocation) at about 1000/s on a 2-core machine
#   calls            CALLEES callees registered over their own TCP connections (one sipp, -t tn)
#                    answer INVITE/180/200/ACK/BYE; a UDP caller places CALL_RATE calls/s for
#                    CALL_DUR s, ACK and BYE along Record-Route: successful calls/s
#   flow_bytes_tcp   FLOWS idle registered TCP flows: server memory per flow (sipserver: VmRSS
#                    growth of its process; Kamailio: growth of the Pss summed over its process
#                    tree, which counts its shared memory - connections, usrloc - once)
#   flow_bytes_ws    the same over WebSocket
#   keepalive_p99_ms CRLF ping -> pong round trip with FLOWS flows each pinging every KA_INTERVAL s
#                    (measured in the same run as flow_bytes_tcp)
#   failover_p99_ms  one instance with two TCP flows; the flow holding an INVITE is closed: time
#                    until the INVITE arrives on the other flow (p99). The same after a 430
#                    answer is reported as failover430_p99_ms.
# CPU: user+system seconds of the server's whole process tree over the measured phase (from
# /proc/PID/stat), and of the clients (sipp / Python load client, via /usr/bin/time).
#
# Capacity sweeps (reg_udp, reg_tcp, calls; after the fixed-rate workloads, or alone with
# --capacity; --no-capacity skips them). The fixed-rate rows above offer a rate both servers
# carry, so their throughput ratio reads 1.0; the sweep finds where each one gives out:
#   capacity     the highest offered rate at which a step had 0 failed requests (no 200 within
#                SWEEP_RECV_TIMEOUT_MS counts as failed), achieved >= 95% of the offered rate
#                (successful requests over first-to-last response) and p99 < SWEEP_P99_MS
#   sweep        SWEEP_REG_START (REGISTER/s) or SWEEP_CALL_START (calls/s), times SWEEP_FACTOR per
#                step until a step fails (at most SWEEP_STEPS steps, SWEEP_MAX/s), then
#                SWEEP_BISECT bisections between the last passing and the first failing rate;
#                each step offers its rate for SWEEP_DUR s. The x1.5 grid is the same for both
#                servers. A step that fails while other processes used > SWEEP_BUSY_S CPU seconds
#                of its window (MACHINE_BUSY) is run once more.
#   fresh server every STEP: each step starts its own server (empty location store, no
#                transactions or UDP backlog left from the step before) and stops it after.
#   load         ceil(rate / SWEEP_SIPP_RATE) sipp processes share a REGISTER step (reg_tcp: one
#                TCP connection each), ceil(rate / SWEEP_CALLER_RATE) callers and ceil(rate /
#                SWEEP_CALLEE_RATE) callee processes (splitting CALLEES) a calls step.
#   readings     from 0.5 s after the clients start to 0.5 s before they stop sending: the
#                server's cores, the busiest sipp process's cores, the machine's cores (sum over
#                all processes) and other_cpu_s (CPU used by neither server nor clients).
#   limits       the first failing rate above the capacity says who gave out: "sipp" when a sipp
#                process used >= SIPP_LIMIT_CORES of a core there (the key <w>_sipp_limited=1:
#                the capacity is then a lower bound; raise the process count by lowering
#                SWEEP_SIPP_RATE / SWEEP_CALLER_RATE / SWEEP_CALLEE_RATE), "machine" when all CPUs
#                were >= 90% busy (server and clients share this machine), else "server".
#   per_cpu_s    successful requests (calls) per server CPU second in the step at the highest
#                grid rate both servers passed: the same offered rate, the same work.
# Defaults: SWEEP_DUR=5 SWEEP_FACTOR=1.5 SWEEP_STEPS=12 SWEEP_BISECT=3 SWEEP_REG_START=2000
# SWEEP_CALL_START=200 SWEEP_MAX=100000 SWEEP_P99_MS=50 SWEEP_RECV_TIMEOUT_MS=2000
# SWEEP_SIPP_RATE=25000 SWEEP_CALLER_RATE=5000 SWEEP_CALLEE_RATE=5000 SIPP_LIMIT_CORES=0.85
# SWEEP_BUSY_S=1; about 6 minutes for the three workloads x two servers on an idle 2-core
# machine. --quick: SWEEP_DUR=2, 2 steps, no bisection (about a minute with --capacity): it
# checks the set-up, it does not find the capacity.
#
# Output: one line per run or sweep step as it goes, then the tables (fixed rate: median of the
# rounds, ratio = sipserver / Kamailio, the table says which direction is better; capacity:
# one row per workload, then every step), and LAST one line of key=value pairs:
# <workload>_sipserver= <workload>_kamailio= <workload>_ratio= <workload>_cpu_sipserver=
# <workload>_cpu_kamailio= for every fixed-rate workload run, and for every sweep
# <w>_capacity_sipserver= <w>_capacity_kamailio= <w>_capacity_ratio= <w>_per_cpu_s_sipserver=
# <w>_per_cpu_s_kamailio= <w>_per_cpu_s_ratio= <w>_per_cpu_s_rate= <w>_sipp_limited=.
#
# --rounds: default 2 (1 with --quick). --quick: short and small (about 3 minutes, the sweep
# included) to check the script works. Sizes can be overridden
# from the environment: REG_RATE REG_TCPN_RATE REG_DUR CALL_RATE CALL_DUR CALLEES FLOWS KA_INTERVAL KA_DUR
# FO_CLOSE FO_430, and the SWEEP_* values above.
# Installs nothing. Exit: 0 ran (failed requests are reported, not fatal), 1 a server did not
# start or failed the pre-flight REGISTER, 2 a tool is missing or bad usage.
# Other load on the machine skews every figure: each run reports other_cpu_s, the CPU seconds
# used meanwhile by neither the server nor the clients, and is marked MACHINE_BUSY above 2 s.
# --workers N (default 1; issue 20): sipserver runs as `sipserver run --workers N` (a supervisor
# and N worker processes sharing the listen ports with SO_REUSEPORT, each a cluster node), with a
# redis-server of its own per server start (a free loopback port, its own directory under the
# work dir, --save "" --appendonly yes --appendfsync everysec; stopped with the server, so every
# sweep step still starts from an empty store), [store] backend = "redis" and a fixed [outbound]
# secret. The server is ready when all N workers' heartbeat keys are in Redis, plus 1.5 s for
# them to see each other. Kamailio is unchanged (its 2 workers). N > 1 runs the capacity sweeps
# only (as --capacity), and their keys get a _wN suffix: <w>_capacity_wN_sipserver,
# <w>_capacity_wN_kamailio, <w>_capacity_wN_ratio, <w>_per_cpu_s_wN_sipserver/_kamailio/_ratio,
# <w>_per_cpu_s_wN_rate, <w>_sipp_limited_wN, <w>_redis_cpu_share_wN. sipserver's CPU figure
# is the supervisor + all workers (+ their store-writer children) + redis-server;
# redis_cpu_share is redis-server's part of it at the per_cpu_s rate (each step's redis_cpu_s is
# in the step notes). The kernel spreads UDP peers and TCP connections over the workers by a
# hash of the 4-tuple, so one sipp process (one source port or connection) would load one
# worker: each step runs at least SWEEP_MIN_PROCS (default 2N) REGISTER / caller sipp processes,
# for both servers; the hash still need not split them evenly.
# --store memory: sipserver keeps its bindings in memory only (store.backend = "memory"), as
# Kamailio's usrloc does here (db_mode 0): no SQLite writer, no fsync, nothing survives a
# restart. Not what sipserver ships (SQLite is its default); it shows how much of the gap is
# durability. Capacity sweeps only, keys suffixed _mem (after any _wN).
# --wait-idle S: before each run wait up to S seconds for the machine to be idle (default 0).
# --keep (or KEEP_WORK=1) keeps the work directory: server logs, sipp stats and error logs.
# --check: only check that the tools are there (exit 0 if so, 2 if not) and say which are used.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CMP="$HERE/compare"
. "$HERE/_python.sh"
KCFG="$HERE/kamailio/kamailio.cfg"
ALL="reg_udp reg_tcp reg_tcpn calls flow_bytes_tcp flow_bytes_ws keepalive_p99_ms failover_p99_ms"

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; echo "workloads: $ALL" >&2; exit 2; }

ROUNDS=""
QUICK=0
ONLY=""
KEEP="${KEEP_WORK:-0}"
IDLE_WAIT=0
CHECK=0
CAPACITY_MODE=both     # both | only (--capacity) | none (--no-capacity)
WORKERS=1
STORE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) [ $# -ge 2 ] || usage; ROUNDS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --only) [ $# -ge 2 ] || usage; ONLY="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --wait-idle) [ $# -ge 2 ] || usage; IDLE_WAIT="$2"; shift 2 ;;
        --check) CHECK=1; shift ;;
        --capacity) CAPACITY_MODE=only; shift ;;
        --no-capacity) CAPACITY_MODE=none; shift ;;
        --workers) [ $# -ge 2 ] || usage; WORKERS="$2"; shift 2 ;;
        --store) [ $# -ge 2 ] && [ "$2" = memory ] || usage; STORE="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) usage ;;
    esac
done
[ -n "$ROUNDS" ] || { [ "$QUICK" = 1 ] && ROUNDS=1 || ROUNDS=2; }
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 && "$ROUNDS" -le 20 ]] || usage
[[ "$IDLE_WAIT" =~ ^[0-9]+$ ]] || usage
[[ "$WORKERS" =~ ^[0-9]+$ && "$WORKERS" -ge 1 && "$WORKERS" -le 32 ]] || usage
if [ "$WORKERS" -gt 1 ]; then
    [ "$CAPACITY_MODE" = none ] && { echo "--workers $WORKERS: measures the capacity sweeps only; --no-capacity leaves nothing" >&2; exit 2; }
    CAPACITY_MODE=only
fi
if [ -n "$STORE" ]; then
    [ "$WORKERS" -gt 1 ] && { echo "--store memory: one process only (--workers needs Redis)" >&2; exit 2; }
    [ "$CAPACITY_MODE" = none ] && { echo "--store memory: measures the capacity sweeps only; --no-capacity leaves nothing" >&2; exit 2; }
    CAPACITY_MODE=only
fi
SELECTED=""
for w in ${ONLY//,/ }; do
    case " $ALL " in *" $w "*) SELECTED+=" $w" ;; *) echo "unknown workload: $w" >&2; usage ;; esac
done
[ -n "$SELECTED" ] || SELECTED=" $ALL"
selected() { case "$SELECTED " in *" $1 "*) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------- tools (nothing is installed)
missing=0
if ! command -v sipp >/dev/null 2>&1; then
    echo "sipp not found: install it with 'apt-get install sip-tester' (Debian/Ubuntu)" >&2
    missing=1
fi
KAMAILIO="$(command -v kamailio || true)"
[ -n "$KAMAILIO" ] || { [ -x /usr/sbin/kamailio ] && KAMAILIO=/usr/sbin/kamailio; }
if [ -z "$KAMAILIO" ]; then
    echo "kamailio not found: install it with 'apt-get install kamailio kamailio-outbound-modules" \
         "kamailio-websocket-modules' (Debian/Ubuntu)" >&2
    missing=1
fi
if ! "$PYTHON" -c 'import trio, trio_websocket' >/dev/null 2>&1; then
    echo "$PYTHON: a python with trio and trio-websocket is required (the project's own" \
         "dependencies): run ./scripts/test once to create .venv, or set PYTHON" >&2
    missing=1
fi
if [ "$WORKERS" -gt 1 ]; then
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        echo "--workers $WORKERS: redis-server and redis-cli not found: install them with 'apt-get install redis-server'" >&2
        missing=1
    fi
    if ! "$PYTHON" -c 'import redis' >/dev/null 2>&1; then
        echo "--workers $WORKERS: $PYTHON has no redis client (pip install redis)" >&2
        missing=1
    fi
fi
[ "$missing" = 0 ] || exit 2
if [ "$CHECK" = 1 ]; then
    echo "tools ok: $(command -v sipp), $KAMAILIO, $PYTHON ($("$PYTHON" -V 2>&1))"
    exit 0
fi
TIME_BIN=""
[ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

# ---------------------------------------------------------------- sizes
if [ "$QUICK" = 1 ]; then
    : "${REG_RATE:=1000}" "${REG_TCPN_RATE:=300}" "${REG_DUR:=3}" "${CALL_RATE:=200}" "${CALL_DUR:=3}" "${CALLEES:=100}"
    : "${FLOWS:=1000}" "${KA_INTERVAL:=2}" "${KA_DUR:=4}" "${FO_CLOSE:=2}" "${FO_430:=5}"
else
    : "${REG_RATE:=3000}" "${REG_TCPN_RATE:=500}" "${REG_DUR:=10}" "${CALL_RATE:=500}" "${CALL_DUR:=10}" "${CALLEES:=500}"
    : "${FLOWS:=5000}" "${KA_INTERVAL:=5}" "${KA_DUR:=15}" "${FO_CLOSE:=5}" "${FO_430:=20}"
fi
CALL_TOTAL=$((CALL_RATE * CALL_DUR))
# capacity sweep (see "capacity sweep" below)
if [ "$QUICK" = 1 ]; then
    : "${SWEEP_DUR:=2}" "${SWEEP_STEPS:=2}" "${SWEEP_BISECT:=0}" "${SWEEP_REG_START:=1000}" "${SWEEP_CALL_START:=100}"
else
    : "${SWEEP_DUR:=5}" "${SWEEP_STEPS:=12}" "${SWEEP_BISECT:=3}" "${SWEEP_REG_START:=2000}" "${SWEEP_CALL_START:=200}"
fi
: "${SWEEP_FACTOR:=1.5}" "${SWEEP_MAX:=100000}" "${SWEEP_P99_MS:=50}" "${SWEEP_RECV_TIMEOUT_MS:=2000}"
: "${SWEEP_SIPP_RATE:=25000}" "${SWEEP_CALLER_RATE:=5000}" "${SWEEP_CALLEE_RATE:=5000}" "${SIPP_LIMIT_CORES:=0.85}"
: "${SWEEP_BUSY_S:=1}"
: "${SWEEP_MIN_PROCS:=$([ "$WORKERS" -gt 1 ] && echo $((2 * WORKERS)) || echo 1)}"
CAP_SUFFIX=""
[ "$WORKERS" -gt 1 ] && CAP_SUFFIX="_w$WORKERS"
[ -n "$STORE" ] && CAP_SUFFIX+="_mem"
export SIPP_LIMIT_CORES SWEEP_BUSY_S CAP_SUFFIX
[[ "$SWEEP_DUR" =~ ^[0-9]+$ && "$SWEEP_DUR" -ge 2 ]] || { echo "SWEEP_DUR must be >= 2 (s)" >&2; exit 2; }
CAP_ALL="reg_udp reg_tcp calls"
FIXED=1; CAP=1
[ "$CAPACITY_MODE" = only ] && FIXED=0
[ "$CAPACITY_MODE" = none ] && CAP=0
if [ "$CAPACITY_MODE" = only ]; then
    any=0; for w in $CAP_ALL; do selected "$w" && any=1; done
    [ "$any" = 1 ] || { echo "--capacity: sweeps exist for $CAP_ALL only" >&2; exit 2; }
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt $((FLOWS + 500)) ]; then
    echo "open-file limit $(ulimit -n) is too low for FLOWS=$FLOWS" >&2
    exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sipserver-compare.XXXXXX")"
RESULTS="$WORK/results.tsv"
CAPACITY="$WORK/capacity.tsv"
: > "$RESULTS"
: > "$CAPACITY"
SERVER_PID=""
SERVER_NAME=""
REDIS_PID=""
REDIS_PORT=""
CHILD_PIDS=""

cleanup() {
    local rc=$?
    for pid in $CHILD_PIDS; do kill "$pid" 2>/dev/null || true; done
    stop_server >/dev/null 2>&1 || true
    if [ "$KEEP" = 1 ]; then
        echo "work files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports N: N different loopback ports, each free for both TCP and UDP right now.
free_ports() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
want, found, held = int(sys.argv[1]), [], []
for _ in range(500):
    if len(found) == want:
        break
    t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); u.close()
        continue
    held += [t, u]          # keep them bound until all are chosen: no port twice
    found.append(port)
print(" ".join(map(str, found)))
EOF
}
free_port() { free_ports 1; }

# ---------------------------------------------------------------- servers
# start_server NAME DIR: SERVER_PID (the server's own process: Kamailio's main process, whose
# workers are its children), SIP_PORT (UDP+TCP), WS_PORT, SERVER_LOG.
start_server() {
    local name=$1 dir=$2
    mkdir -p "$dir"
    read -r SIP_PORT WS_PORT < <(free_ports 2)
    SERVER_LOG="$dir/server.log"
    SERVER_NAME="$name"
    if [ "$name" = sipserver ]; then
        local store="backend = \"${STORE:-sqlite}\"" extra="" wargs=()
        if [ "$WORKERS" -gt 1 ]; then
            start_redis "$dir/redis"
            store="backend = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\""
            extra="
[outbound]
secret = \"compare-sh-fixed-flow-token-secret\""
            wargs=(--workers "$WORKERS")
        fi
        cat > "$dir/sipserver.toml" <<EOF
[server]
listen = ["udp:127.0.0.1:$SIP_PORT", "tcp:127.0.0.1:$SIP_PORT", "ws:127.0.0.1:$WS_PORT"]
domains = ["example.com"]
data_dir = "$dir/data"
log_level = "warning"

[store]
$store

[rate_limit]
enabled = false

[limits]
max_connections = 200000
max_connections_per_ip = 200000
$extra
EOF
        (cd "$dir" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m sipserver run \
            -c "$dir/sipserver.toml" ${wargs[@]+"${wargs[@]}"} >"$SERVER_LOG" 2>&1) &
    else
        (cd "$dir" && exec "$KAMAILIO" -f "$KCFG" -DD -E -A "WS_PORT=$WS_PORT" \
            -l "udp:127.0.0.1:$SIP_PORT" -l "tcp:127.0.0.1:$SIP_PORT" -l "tcp:127.0.0.1:$WS_PORT" \
            -m 1024 -M 16 >"$SERVER_LOG" 2>&1) &
    fi
    SERVER_PID=$!
    for _ in $(seq 200); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "$name exited at start-up:" >&2; tail -30 "$SERVER_LOG" >&2; exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null \
            && (exec 3<>"/dev/tcp/127.0.0.1/$SIP_PORT") 2>/dev/null; then
            [ "$name" = sipserver ] && [ "$WORKERS" -gt 1 ] && wait_workers
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
    echo "$name did not start listening:" >&2; tail -30 "$SERVER_LOG" >&2; exit 1
}

# start_redis DIR: a redis-server of its own on a free loopback port (REDIS_PID, REDIS_PORT),
# AOF on (fsync every second, as docs/cluster.md advises), no RDB snapshots.
start_redis() {
    local rdir=$1
    mkdir -p "$rdir"
    REDIS_PORT="$(free_port)"
    (cd "$rdir" && exec redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$rdir" \
        --save "" --appendonly yes --appendfsync everysec --logfile "$rdir/redis.log" \
        >/dev/null 2>&1) &
    REDIS_PID=$!
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "redis-server did not start:" >&2; tail -20 "$rdir/redis.log" >&2; exit 1
}

stop_redis() {
    [ -n "$REDIS_PID" ] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
}

# wait_workers: the supervisor binds the shared ports before its workers run, so a connect says
# little; wait (up to 30 s) until every worker's heartbeat key is in Redis, then 1.5 s more for the
# workers to poll each other's (cluster.heartbeat_interval 1 s).
wait_workers() {
    local n=0
    for _ in $(seq 300); do
        n="$(redis-cli -p "$REDIS_PORT" --scan --pattern 'sipserver:node:*' 2>/dev/null | wc -l)"
        [ "$n" -ge "$WORKERS" ] && { sleep 1.5; return 0; }
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "sipserver --workers $WORKERS: $n of $WORKERS workers beat in Redis:" >&2
    tail -30 "$SERVER_LOG" >&2; exit 1
}

# stop_server: SIGTERM to the server, then to any worker left over (by pid), SIGKILL after 10 s.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pids
    pids="$("$PYTHON" "$CMP/proc.py" tree "$SERVER_PID" 2>/dev/null || true)"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.2
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true; done
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    stop_redis
}

# server_cpu: CPU seconds of the server's process tree (with --workers: supervisor, workers and
# their store-writer children) plus its redis-server's; redis_cpu: the latter alone.
server_cpu() { "$PYTHON" "$CMP/proc.py" cpu "$SERVER_PID${REDIS_PID:+,$REDIS_PID}"; }
redis_cpu() { if [ -n "$REDIS_PID" ]; then "$PYTHON" "$CMP/proc.py" cpu "$REDIS_PID"; else echo na; fi; }

# CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal).
busy_seconds() {
    awk -v t="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / t; exit }' /proc/stat
}
# run_begin / run_end bracket a run (server started .. server about to stop); other_cpu CLIENT
# then prints the CPU seconds that neither the server nor the benchmark's clients used in that
# time: a few tenths are this script; more means something else was running on the machine.
run_begin() { RUN_BUSY0="$(busy_seconds)"; RUN_SCPU0="$(server_cpu)"; }
run_end() { RUN_BUSY1="$(busy_seconds)"; RUN_SCPU1="$(server_cpu)"; }
other_cpu() {
    awk -v b0="$RUN_BUSY0" -v b1="$RUN_BUSY1" -v s0="$RUN_SCPU0" -v s1="$RUN_SCPU1" -v c="$1" 'BEGIN {
        if (c == "na") { print "na"; exit }
        o = (b1 - b0) - (s1 - s0) - c; if (o < 0) o = 0
        printf "%.2f%s", o, (o > 2 ? " MACHINE_BUSY" : "") }'
}

# busy_pct S: percentage of all CPUs the machine kept busy over the next S seconds (proc.py busy:
# the per-process sum, or /proc/stat's tick-sampled figure if larger; the latter alone reads far
# too low on this kind of VM).
busy_pct() {
    awk -v c="$("$PYTHON" "$CMP/proc.py" busy "$1")" -v n="$(nproc)" 'BEGIN { printf "%.0f", 100 * c / n }'
}

# wait_idle: with --wait-idle S, wait up to S seconds until the machine is below 10% busy.
wait_idle() {
    [ "$IDLE_WAIT" -gt 0 ] || return 0
    local waited=0 pct
    while :; do
        pct="$(busy_pct 2)"
        [ "$pct" -le 10 ] && return 0
        if [ "$waited" -ge "$IDLE_WAIT" ]; then
            echo "  (machine still ${pct}% busy after ${waited} s: running anyway)"
            return 0
        fi
        [ "$waited" = 0 ] && echo "  (machine ${pct}% busy: waiting up to ${IDLE_WAIT} s for it to be idle)"
        sleep 3
        waited=$((waited + 5))
    done
}

# sipp -t tn binds a fresh local port for every connection; with thousands of its sockets from
# an earlier run still in TIME_WAIT each bind() gets slow in the kernel and sipp, not the server,
# becomes the bottleneck (and the later runs would pay more than the earlier). Wait (at most 70 s)
# until they have expired.
wait_time_wait() {
    local n waited=0
    while :; do
        n="$(ss -Htan state time-wait 2>/dev/null | wc -l)"
        [ "$n" -le 1000 ] || [ "$waited" -ge 70 ] && break
        [ "$waited" = 0 ] && echo "  (waiting for $n TIME_WAIT sockets to expire first)"
        sleep 2
        waited=$((waited + 2))
    done
    TW_AT_START="$n"
}

# Error lines in the server log (sipserver: ERROR/CRITICAL/Traceback; Kamailio: ERROR/CRITICAL).
log_errors() { grep -c -E '(ERROR|CRITICAL|Traceback)' "$SERVER_LOG" 2>/dev/null || true; }

# timed OUTFILE CMD...: run CMD, write its user+system CPU seconds into OUTFILE ("na" without
# /usr/bin/time). Returns CMD's exit status.
timed() {
    local out=$1; shift
    if [ -n "$TIME_BIN" ]; then
        local trc=0
        "$TIME_BIN" -f '%U %S' -o "$out.raw" "$@" || trc=$?
        awk 'END { if (NF >= 2) printf "%.2f\n", $(NF-1) + $NF; else print "na" }' "$out.raw" > "$out" 2>/dev/null \
            || echo na > "$out"
        return "$trc"
    fi
    echo na > "$out"
    "$@"
}

users_file() {  # users_file FILE PREFIX COUNT: sipp -inf, one AoR and instance per line
    awk -v p="$2" -v n="$3" 'BEGIN { print "SEQUENTIAL";
        for (i = 0; i < n; i++) printf "%s%d;6d1c0b7e-3f4a-4b8c-9d2e-%012x\n", p, i, i }' > "$1"
}

rtt_freq() {  # a -rtt_freq dividing TOTAL: sipp drops an unfinished batch of samples at exit
    local f
    for f in 100 50 25 20 10 5 4 2 1; do [ $(($1 % f)) -eq 0 ] && { echo "$f"; return; }; done
}

SIPP_COMMON=(-i 127.0.0.1 -nostdin -max_recv_loops 10000 -max_sched_loops 10000 -trace_err)

# record WORKLOAD SERVER ROUND VALUE CPU_SERVER CPU_CLIENT NOTE [COUNT]: COUNT = requests or
# calls that succeeded in the measured phase (gives work per server CPU second)
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${8:-}" >> "$RESULTS"
    printf '  %-18s %-9s round %s: %s (server cpu %s s, client cpu %s s) %s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7"
}

# ---------------------------------------------------------------- pre-flight
preflight() {
    local name=$1 dir="$WORK/preflight-$1"
    start_server "$name" "$dir"
    users_file "$dir/u.csv" preflight 1
    local rc=0
    (cd "$dir" && timeout 20 sipp "127.0.0.1:$SIP_PORT" -sf "$CMP/register.xml" -inf "$dir/u.csv" \
        -key domain example.com -t u1 -p "$(free_port)" -m 1 "${SIPP_COMMON[@]}" \
        -error_file "$dir/errors.log" -trace_msg -message_file "$dir/messages.log" \
        -timeout 15s >"$dir/sipp.out" 2>&1) || rc=$?
    stop_server
    if [ "$rc" != 0 ]; then
        echo "pre-flight: $name did not answer an outbound REGISTER with 200 + Require: outbound" >&2
        cat "$dir/errors.log" "$dir/messages.log" 2>/dev/null | tail -40 >&2
        exit 1
    fi
    echo "pre-flight: $name answers an outbound REGISTER with 200 and Require: outbound"
}

# ---------------------------------------------------------------- workloads
run_reg() {  # run_reg WORKLOAD SERVER ROUND
    local wl=$1 srv=$2 round=$3 mode dir="$WORK/$1-$2-$3"
    local rate=$REG_RATE
    case "$wl" in reg_udp) mode=u1 ;; reg_tcp) mode=t1 ;; reg_tcpn) mode=tn; rate=$REG_TCPN_RATE ;; esac
    local total=$((rate * REG_DUR))
    TW_AT_START=""
    [ "$mode" = tn ] && wait_time_wait
    wait_idle
    start_server "$srv" "$dir"
    run_begin
    users_file "$dir/users.csv" "reg$round" "$total"
    local cpu0 cpu1 rc=0
    cpu0="$(server_cpu)"
    (cd "$dir" && timed "$dir/sipp_cpu" timeout $((REG_DUR + 90)) sipp "127.0.0.1:$SIP_PORT" \
        -sf "$CMP/register.xml" -inf "$dir/users.csv" -key domain example.com \
        -t "$mode" -p "$(free_port)" -r "$rate" -rp 1000 -m "$total" -l 20000 \
        -max_socket 15000 "${SIPP_COMMON[@]}" -error_file "$dir/errors.log" \
        -timeout "$((REG_DUR + 60))s" -recv_timeout 10000 \
        -trace_stat -stf "$dir/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$total")" \
        >"$dir/sipp.out" 2>&1) || rc=$?
    cpu1="$(server_cpu)"
    run_end
    local errs; errs="$(log_errors)"
    stop_server
    local rtt; rtt="$(find "$dir" -maxdepth 1 -name '*_rtt.csv' | head -1)"
    local sent ok failed per_s p50 p99
    read -r sent ok failed per_s p50 p99 < <("$PYTHON" "$CMP/proc.py" sipp "$dir/stat.csv" "${rtt:-/nonexistent}" reg)
    local note="offered=${rate}/s sent=$sent ok=$ok failed=$failed p50_ms=$p50 p99_ms=$p99 sipp_rc=$rc other_cpu_s=$(other_cpu "$(cat "$dir/sipp_cpu")")"
    [ -n "$TW_AT_START" ] && note+=" time_wait_at_start=$TW_AT_START"
    [ "$errs" != 0 ] && note+=" server_log_errors=$errs"
    [ "$failed" != 0 ] && note+=" first_error=$(grep -m1 -o -E "(Aborting call|receive timeout|Failed regexp|unexpected)[^']{0,80}" "$dir/errors.log" 2>/dev/null | head -1 | tr ' ' '_' || true)"
    record "$wl" "$srv" "$round" "$per_s" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" \
        "$(cat "$dir/sipp_cpu")" "$note" "$ok"
}

run_calls() {  # run_calls SERVER ROUND
    local srv=$1 round=$2 dir="$WORK/calls-$1-$2"
    wait_idle
    start_server "$srv" "$dir"
    run_begin
    users_file "$dir/callees.csv" "callee" "$CALLEES"
    mkdir -p "$dir/callee" "$dir/caller"
    # callees: one sipp, one TCP connection per callee, each registered and then held open
    (cd "$dir/callee" && timed "$dir/callee_cpu" timeout $((CALL_DUR + 120)) sipp "127.0.0.1:$SIP_PORT" \
        -sf "$CMP/callee.xml" -oocsf "$CMP/uas.xml" -inf "$dir/callees.csv" -key domain example.com \
        -set expect "$CALL_TOTAL" -t tn -p "$(free_port)" -r 500 -rp 1000 -m "$CALLEES" \
        -l $((CALLEES + 10)) -max_socket $((CALLEES + 100)) "${SIPP_COMMON[@]}" \
        -error_file "$dir/callee/errors.log" -trace_logs -log_file "$dir/callee/log.log" \
        -timeout "$((CALL_DUR + 100))s" >"$dir/callee/sipp.out" 2>&1; echo $? > "$dir/callee/rc") &
    local callee_job=$!
    CHILD_PIDS="$callee_job"
    local registered=0
    for _ in $(seq 300); do
        registered="$(grep -c '^registered' "$dir/callee/log.log" 2>/dev/null || true)"
        [ "${registered:-0}" -ge "$CALLEES" ] && break
        [ -f "$dir/callee/rc" ] && break
        sleep 0.1
    done
    sleep 0.3
    local cpu0 cpu1 rc=0
    cpu0="$(server_cpu)"
    (cd "$dir/caller" && timed "$dir/caller_cpu" timeout $((CALL_DUR + 90)) sipp "127.0.0.1:$SIP_PORT" \
        -sf "$CMP/caller.xml" -inf "$dir/callees.csv" -key domain example.com \
        -t u1 -p "$(free_port)" -r "$CALL_RATE" -rp 1000 -m "$CALL_TOTAL" -l 20000 \
        "${SIPP_COMMON[@]}" -error_file "$dir/caller/errors.log" \
        -timeout "$((CALL_DUR + 60))s" -recv_timeout 32000 \
        -trace_stat -stf "$dir/caller/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$CALL_TOTAL")" \
        >"$dir/caller/sipp.out" 2>&1) || rc=$?
    cpu1="$(server_cpu)"
    for _ in $(seq 150); do [ -f "$dir/callee/rc" ] && break; sleep 0.1; done
    kill "$callee_job" 2>/dev/null || true
    wait "$callee_job" 2>/dev/null || true
    CHILD_PIDS=""
    run_end
    local errs; errs="$(log_errors)"
    stop_server
    local rtt; rtt="$(find "$dir/caller" -maxdepth 1 -name '*_rtt.csv' | head -1)"
    local sent ok failed per_s p50 p99
    read -r sent ok failed per_s p50 p99 < <("$PYTHON" "$CMP/proc.py" sipp "$dir/caller/stat.csv" "${rtt:-/nonexistent}" setup)
    local ccpu
    ccpu="$(awk 'BEGIN { s = 0; na = 0 } { if ($1 == "na") na = 1; else s += $1 } END { if (na) print "na"; else printf "%.2f\n", s }' \
        "$dir/caller_cpu" "$dir/callee_cpu" 2>/dev/null || echo na)"
    local note="offered=${CALL_RATE}/s callees_registered=$registered/$CALLEES sent=$sent ok=$ok failed=$failed setup_p50_ms=$p50 setup_p99_ms=$p99 sipp_rc=$rc other_cpu_s=$(other_cpu "$ccpu")"
    [ "$errs" != 0 ] && note+=" server_log_errors=$errs"
    [ "$failed" != 0 ] && note+=" first_error=$(grep -m1 -o -E "(Aborting call|receive timeout|Failed regexp|unexpected)[^']{0,80}" "$dir/caller/errors.log" 2>/dev/null | head -1 | tr ' ' '_' || true)"
    record calls "$srv" "$round" "$per_s" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" "$ccpu" "$note" "$ok"
}

kv() {  # kv LINE KEY: value of KEY=... in a key=value line
    sed -n "s/.*\(^\| \)$2=\([^ ]*\).*/\2/p" <<<"$1"
}

run_flows() {  # run_flows tcp|ws SERVER ROUND
    local tr=$1 srv=$2 round=$3 dir="$WORK/flows_$1-$2-$3"
    wait_idle
    start_server "$srv" "$dir"
    run_begin
    local dur=0
    [ "$tr" = tcp ] && selected keepalive_p99_ms && dur="$KA_DUR"
    local rc=0
    timed "$dir/client_cpu" timeout $((dur + 240)) "$PYTHON" "$CMP/flows.py" --port "$SIP_PORT" \
        --ws-port "$WS_PORT" --pid "$SERVER_PID" --transport "$tr" --flows "$FLOWS" \
        --interval "$KA_INTERVAL" --duration "$dur" >"$dir/flows.out" 2>&1 || rc=$?
    run_end
    local errs; errs="$(log_errors)"
    stop_server
    local line; line="$(tail -1 "$dir/flows.out")"
    if [ "$rc" != 0 ] || [[ "$line" != flows=* ]]; then
        echo "flows.py ($tr, $srv) failed (exit $rc):" >&2; tail -15 "$dir/flows.out" >&2
        line="flows=0"
    fi
    local nflows failed per_flow
    nflows="$(kv "$line" flows)"; failed="$(kv "$line" failed)"
    if [ "$srv" = sipserver ]; then per_flow="$(kv "$line" vmrss_per_flow)"; else per_flow="$(kv "$line" pss_per_flow)"; fi
    local note="flows=$nflows/$FLOWS failed=${failed:-na} setup_s=$(kv "$line" setup_s) vmrss_per_flow=$(kv "$line" vmrss_per_flow) tree_rss_per_flow=$(kv "$line" rss_per_flow) tree_pss_per_flow=$(kv "$line" pss_per_flow) other_cpu_s=$(other_cpu "$(cat "$dir/client_cpu")")"
    [ "$errs" != 0 ] && note+=" server_log_errors=$errs"
    local why; why="$(grep -m1 'flow setup failure' "$dir/flows.out" | cut -c1-120 | tr ' ' '_' || true)"
    [ -n "$why" ] && note+=" $why"
    if selected "flow_bytes_$tr"; then
        record "flow_bytes_$tr" "$srv" "$round" "${per_flow:-na}" "$(kv "$line" cpu_setup_s)" "$(cat "$dir/client_cpu")" "$note"
    fi
    if [ "$dur" != 0 ]; then
        record keepalive_p99_ms "$srv" "$round" "$(kv "$line" ka_p99_ms)" "$(kv "$line" cpu_ka_s)" "$(cat "$dir/client_cpu")" \
            "flows=$nflows interval_s=$KA_INTERVAL duration_s=$KA_DUR pings=$(kv "$line" ka_pings) lost=$(kv "$line" ka_lost) p50_ms=$(kv "$line" ka_p50_ms)"
    fi
}

run_failover() {  # run_failover SERVER ROUND
    local srv=$1 round=$2 dir="$WORK/failover-$1-$2"
    wait_idle
    start_server "$srv" "$dir"
    run_begin
    local cpu0 cpu1 rc=0
    cpu0="$(server_cpu)"
    timed "$dir/client_cpu" timeout $((FO_CLOSE * 15 + FO_430 * 15 + 60)) "$PYTHON" "$CMP/failover.py" \
        --port "$SIP_PORT" --close-rounds "$FO_CLOSE" --f430-rounds "$FO_430" --wait 12 \
        >"$dir/failover.out" 2>&1 || rc=$?
    cpu1="$(server_cpu)"
    run_end
    local errs; errs="$(log_errors)"
    stop_server
    local line; line="$(tail -1 "$dir/failover.out")"
    if [ "$rc" != 0 ] || [[ "$line" != close_rounds=* ]]; then
        echo "failover.py ($srv) failed (exit $rc):" >&2; tail -15 "$dir/failover.out" >&2
        line=""
    fi
    local cpu; cpu="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')"
    local v; v="$(kv "$line" close_p99_ms)"
    [ "$(kv "$line" close_rounds)" = 0 ] && v=na
    local note="close: rounds=$(kv "$line" close_rounds) timeouts=$(kv "$line" close_timeouts) p50_ms=$(kv "$line" close_p50_ms) max_ms=$(kv "$line" close_max_ms) other_cpu_s=$(other_cpu "$(cat "$dir/client_cpu")")"
    [ "$errs" != 0 ] && note+=" server_log_errors=$errs"
    record failover_p99_ms "$srv" "$round" "${v:-na}" "$cpu" "$(cat "$dir/client_cpu")" "$note"
    v="$(kv "$line" f430_p99_ms)"
    [ "$(kv "$line" f430_rounds)" = 0 ] && v=na
    record failover430_p99_ms "$srv" "$round" "${v:-na}" "$cpu" "$(cat "$dir/client_cpu")" \
        "430: rounds=$(kv "$line" f430_rounds) timeouts=$(kv "$line" f430_timeouts) p50_ms=$(kv "$line" f430_p50_ms)"
}

# ---------------------------------------------------------------- capacity sweep
# A rising-rate sweep per workload and server; every step runs against a FRESH server (started
# for the step, stopped after it), so no step inherits the previous one's bindings, timer-J
# transactions, SQLite file or UDP backlog. Steps: SWEEP_START, then x SWEEP_FACTOR until a step
# fails (or SWEEP_STEPS steps or SWEEP_MAX rate), then SWEEP_BISECT bisections between the last
# passing and the first failing rate. A step offers RATE/s for SWEEP_DUR s and passes with 0
# failed requests (no 200 within SWEEP_RECV_TIMEOUT_MS counts as failed), >= 95% of RATE achieved
# and p99 < SWEEP_P99_MS. Capacity = the highest passing rate.
# Load: ceil(RATE / SWEEP_SIPP_RATE) sipp processes share the rate (reg_tcp: one TCP connection
# each); calls: one callee sipp per SWEEP_CALLEE_RATE calls/s, each holding its share of the
# CALLEES. From 1 s into the step to its end, the CPU of the server, of every sipp process and of
# the whole machine is sampled: a sipp process at >= SIPP_LIMIT_CORES of a core in the first
# failing step marks the sweep sipp_limited (the client, not the server, may have given out).

# sweep_step WORKLOAD SERVER RATE STEP PHASE: one step; appends a line to $CAPACITY (columns:
# proc.py CAP_COLS) and sets STEP_PASS to 1 or 0.
sweep_step() {
    local wl=$1 srv=$2 rate=$3 step=$4 phase=$5 dir="$WORK/cap-$1-$2-$4"
    local per_proc=$SWEEP_SIPP_RATE
    [ "$wl" = calls ] && per_proc=$SWEEP_CALLER_RATE
    local n=$(((rate + per_proc - 1) / per_proc))
    [ "$n" -ge "$SWEEP_MIN_PROCS" ] || n=$SWEEP_MIN_PROCS
    local total=$((rate * SWEEP_DUR)) recv_s=$(((SWEEP_RECV_TIMEOUT_MS + 999) / 1000))
    local mode=u1 rtd=reg
    case "$wl" in reg_tcp) mode=t1 ;; calls) rtd=setup ;; esac
    start_server "$srv" "$dir"
    local callee_pids=() registered=0 ncallee=0
    if [ "$wl" = calls ]; then
        # callees: ceil(RATE / SWEEP_CALLEE_RATE) sipp processes, each registering its share of
        # the CALLEES over one TCP connection per callee and answering the calls that come down them
        ncallee=$(((rate + SWEEP_CALLEE_RATE - 1) / SWEEP_CALLEE_RATE))
        [ "$ncallee" -le "$CALLEES" ] || ncallee=$CALLEES
        local per=$((CALLEES / ncallee)) j cports
        read -r -a cports < <(free_ports "$ncallee")
        echo SEQUENTIAL > "$dir/callees.csv"
        for j in $(seq "$ncallee"); do
            mkdir -p "$dir/callee$j"
            users_file "$dir/callee$j/callees.csv" "callee${j}_" "$per"
            tail -n +2 "$dir/callee$j/callees.csv" >> "$dir/callees.csv"
            (cd "$dir/callee$j" && exec timeout $((SWEEP_DUR + recv_s + 60)) sipp "127.0.0.1:$SIP_PORT" \
                -sf "$CMP/callee.xml" -oocsf "$CMP/uas.xml" -inf "$dir/callee$j/callees.csv" \
                -key domain example.com -set expect 1000000000 -t tn -p "${cports[$((j - 1))]}" \
                -r 1000 -rp 1000 -m "$per" -l $((per + 10)) -max_socket $((per + 100)) \
                "${SIPP_COMMON[@]}" -error_file "$dir/callee$j/errors.log" -trace_logs \
                -log_file "$dir/callee$j/log.log" -timeout "$((SWEEP_DUR + recv_s + 50))s" \
                >"$dir/callee$j/sipp.out" 2>&1) &
            callee_pids+=($!)
        done
        for _ in $(seq 300); do
            registered="$(cat "$dir"/callee*/log.log 2>/dev/null | grep -c '^registered' || true)"
            [ "${registered:-0}" -ge $((per * ncallee)) ] && break
            sleep 0.1
        done
        sleep 0.3
    fi
    local ports pids=() i share m
    read -r -a ports < <(free_ports "$n")
    local scpu0 rcpu0; scpu0="$(server_cpu)"; rcpu0="$(redis_cpu)"
    for i in $(seq "$n"); do
        share=$((rate / n)); [ "$i" = 1 ] && share=$((rate - (n - 1) * (rate / n)))
        m=$((share * SWEEP_DUR))
        # concurrent calls: what recv_s + 2 s of the rate needs, within the open-file limit
        local limit=$((share * (recv_s + 2) + 100))
        [ "$limit" -le $(($(ulimit -n) - 1000)) ] || limit=$(($(ulimit -n) - 1000))
        mkdir -p "$dir/c$i"
        local inf="$dir/callees.csv" sf="$CMP/caller.xml"
        if [ "$wl" != calls ]; then
            inf="$dir/c$i/users.csv"; sf="$CMP/register.xml"
            users_file "$inf" "s${step}p${i}_" "$m"
        fi
        (cd "$dir/c$i" && exec timeout $((SWEEP_DUR + recv_s + 30)) sipp "127.0.0.1:$SIP_PORT" \
            -sf "$sf" -inf "$inf" -key domain example.com -t "$mode" -p "${ports[$((i - 1))]}" \
            -r "$share" -rp 1000 -m "$m" -l "$limit" -max_socket 15000 \
            "${SIPP_COMMON[@]}" -error_file "$dir/c$i/errors.log" \
            -timeout "$((SWEEP_DUR + recv_s + 3))s" -recv_timeout "$SWEEP_RECV_TIMEOUT_MS" \
            -trace_stat -stf "$dir/c$i/stat.csv" -fd 1 -trace_rtt -rtt_freq "$(rtt_freq "$m")" \
            >"$dir/c$i/sipp.out" 2>&1) &
        pids+=($!)
    done
    # steady state: from 0.5 s after the clients started to 0.5 s before they stop sending
    local sc sm mc oc
    read -r sc sm mc oc < <("$PYTHON" "$CMP/proc.py" window 0.5 "$((SWEEP_DUR - 1))" "$SERVER_PID${REDIS_PID:+,$REDIS_PID}" \
        "${pids[@]}" "${callee_pids[@]}")
    local rc=0
    for i in "${pids[@]}"; do wait "$i" || rc=$?; done
    local scpu1 rcpu1; scpu1="$(server_cpu)"; rcpu1="$(redis_cpu)"
    for i in "${callee_pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
    for i in "${callee_pids[@]}"; do wait "$i" 2>/dev/null || true; done
    stop_server
    local files=() rtt
    for i in $(seq "$n"); do
        rtt="$(find "$dir/c$i" -maxdepth 1 -name '*_rtt.csv' | head -1)"
        files+=("$dir/c$i/stat.csv" "${rtt:-/nonexistent}")
    done
    local ok failed achieved p50 p99 pass reason
    read -r ok failed achieved p50 p99 pass reason < <("$PYTHON" "$CMP/proc.py" step "$rtd" "$rate" \
        "$((total))" "$SWEEP_P99_MS" "${files[@]}")
    local scpu; scpu="$(awk -v a="$scpu0" -v b="$scpu1" 'BEGIN { printf "%.2f", b - a }')"
    local rcpu; rcpu="$(awk -v a="$rcpu0" -v b="$rcpu1" 'BEGIN { if (a == "na" || b == "na") print "na"; else printf "%.2f", b - a }')"
    local nproc_s="$n"
    if [ "$wl" = calls ]; then
        nproc_s="$n+$ncallee"
        [ "$registered" -ge $((CALLEES / ncallee * ncallee)) ] || reason+=",callees_registered=$registered"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$wl" "$srv" "$step" "$phase" "$rate" "$pass" "$ok" "$failed" "$achieved" "$p50" "$p99" \
        "$scpu" "$nproc_s" "$sc" "$sm" "$mc" "$oc" "$reason" "$rcpu" >> "$CAPACITY"
    STEP_BUSY="$(awk -v o="$oc" -v l="$SWEEP_BUSY_S" 'BEGIN { print (o > l) ? 1 : 0 }')"
    printf '  %-8s %-9s step %2s %-6s %6s/s: %s  achieved %s/s failed %s p50/p99 %s/%s ms; cores: server %s, sipp max %s (x%s), machine %s; other_cpu_s %s%s%s\n' \
        "$wl" "$srv" "$step" "$phase" "$rate" "$([ "$pass" = 1 ] && echo pass || echo "FAIL ($reason)")" \
        "$achieved" "$failed" "$p50" "$p99" "$sc" "$sm" "$nproc_s" "$mc" "$oc" \
        "$([ "$rcpu" != na ] && echo "; redis_cpu_s $rcpu of server_cpu_s $scpu")" \
        "$([ "$STEP_BUSY" = 1 ] && echo " MACHINE_BUSY")"
    STEP_PASS="$pass"
    [ "$KEEP" = 1 ] || find "$dir" -name '*.csv' -size +1M -delete 2>/dev/null || true
}

# try_step WORKLOAD SERVER RATE STEP PHASE: sweep_step, run once more (phase "retry", the next
# step number) if it failed while other processes used more than SWEEP_BUSY_S CPU seconds in
# its window (MACHINE_BUSY). STEP is updated.
try_step() {
    sweep_step "$@"
    if [ "$STEP_PASS" != 1 ] && [ "$STEP_BUSY" = 1 ]; then
        step=$((step + 1))
        sweep_step "$1" "$2" "$3" "$step" retry
    fi
}

# sweep WORKLOAD SERVER: sets SWEEP_CAP (the capacity found), SWEEP_GOOD (every rate that
# passed) and SWEEP_STEPS_RUN (steps run, retries included)
sweep() {
    local wl=$1 srv=$2 start=$SWEEP_REG_START
    [ "$wl" = calls ] && start=$SWEEP_CALL_START
    local rate=$start good=0 bad=0 step=0 mid
    SWEEP_GOOD=""
    wait_idle
    while [ "$step" -lt "$SWEEP_STEPS" ]; do
        step=$((step + 1))
        try_step "$wl" "$srv" "$rate" "$step" grow
        if [ "$STEP_PASS" != 1 ]; then bad=$rate; break; fi
        good=$rate; SWEEP_GOOD+=" $rate"
        rate="$(awk -v r="$rate" -v f="$SWEEP_FACTOR" 'BEGIN { printf "%d", r * f + 0.5 }')"
        [ "$rate" -le "$SWEEP_MAX" ] || break
    done
    if [ "$bad" -gt 0 ]; then
        for _ in $(seq "$SWEEP_BISECT"); do
            mid=$(((good + bad) / 2)); [ "$mid" -ge 100 ] && mid=$(((mid + 5) / 10 * 10))
            [ "$mid" -gt "$good" ] && [ "$mid" -lt "$bad" ] || break
            step=$((step + 1))
            try_step "$wl" "$srv" "$mid" "$step" bisect
            if [ "$STEP_PASS" = 1 ]; then good=$mid; SWEEP_GOOD+=" $mid"; else bad=$mid; fi
        done
        echo "  => $wl $srv: capacity $good/s (first failing rate $bad/s)"
    else
        echo "  => $wl $srv: capacity >= $good/s (no step failed)"
    fi
    SWEEP_CAP=$good SWEEP_STEPS_RUN=$step
}

# ---------------------------------------------------------------- main
echo "== sipserver vs Kamailio, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(free -h | awk '/^Mem:/ { print $2 }') RAM, $(uname -sr)"
echo "versions: $("$KAMAILIO" -v 2>/dev/null | head -1 | sed 's/^version: //'); $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1); $("$PYTHON" -V 2>&1); trio $("$PYTHON" -c 'import trio; print(trio.__version__)')"
[ "$FIXED" = 1 ] && echo "sizes: rounds=$ROUNDS REG_RATE=$REG_RATE REG_TCPN_RATE=$REG_TCPN_RATE REG_DUR=$REG_DUR CALL_RATE=$CALL_RATE CALL_DUR=$CALL_DUR CALLEES=$CALLEES FLOWS=$FLOWS KA_INTERVAL=$KA_INTERVAL KA_DUR=$KA_DUR FO_CLOSE=$FO_CLOSE FO_430=$FO_430"
[ "$CAP" = 1 ] && echo "sweep: SWEEP_DUR=$SWEEP_DUR SWEEP_FACTOR=$SWEEP_FACTOR SWEEP_STEPS=$SWEEP_STEPS SWEEP_BISECT=$SWEEP_BISECT SWEEP_REG_START=$SWEEP_REG_START SWEEP_CALL_START=$SWEEP_CALL_START SWEEP_P99_MS=$SWEEP_P99_MS SWEEP_RECV_TIMEOUT_MS=$SWEEP_RECV_TIMEOUT_MS SWEEP_SIPP_RATE=$SWEEP_SIPP_RATE SWEEP_CALLER_RATE=$SWEEP_CALLER_RATE SWEEP_CALLEE_RATE=$SWEEP_CALLEE_RATE CALLEES=$CALLEES SIPP_LIMIT_CORES=$SIPP_LIMIT_CORES (fresh server per step)"
[ -n "$STORE" ] && echo "sipserver: store.backend = \"$STORE\" (bindings in memory only, as Kamailio's db_mode 0; not sipserver's default), keys suffixed $CAP_SUFFIX"
[ "$WORKERS" -gt 1 ] && echo "sipserver: --workers $WORKERS, Redis $(redis-server --version | grep -o 'v=[^ ]*') on loopback (one per server start, AOF everysec), SWEEP_MIN_PROCS=$SWEEP_MIN_PROCS; its CPU = supervisor + workers + store writers + redis-server; keys suffixed $CAP_SUFFIX"
echo "workloads:$SELECTED$([ "$FIXED" = 0 ] && echo ' (capacity sweeps only)')$([ "$CAP" = 0 ] && echo ' (no capacity sweeps)')"
echo "work dir: $WORK"

idle_busy="$(busy_pct 3)"
echo "machine busy before start: ${idle_busy}% of $(nproc) CPUs over 3 s$([ "$idle_busy" -gt 10 ] && echo ' - NOT IDLE: other processes will skew the figures')"

preflight sipserver
preflight kamailio

for wl in $ALL; do
    [ "$FIXED" = 1 ] || break
    selected "$wl" || continue
    # keepalive_p99_ms is measured inside the flow_bytes_tcp run when both are selected
    if [ "$wl" = keepalive_p99_ms ] && selected flow_bytes_tcp; then continue; fi
    echo "-- $wl"
    for round in $(seq "$ROUNDS"); do
        for srv in sipserver kamailio; do
            case "$wl" in
                reg_*) run_reg "$wl" "$srv" "$round" ;;
                calls) run_calls "$srv" "$round" ;;
                flow_bytes_tcp|keepalive_p99_ms) run_flows tcp "$srv" "$round" ;;
                flow_bytes_ws) run_flows ws "$srv" "$round" ;;
                failover_p99_ms) run_failover "$srv" "$round" ;;
            esac
        done
    done
done

if [ "$CAP" = 1 ]; then
    for wl in $CAP_ALL; do
        selected "$wl" || continue
        echo "-- capacity $wl"
        sweep "$wl" sipserver
        sip_cap=$SWEEP_CAP sip_good=$SWEEP_GOOD
        sweep "$wl" kamailio
        # per_cpu_s compares both servers at a rate both passed. Both sweeps start at the same
        # rate, so there is none when sipserver failed its first step: then Kamailio runs one
        # more step at sipserver's capacity (phase "match"; it does not change Kamailio's).
        common=0
        for r in $sip_good; do case " $SWEEP_GOOD " in *" $r "*) common=1 ;; esac; done
        if [ "$common" = 0 ] && [ "$sip_cap" -gt 0 ]; then
            step=$((SWEEP_STEPS_RUN + 1))
            try_step "$wl" kamailio "$sip_cap" "$step" match
        fi
    done
fi

echo
"$PYTHON" "$CMP/proc.py" report "$RESULTS" "$CAPACITY"
