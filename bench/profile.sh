#!/usr/bin/env bash
# Profiles `sandgate egress` under dnsperf load with the harness topology (sandgate alone on
# SUT_CPU, NSD + dnsperf on LOAD_CPU), loopback only:
#   1. perf stat: syscalls per answered query (sendmsg/sendto/recvmsg/recvfrom/epoll_wait)
#   2. perf record -g (cpu-clock; this VM has no hardware cycle counter): time by DSO and symbol
#      ([JIT] = LuaJIT traces, libluajit = interpreter + runtime)
# Env: N_RULES=1000 MODE=udp PROFILE_SECONDS=10 CLIENTS=10 OUTSTANDING=100 BASE_PORT=27300
#      SUT_CPU=0 LOAD_CPU=1 SANDGATE_BIN=<repo>/build/sandgate OUT=/tmp/sandgate-profile.<random>
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" && pwd)
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
N_RULES=${N_RULES:-1000}; MODE=${MODE:-udp}; SECS=${PROFILE_SECONDS:-10}
CLIENTS=${CLIENTS:-10}; OUTSTANDING=${OUTSTANDING:-100}
BASE_PORT=${BASE_PORT:-27300}; UP_PORT=$BASE_PORT; PROXY_PORT=$((BASE_PORT + 53))
SUT_CPU=${SUT_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
((SECS > 0 && SECS <= 60)) || { echo "PROFILE_SECONDS must be 1..60" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/sandgate-profile.XXXXXX)}; mkdir -p "$OUT"

PGIDS=()
start_bg() { local __v=$1 lf=$2; shift 2; setsid "$@" >"$lf" 2>&1 </dev/null & PGIDS+=("$!"); printf -v "$__v" '%s' "$!"; }
stop_pg() {
  local pg=$1 _; kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true; wait "$pg" 2>/dev/null || true
}
cleanup() { local p; for p in "${PGIDS[@]}"; do stop_pg "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_dns() { local _; for _ in $(seq 75); do
  dig @127.0.0.1 -p "$1" api.github.com +tries=1 +time=1 2>/dev/null | grep -q 'status: ' && return 0; sleep 0.2; done; return 1; }

N_RULES=$N_RULES UPSTREAM_PORT=$UP_PORT /usr/bin/python3 "$SHARED_BENCH/lib/gen_dns.py" "$OUT"
write_nsd_config "$OUT" "$UP_PORT"
start_bg UP "$OUT/nsd.out" taskset -c "$LOAD_CPU" nsd -d -c "$OUT/nsd.conf"
wait_dns "$UP_PORT" || { echo "nsd did not start" >&2; exit 1; }
start_bg SG "$OUT/sandgate.log" taskset -c "$SUT_CPU" "$SANDGATE_BIN" egress --no-intercept --no-query-log --http-addr off \
  --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$UP_PORT" --rules "@$OUT/rules.json"
wait_dns "$PROXY_PORT" || { echo "sandgate did not start" >&2; tail "$OUT/sandgate.log" >&2; exit 1; }
PID=$(ps -o pid=,comm= -g "$SG" | awk '$2 == "sandgate" {print $1; exit}')

load() { # load <seconds> <outfile>
  taskset -c "$LOAD_CPU" dnsperf -m "$MODE" -s 127.0.0.1 -p "$PROXY_PORT" -d "$OUT/queries.txt" \
    -c "$CLIENTS" -q "$OUTSTANDING" -l "$1" -t 2 >"$2" 2>&1 || true
}

echo "== syscalls per answered query ($MODE, $N_RULES rules)"
load $((SECS + 3)) "$OUT/dnsperf-stat.txt" & LP=$!
sleep 1
ev=syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_recvmsg,syscalls:sys_enter_recvfrom
ev=$ev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_read,syscalls:sys_enter_write
ev=$ev,raw_syscalls:sys_enter,task-clock
perf stat -x, -e "$ev" -p "$PID" -- sleep "$SECS" 2>"$OUT/perf-stat.csv" || true
wait "$LP"
/usr/bin/python3 - "$OUT/perf-stat.csv" "$OUT/dnsperf-stat.txt" "$SECS" "$MODE" <<'EOF'
import re, sys
csv, dp, secs, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
c = {}
for line in open(csv):
    p = line.strip().split(",")
    if len(p) > 2 and p[0].replace(".", "").isdigit():
        c[p[2].split(":")[-1]] = float(p[0])
qps = float(re.search(r"Queries per second:\s+([\d.]+)", open(dp).read()).group(1))
# UDP: one sendmsg per answer (ours to the client); TCP answers go out with write/writev.
answers = c.get("sys_enter_sendmsg", 0) if mode == "udp" else qps * secs
print(f"dnsperf QPS {qps:.0f}; answers in window ~{answers:.0f}; SUT CPU {c.get('task-clock', 0) / 10 / secs:.0f} %")
for k, v in sorted(c.items()):
    if k.startswith("sys_enter"):
        name = k[10:] or "ALL syscalls"
        print(f"  {name:<12} {v:>10.0f}  {v / answers:.3f} per answer" if answers else f"  {name} {v:.0f}")
EOF

echo "== perf record -g, ${SECS}s"
load $((SECS + 3)) "$OUT/dnsperf-record.txt" & LP=$!
sleep 1
perf record -q -e cpu-clock -F 4000 -g -p "$PID" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null || true
wait "$LP"
grep 'Queries per second' "$OUT/dnsperf-record.txt" || true
echo "-- by DSO"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "-- top symbols (self)"
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40
echo "-- kernel time by syscall (children)"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
  grep -E '\[k\] (__sys_sendmsg|__sys_recvmsg|__x64_sys_sendto|__x64_sys_recvfrom|__x64_sys_epoll_wait|__x64_sys_write|do_syscall_64|net_rx_action|sock_def_readable) ' | head -12
echo "(perf.data and logs in $OUT)"
