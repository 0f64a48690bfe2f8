#!/usr/bin/env bash
# Resident memory of `sandgate ingress` holding IDLE_CLIENTS (1000) idle keep-alive clients,
# each of which made one request and stays connected. Issue 5's target: < 16 MiB.
#
# Same workload and gateway command as bench/http-bench.sh: the shared harness' backends (one
# nginx, BACKENDS ports) and routes file (gen_http.py), the gateway routing with
# bench/harness-route.lua, one worker, admin off. Steps, each read from /proc/PID/status
# (VmRSS, VmHWM, RssAnon, RssFile, in MiB; for nginx the sum over master and worker):
#   1. started, idle;
#   2. after WARM_SECONDS of wrk (CONNS connections, header then URI mode, half each), so the
#      backend pools, buffers and the Lua heap have grown to their working size (0 skips it);
#   3. with IDLE_CLIENTS idle keep-alive clients: a Python holder opens them one by one, every
#      one sends one request (even: header mode, odd: URI mode, over all routes), checks the
#      200 and the backend's answer, and keeps the connection; after SETTLE s the figures are
#      read and `ss` counts the gateway's established client sockets;
#   4. the holder then sends a second request on every connection: each must still be open
#      and answered (keep-alive really held).
# The check is VmRSS at step 3 < RSS_TARGET_MIB; VmHWM (peak over the whole life, step 2's
# load included) is printed next to it.
#
# Env: IDLE_CLIENTS=1000 WARM_SECONDS=4 CONNS=64 SETTLE=2 RSS_TARGET_MIB=16
#      COMPARE=1 (also nginx-lua and haproxy-lua from the harness configs, for context)
#      BASE_PORT=29200 (backends 29201.., gateway 29180)  BACKENDS=8 N_ROUTES=1000
#      PIN=1 SUT_CPU=0 LOAD_CPU=1  SANDGATE_BIN=<repo>/build/sandgate  SANDGATE_ARGS=''
#      ROUTE_SCRIPT=<repo>/bench/harness-route.lua  SHARED_BENCH=<repo>/../shared/bench
#      RESULTS_DIR=/tmp/sandgate-bench (the report: ingress-rss-<UTC date>.md)
# Everything runs on 127.0.0.1; every process started here is stopped by its own process group.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" 2>/dev/null && pwd) || {
  echo "shared harness not found (SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench})" >&2; exit 2; }
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
ROUTE_SCRIPT=${ROUTE_SCRIPT:-$HERE/harness-route.lua}
SANDGATE_ARGS=${SANDGATE_ARGS:-}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
WARM_SECONDS=${WARM_SECONDS:-4}
CONNS=${CONNS:-64}
SETTLE=${SETTLE:-2}
RSS_TARGET_MIB=${RSS_TARGET_MIB:-16}
COMPARE=${COMPARE:-1}
BASE_PORT=${BASE_PORT:-29200}; PROXY_PORT=$((BASE_PORT - 20))
BACKENDS=${BACKENDS:-8}; N_ROUTES=${N_ROUTES:-1000}
PIN=${PIN:-1}; SUT_CPU=${SUT_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-/tmp/sandgate-bench}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3

((IDLE_CLIENTS >= 1 && IDLE_CLIENTS <= 10000)) || { echo "IDLE_CLIENTS must be 1..10000" >&2; exit 2; }
((WARM_SECONDS >= 0 && WARM_SECONDS <= 60)) || { echo "WARM_SECONDS must be 0..60" >&2; exit 2; }
for t in nginx wrk ss taskset setsid "$PY"; do
  command -v "$t" >/dev/null || { echo "ingress-rss: $t is needed" >&2; exit 2; }
