#!/usr/bin/env bash
# Where the CPU of a proxied request goes, per core: the shared harness' HTTP workload (its
# backends, routes and wrk scripts from gen_http.py, the proxy alone on SUT_CPU, wrk and the
# backends on LOAD_CPU), one system at a time, ROUNDS rounds in alternating order. For each run:
# req/s from wrk, and from /proc/stat over the middle MEASURE seconds, the busy share of each of
# the two cores and its busy time per request (µs). Medians over the rounds.
#
# It shows what bench/http-bench.sh's ratios cannot: whether the load side (LOAD_CPU) is
# saturated too, in which case a cheaper proxy turns into less throughput gain than its own
# saving (see README, Performance).
#
#   bench/http-cpu.sh                   # candidate (sandgate) and nginx-lua, header mode
#   SYSTEMS="candidate nginx-lua nginx-map" MODE=uri ROUNDS=5 bench/http-cpu.sh
#
# Env: SYSTEMS="candidate nginx-lua" (also: nginx-map)  MODE=header|uri  ROUNDS=3
#      DURATION=10 MEASURE=6  CONNS=64  BACKENDS=8 N_ROUTES=1000  SUT_CPU=0 LOAD_CPU=1
#      BASE_PORT=29300 (backends 29301.., proxy 29280)  SANDGATE_BIN=<repo>/build/sandgate
#      ROUTE_SCRIPT=<repo>/bench/harness-route.lua  SHARED_BENCH=<repo>/../shared/bench
# Everything runs on 127.0.0.1; every process started here is stopped by its process group.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" 2>/dev/null && pwd) || {
  echo "shared harness not found" >&2; exit 2; }
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
ROUTE_SCRIPT=${ROUTE_SCRIPT:-$HERE/harness-route.lua}
SYSTEMS=${SYSTEMS:-"candidate nginx-lua"}
MODE=${MODE:-header}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; MEASURE=${MEASURE:-6}; CONNS=${CONNS:-64}
BACKENDS=${BACKENDS:-8}; N_ROUTES=${N_ROUTES:-1000}
SUT_CPU=${SUT_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-29300}; PROXY_PORT=$((BASE_PORT - 20))
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3

[[ $MODE == header || $MODE == uri ]] || { echo "MODE must be header or uri" >&2; exit 2; }
((MEASURE + 2 < DURATION)) || { echo "MEASURE must be at least 2 s shorter than DURATION" >&2; exit 2; }
for t in nginx wrk taskset setsid "$PY"; do
  command -v "$t" >/dev/null || { echo "http-cpu: $t is needed" >&2; exit 2; }
done
[[ -x $SANDGATE_BIN ]] || { echo "http-cpu: no $SANDGATE_BIN (build it first)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/sghttpcpu.XXXXXX)
PGIDS=()
start_bg() { # start_bg <var> <cpu> <logfile> cmd... : own session (PID == PGID), pinned
  local __v=$1 cpu=$2 lf=$3; shift 3
  setsid taskset -c "$cpu" "$@" >"$lf" 2>&1 </dev/null &
  PGIDS+=("$!"); printf -v "$__v" '%s' "$!"
}
stop_pg() {
  local pg=$1 _ keep=() p
  kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  for p in "${PGIDS[@]}"; do [[ $p == "$pg" ]] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}
cleanup() {
  local rc=$? p
  trap - EXIT
  for p in "${PGIDS[@]}"; do stop_pg "$p"; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() { local _; for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_line() { grep -E "^cpu($SUT_CPU|$LOAD_CPU) " /proc/stat | tr '\n' ' '; }

BACKENDS=$BACKENDS N_ROUTES=$N_ROUTES BACKEND_BASE_PORT=$BASE_PORT PROXY_PORT=$PROXY_PORT \
  "$PY" "$SHARED_BENCH/lib/gen_http.py" "$WORK"
cp "$SANDGATE_BIN" "$WORK/sandgate"
start_bg BE "$LOAD_CPU" "$WORK/backend.log" nginx -p "$WORK" -e "$WORK/backend.err" -c "$WORK/backend.conf"
wait_port $((BASE_PORT + BACKENDS)) || { echo "backends did not start" >&2; exit 1; }

start_sut() { # start_sut <system>
  case $1 in
  candidate)
    SANDGATE_HOME=$REPO start_bg SUT "$SUT_CPU" "$WORK/sut.log" "$WORK/sandgate" ingress \
      --script "$ROUTE_SCRIPT" --script-config "$WORK/routes.json" --workers 1 \
      --admin-addr off --listen 127.0.0.1 --port "$PROXY_PORT" ;;
  nginx-lua | nginx-map)
    start_bg SUT "$SUT_CPU" "$WORK/sut.log" nginx -p "$WORK" -e "$WORK/$1.err" -c "$WORK/$1.conf" ;;
  *) echo "http-cpu: unknown system $1" >&2; exit 2 ;;
  esac
  wait_port "$PROXY_PORT" || { echo "$1 did not start" >&2; cat "$WORK/sut.log" >&2; exit 1; }
}

