#!/usr/bin/env bash
# Resident memory of `sandgate egress` with N generated rules (default 1000 and 4096), after a
# short dnsperf load so that every code path (allow, deny, upstream forward) has run.
# Reads VmRSS / VmHWM / RssAnon / RssFile from /proc/PID/status and prints them in MiB.
#
# Env: RULE_COUNTS="1000 4096"  LOAD_SECONDS=5  CLIENTS=10 OUTSTANDING=100  BASE_PORT=26300
#      COMPARE=1 (also measure dnsdist-lua with the same rules, for context)
#      SANDGATE_BIN=<repo>/build/sandgate  SHARED_BENCH=<repo>/../shared/bench
#      RESULTS_DIR=/tmp/sandgate-bench  RSS_TARGET_MIB=8 (checked for the largest rule count)
# Everything runs on 127.0.0.1; every process we start is stopped by its own process group.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" && pwd)
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
RULE_COUNTS=${RULE_COUNTS:-"1000 4096"}
LOAD_SECONDS=${LOAD_SECONDS:-5}
CLIENTS=${CLIENTS:-10}; OUTSTANDING=${OUTSTANDING:-100}
BASE_PORT=${BASE_PORT:-26300}
COMPARE=${COMPARE:-1}
RESULTS_DIR=${RESULTS_DIR:-/tmp/sandgate-bench}
RSS_TARGET_MIB=${RSS_TARGET_MIB:-8}
UP_PORT=$BASE_PORT; PROXY_PORT=$((BASE_PORT + 53))
((LOAD_SECONDS > 0 && LOAD_SECONDS <= 60)) || { echo "LOAD_SECONDS must be 1..60" >&2; exit 2; }

if [[ ! -x $SANDGATE_BIN ]]; then
  if [[ $SANDGATE_BIN != "$REPO/build/sandgate" ]]; then echo "no $SANDGATE_BIN" >&2; exit 2; fi
  cmake -S "$REPO" -B "$REPO/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
  cmake --build "$REPO/build" -j"$(nproc)" --target sandgate >&2
fi

WORK=$(mktemp -d /tmp/sandgate-rss.XXXXXX)
PGIDS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start_bg() { # start_bg <var> <logfile> cmd... : own session, PID == PGID
  local __v=$1 lf=$2; shift 2
  setsid "$@" >"$lf" 2>&1 </dev/null &
  PGIDS+=("$!"); printf -v "$__v" '%s' "$!"
}
stop_pg() {
  local pg=$1 _
  kill -TERM -- "-$pg" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pg" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pg" 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
  local keep=() p
  for p in "${PGIDS[@]}"; do [[ $p == "$pg" ]] || keep+=("$p"); done
  PGIDS=("${keep[@]}")
}
cleanup() { local p; for p in "${PGIDS[@]}"; do stop_pg "$p"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

answers() { dig @127.0.0.1 -p "$1" api.github.com A +tries=1 +time=1 2>/dev/null | grep -q 'status: '; }
wait_dns() { local _; for _ in $(seq 75); do answers "$1" && return 0; sleep 0.2; done; return 1; }
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }
mib() { awk -v x="$1" 'BEGIN {printf "%.2f", x / 1024}'; }
pid_of() { # pid_of <pgid> <comm>: the process named comm in our group
  ps -o pid=,comm= -g "$1" | awk -v c="$2" '$2 == c {print $1; exit}'
}

# ---- upstream: NSD answering every name with A 192.0.2.1 (as the shared harness does) ----
write_nsd_config "$WORK" "$UP_PORT"
start_bg UP "$WORK/upstream.log" nsd -d -c "$WORK/nsd.conf"
wait_dns "$UP_PORT" || { log "upstream did not start"; cat "$WORK/upstream.log" >&2; exit 1; }