done
((COMPARE)) && { command -v haproxy >/dev/null || { echo "ingress-rss: haproxy is needed (COMPARE=0 skips it)" >&2; exit 2; }; }
[[ -x $SANDGATE_BIN ]] || { echo "ingress-rss: no $SANDGATE_BIN (build it first)" >&2; exit 2; }
# The holder needs IDLE_CLIENTS descriptors, and so does the gateway.
need=$((IDLE_CLIENTS + 200))
(($(ulimit -n) >= need)) || ulimit -n "$need" 2>/dev/null || {
  echo "ingress-rss: ulimit -n $(ulimit -n) < $need and cannot be raised" >&2; exit 2; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
WORK=$(mktemp -d /tmp/sgrss-http.XXXXXX)
PGIDS=()
start_bg() { # start_bg <var> <cpu> <logfile> cmd... : own session (PID == PGID), pinned
  local __v=$1 cpu=$2 lf=$3; shift 3
  if [[ $PIN == 1 ]]; then
    setsid taskset -c "$cpu" "$@" >"$lf" 2>&1 </dev/null &
  else
    setsid "$@" >"$lf" 2>&1 </dev/null &
  fi
  PGIDS+=("$!"); printf -v "$__v" '%s' "$!"
}
stop_pg() {
  local pg=$1 _
  [[ -z $pg ]] && return 0
  kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  local keep=() p
  for p in "${PGIDS[@]}"; do [[ $p == "$pg" ]] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}
cleanup() {
  local rc=$? p
  trap - EXIT
  exec 7>&-
  for p in "${PGIDS[@]}"; do stop_pg "$p"; done
  log "raw outputs in $WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap '' PIPE   # a holder that died must not take this script with it (echo >&7)

wait_port() { local _; for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# status <pgid> -> "VmRSS VmHWM RssAnon RssFile" in KiB, summed over the group's processes
status() {
  local files=() p
  for p in $(ps -o pid= -g "$1" 2>/dev/null); do files+=("/proc/$p/status"); done
  ((${#files[@]})) || { echo "0 0 0 0"; return 0; }
  awk '$1 == "VmRSS:" {a += $2} $1 == "VmHWM:" {b += $2} $1 == "RssAnon:" {c += $2} $1 == "RssFile:" {d += $2}
       END {print a + 0, b + 0, c + 0, d + 0}' "${files[@]}" 2>/dev/null || true
}
mib() { awk -v x="$1" 'BEGIN {printf "%.2f", x / 1024}'; }
nprocs() { ps -o pid= -g "$1" 2>/dev/null | grep -c . || true; }

# ---------- workload: the shared harness' configs ----------
BACKENDS=$BACKENDS N_ROUTES=$N_ROUTES BACKEND_BASE_PORT=$BASE_PORT PROXY_PORT=$PROXY_PORT \
  "$PY" "$SHARED_BENCH/lib/gen_http.py" "$WORK"
cp "$SANDGATE_BIN" "$WORK/sandgate"
cp "$ROUTE_SCRIPT" "$WORK/harness-route.lua"
export SANDGATE_HOME=${SANDGATE_HOME:-$REPO}
start_bg BE "$LOAD_CPU" "$WORK/backend.log" nginx -p "$WORK" -e "$WORK/backend.err" -c "$WORK/backend.conf"
wait_port $((BASE_PORT + BACKENDS)) || { log "backends did not start"; cat "$WORK/backend.err" >&2; exit 1; }

# The holder: opens N connections, one request each, keeps them; on "again" on stdin, a second
# request on each; prints one line per step. Exits at EOF on stdin.
cat >"$WORK/holder.py" <<'EOF'
import json, socket, sys
port, n, routes = int(sys.argv[1]), int(sys.argv[2]), json.load(open(sys.argv[3]))["routes"]
keys = sorted(routes)
socks, want = [], []
def req(i):
    k = keys[i % len(keys)]
    if i % 2 == 0:
        return ("GET /api/v1/items?x=1 HTTP/1.1\r\nHost: gw\r\nX-Sandbox-Route: %s\r\n\r\n" % k).encode()
    sid, p = k.rsplit("-", 1)
    return ("GET /sandboxes/%s/port/%s/api/v1/items?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n" % (sid, p)).encode()
def answer(s):
    """-> (status, headers dict) of one response with a Content-Length body, or None."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            return None
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    h = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    need = int(h.get("content-length", "0"))
    while len(body) < need:
        d = s.recv(4096)
        if not d:
            return None
        body += d
    return int(lines[0].split()[1]), h
def check(i, s):
    try:
        s.sendall(req(i))
        r = answer(s)
    except OSError:
        return False
    k = keys[i % len(keys)]
    return bool(r) and r[0] == 200 and r[1].get("x-backend") == routes[k].rsplit(":", 1)[1] \
        and r[1].get("x-seen-uri") == "/api/v1/items?x=1"
ok = 0
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    socks.append(s)
    ok += check(i, s)
print("open %d ok %d" % (len(socks), ok), flush=True)
for line in sys.stdin:
    if line.strip() == "again":
        ok = sum(check(i, s) for i, s in enumerate(socks))
        print("again %d ok %d" % (len(socks), ok), flush=True)
EOF

ROWS=()
# measure <label> cmd... : one system through the four steps; appends a row to ROWS
measure() {
  local label=$1; shift
  local pg s0 s1 s2 s3 est holder again
  start_bg pg "$SUT_CPU" "$WORK/$label.log" "$@"
  if ! wait_port "$PROXY_PORT"; then
    log "$label did not start"; tail -5 "$WORK/$label.log" >&2; stop_pg "$pg"; ROWS+=("| $label | did not start |||||||||"); return 0
  fi
  sleep 0.5
  read -ra s0 <<<"$(status "$pg")"
  if ((WARM_SECONDS > 0)); then
    local half=$(( (WARM_SECONDS + 1) / 2 )) m
    for m in header uri; do
      taskset -c "$LOAD_CPU" wrk -t1 -c "$CONNS" -d "${half}s" --timeout 5s -s "$WORK/wrk-$m.lua" \
        "http://127.0.0.1:$PROXY_PORT" >"$WORK/$label.$m.wrk" 2>&1 || true
    done
  fi
  sleep 0.5
  read -ra s1 <<<"$(status "$pg")"
  mkfifo "$WORK/$label.ctl"
  # The holder reads its commands from a fifo (its own session, PID == PGID, as start_bg).
  local pin=()
  [[ $PIN == 1 ]] && pin=(taskset -c "$LOAD_CPU")
  setsid "${pin[@]}" "$PY" "$WORK/holder.py" "$PROXY_PORT" "$IDLE_CLIENTS" "$WORK/routes.json" \
    <"$WORK/$label.ctl" >"$WORK/$label.holder" 2>&1 &
  holder=$!; PGIDS+=("$holder")
  exec 7>"$WORK/$label.ctl"
  local _
  for _ in $(seq 600); do grep -q '^open' "$WORK/$label.holder" 2>/dev/null && break; sleep 0.1; done
  sleep "$SETTLE"
  read -ra s2 <<<"$(status "$pg")"
  est=$(ss -Htn state established "( sport = :$PROXY_PORT )" 2>/dev/null | grep -c . || true)
  echo again >&7 2>/dev/null || log "$label: the holder is gone ($(tail -1 "$WORK/$label.holder"))"
  for _ in $(seq 600); do grep -q '^again' "$WORK/$label.holder" 2>/dev/null && break; sleep 0.1; done
  read -ra s3 <<<"$(status "$pg")"
  local opened again_line procs
  opened=$(sed -n 's/^open \([0-9]*\) ok \([0-9]*\)$/\2\/\1/p' "$WORK/$label.holder")
  again_line=$(sed -n 's/^again \([0-9]*\) ok \([0-9]*\)$/\2\/\1/p' "$WORK/$label.holder")
  procs=$(nprocs "$pg")
  exec 7>&-
  stop_pg "$holder"
  stop_pg "$pg"
  local verdict=""
  if [[ $label == sandgate ]]; then
    if (($(awk -v x="${s2[0]}" -v t="$RSS_TARGET_MIB" 'BEGIN {print (x / 1024 < t)}'))); then verdict=" (< $RSS_TARGET_MIB: met)"
    else verdict=" (< $RSS_TARGET_MIB: NOT met)"; fi
  fi
  log "$label: idle $(mib "${s0[0]}") MiB, after load $(mib "${s1[0]}"), with clients $(mib "${s2[0]}") (HWM $(mib "${s2[1]}")); answered $opened, established $est, second request $again_line"
  ROWS+=("| $label | $procs | $(mib "${s0[0]}") | $(mib "${s1[0]}") | **$(mib "${s2[0]}")**$verdict | $(mib "${s2[1]}") | $(mib "${s2[2]}") | $(mib "${s2[3]}") | $(mib "${s3[0]}") | ${opened:-?} | $est | ${again_line:-?} |")
}

SG_CMD=("$WORK/sandgate" ingress --script "$WORK/harness-route.lua" --script-config "$WORK/routes.json"
        --workers 1 --admin-addr off --listen 127.0.0.1 --port "$PROXY_PORT")
# shellcheck disable=SC2206
SG_CMD+=($SANDGATE_ARGS)
measure sandgate "${SG_CMD[@]}"
if ((COMPARE)); then
  measure nginx-lua nginx -p "$WORK" -e "$WORK/nginx-lua.err" -c "$WORK/nginx-lua.conf"
  measure haproxy-lua haproxy -db -f "$WORK/haproxy-lua.cfg"
fi
stop_pg "$BE"

ts=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/ingress-rss-$ts.md
{
  echo "# Gateway memory with $IDLE_CLIENTS idle keep-alive clients ($ts)"
  echo
  echo "* binary: \`$SANDGATE_BIN\` ($(stat -c '%y' "$SANDGATE_BIN" | cut -d. -f1), sha256 $(sha256sum "$SANDGATE_BIN" | cut -c1-12)), git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "* sandgate: \`ingress --script ${ROUTE_SCRIPT#"$REPO"/} --script-config routes.json --workers 1 --admin-addr off${SANDGATE_ARGS:+ $SANDGATE_ARGS}\`; harness routes file ($N_ROUTES routes, $BACKENDS backends)"
  echo "* warm-up: wrk ${WARM_SECONDS}s, $CONNS connections, header then URI mode; then $IDLE_CLIENTS clients, one request each (half header, half URI), kept open; read after ${SETTLE}s"
  echo
  echo "MiB from /proc/PID/status (nginx: master + worker). \"with clients\" is VmRSS while the clients are connected and idle; HWM is the peak over the process' life."
  echo
  echo "| system | processes | VmRSS idle | VmRSS after load | VmRSS with clients | VmHWM | RssAnon | RssFile | VmRSS after 2nd request | 1st request ok | established | 2nd request ok |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$REPORT"
log "report: $REPORT"