: >"$WORK/runs.tsv"
for round in $(seq "$ROUNDS"); do
  order=$SYSTEMS
  ((round % 2 == 0)) && order=$(echo "$SYSTEMS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for sys in $order; do
    start_sut "$sys"
    taskset -c "$LOAD_CPU" wrk -t1 -c "$CONNS" -d "${DURATION}s" --timeout 5s \
      -s "$WORK/wrk-$MODE.lua" "http://127.0.0.1:$PROXY_PORT" >"$WORK/wrk.out" 2>&1 &
    WRK=$!
    sleep $(((DURATION - MEASURE) / 2))
    a=$(cpu_line); sleep "$MEASURE"; b=$(cpu_line)
    wait "$WRK" || true
    stop_pg "$SUT"
    rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
    [[ -n $rps ]] || { echo "wrk failed:" >&2; cat "$WORK/wrk.out" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\t%s\n' "$sys" "$rps" "${non2xx:-0}" "$a" "$b" >>"$WORK/runs.tsv"
    printf '[%s] round %s %s: %s req/s\n' "$(date +%H:%M:%S)" "$round" "$sys" "$rps" >&2
  done
done

"$PY" - "$WORK/runs.tsv" "$MEASURE" "$SUT_CPU" "$LOAD_CPU" "$MODE" <<'EOF'
import os, statistics, sys
path, measure, sut, load, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
hz = os.sysconf("SC_CLK_TCK")
def cores(line):
    f = line.split(); out = {}
    for i in range(0, len(f), 11):
        v = [int(x) for x in f[i + 1:i + 11]]
        out[f[i][3:]] = (sum(v) - v[3] - v[4], sum(v))   # busy (not idle, not iowait), total
    return out
rows = {}
for line in open(path):
    sys_, rps, non2xx, a, b = line.rstrip("\n").split("\t")
    rps = float(rps); ca, cb = cores(a), cores(b)
    r = rows.setdefault(sys_, {"rps": [], "non2xx": 0, "busy": {sut: [], load: []}, "us": {sut: [], load: []}})
    r["rps"].append(rps); r["non2xx"] += int(non2xx)
    for c in (sut, load):
        busy = cb[c][0] - ca[c][0]; tot = cb[c][1] - ca[c][1]
        r["busy"][c].append(100.0 * busy / tot)
        r["us"][c].append(busy / hz / measure / rps * 1e6)
med = statistics.median
print(f"mode {mode}; medians of {len(next(iter(rows.values()))['rps'])} rounds; "
      f"proxy on CPU{sut}, wrk and backends on CPU{load}\n")
print(f"| system | req/s | CPU{sut} busy | CPU{sut} µs/request | CPU{load} busy | CPU{load} µs/request | non-2xx | req/s per round |")
print("|---|---|---|---|---|---|---|---|")
for s, r in rows.items():
    print(f"| {s} | {med(r['rps']):.0f} | {med(r['busy'][sut]):.0f} % | {med(r['us'][sut]):.1f} | "
          f"{med(r['busy'][load]):.0f} % | {med(r['us'][load]):.1f} | {r['non2xx']} | "
          + " / ".join(f"{x:.0f}" for x in r["rps"]) + " |")
EOF