ROWS=()
measure() { # measure <label> <rules> <dir> <comm> cmd...
  local label=$1 n=$2 dir=$3 comm=$4; shift 4
  local pg pid rss0 out="$dir/$label.dnsperf"
  start_bg pg "$dir/$label.log" "$@"
  if ! wait_dns "$PROXY_PORT"; then
    log "$label did not start"; tail -5 "$dir/$label.log" >&2; stop_pg "$pg"; return 1
  fi
  pid=$(pid_of "$pg" "$comm"); [[ -n $pid ]] || pid=$pg
  rss0=$(kib VmRSS "$pid")
  log "$label rules=$n pid=$pid: idle VmRSS $(mib "$rss0") MiB; dnsperf ${LOAD_SECONDS}s"
  dnsperf -s 127.0.0.1 -p "$PROXY_PORT" -d "$dir/queries.txt" -c "$CLIENTS" -q "$OUTSTANDING" \
    -l "$LOAD_SECONDS" -t 2 >"$out" 2>&1 || true
  local qps
  qps=$(awk '/Queries per second/ {printf "%.0f", $4}' "$out")
  ROWS+=("$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$label" "$n" "$(mib "$rss0")" \
    "$(mib "$(kib VmRSS "$pid")")" "$(mib "$(kib VmHWM "$pid")")" \
    "$(mib "$(kib RssAnon "$pid")")" "$(mib "$(kib RssFile "$pid")")" "${qps:-?}")")
  if [[ $comm == sandgate ]]; then  # Lua heap of the policy VM: a reload logs vm_bytes
    kill -HUP "$pid" 2>/dev/null || true; sleep 0.5
    local vmb
    vmb=$(grep -o '"vm_bytes":[0-9]*' "$dir/$label.log" | tail -1 | cut -d: -f2 || true)
    [[ -n $vmb ]] && ROWS[-1]+=$'\t'"$(awk -v b="$vmb" 'BEGIN {printf "%.2f", b / 1048576}')"
  fi
  stop_pg "$pg"
}

for n in $RULE_COUNTS; do
  dir=$WORK/r$n; mkdir -p "$dir"
  N_RULES=$n UPSTREAM_PORT=$UP_PORT /usr/bin/python3 "$SHARED_BENCH/lib/gen_dns.py" "$dir"
  measure sandgate "$n" "$dir" sandgate "$SANDGATE_BIN" egress --no-intercept --no-query-log --http-addr off \
    --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$UP_PORT" --rules "@$dir/rules.json"
  if [[ $COMPARE == 1 ]] && command -v dnsdist >/dev/null; then
    sed "s/{LISTEN_PORT}/$PROXY_PORT/" "$dir/dnsdist-lua.conf" >"$dir/dnsdist-lua.run.conf"
    measure dnsdist-lua "$n" "$dir" dnsdist dnsdist --supervised --disable-syslog \
      -C "$dir/dnsdist-lua.run.conf"
  fi
done
stop_pg "$UP"

mkdir -p "$RESULTS_DIR"
res=$RESULTS_DIR/$(date -u +%Y%m%dT%H%M%SZ)-rss.md
{
  echo "RSS after a ${LOAD_SECONDS}s dnsperf load ($CLIENTS clients, $OUTSTANDING outstanding), MiB (1 MiB = 1024 KiB)"
  echo "binary: $SANDGATE_BIN"
  echo
  echo "| system | rules | idle VmRSS | VmRSS after load | VmHWM | RssAnon | RssFile | load QPS | Lua VM heap |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for r in "${ROWS[@]}"; do
    IFS=$'\t' read -r -a f <<<"$r"
    echo "| ${f[0]} | ${f[1]} | ${f[2]} | ${f[3]} | ${f[4]} | ${f[5]} | ${f[6]} | ${f[7]} | ${f[8]:--} |"
  done
  max=0; for n in $RULE_COUNTS; do ((n > max)) && max=$n; done
  for r in "${ROWS[@]}"; do
    IFS=$'\t' read -r -a f <<<"$r"
    if [[ ${f[0]} == sandgate && ${f[1]} == "$max" ]]; then
      echo
      awk -v rss="${f[3]}" -v hwm="${f[4]}" -v t="$RSS_TARGET_MIB" -v n="$max" 'BEGIN {
        printf "target: sandgate RSS < %s MiB with %s rules: VmRSS %s, VmHWM %s -> %s\n",
               t, n, rss, hwm, (hwm + 0 < t + 0) ? "MET" : ((rss + 0 < t + 0) ? "MET for VmRSS, NOT for VmHWM" : "NOT MET") }'
    fi
  done
} | tee "$res"
echo "(saved to $res; work dir $WORK)"
