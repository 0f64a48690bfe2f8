#!/usr/bin/env bash
# `sandgate egress --mode dns` against `--mode dns+nft` (everything else equal), in one run:
#
#   1. warm sets: the 1000-rule policy and the 80/20 allowed/denied query mix of dns-bench.sh
#      (the shared harness' gen_dns.py), closed-loop dnsperf for DURATION s. Every allowed name
#      answers A 192.0.2.1 (bench/lib.sh's NSD), so after the first answer the IP is in the
#      dynamic set and no kernel round trip is left. Reports QPS and the ratio dns+nft/dns
#      (target >= 0.90).
#   2. cold sets: COLD_N names under one wildcard rule of the same policy, each with an A record
#      of its own (100.64.0.0/10), each asked once at a fixed rate COLD_QPS (open loop, not
#      saturation), so every answer carries an IP the set has not seen. Reports p50/p99 from
#      dnsperf -v per-query lines (as the shared harness' parse_dnsperf.py), the added p50/p99
#      (dns+nft minus dns; target p99 added < 1 ms), and from sandgate's /metrics the
#      sandgate_nft_ack_seconds histogram (p50/p99 per batch), sandgate_nft_adds_total and
#      sandgate_nft_servfail_total (should be 0).
#
# dns+nft installs `table inet sandgate` with a filter output chain whose policy is drop (the
# default action is deny), so everything runs in a private network namespace made here
# (sgbench-<pid>, loopback only): NSD, sandgate (with its interception, no --no-intercept) and
# dnsperf all use 127.0.0.1 inside it. The host's network and ruleset are never touched. Every
# process is started in its own process group and stopped by its recorded PGID; the namespace is
# deleted on exit, failure included. The shared harness has no namespace support, so this script
# starts the processes itself with the harness' topology (PIN=1: sandgate on SUT_CPU, NSD and
# dnsperf on LOAD_CPU) and reuses its gen_dns.py and parse_dnsperf.py.
#
# The modes alternate within each run (odd runs dns first, even runs dns+nft first); each
# measurement gets a fresh sandgate, so each cold run starts with an empty set.
#
# Env:
#   RUNS=3                       rounds; the tables give medians
#   MODES="dns dns+nft"          MODES=dns runs the dns half alone (works without dns+nft)
#   PARTS="warm cold"
#   DURATION=12 CLIENTS=10 OUTSTANDING=100 WARM_LATENCY=0 (1 = dnsperf -v, adds p50/p99 to part 1
#                                and costs the load generator ~8 % QPS)
#   N_RULES=1000 N_QUERIES=100000 ALLOW_PCT=80 WILDCARD_PCT=50 SEED=42   (gen_dns.py)
#   COLD_N=60000 (dyn_v4 is created with size 65536; above that the set is full and answers
#   get SERVFAIL) COLD_QPS=5000 COLD_CLIENTS=10 COLD_ZONE=<first wildcard rule's domain>
#   PIN=1 SUT_CPU=0 LOAD_CPU=1 BASE_PORT=31300 (NSD; sandgate DNS +53, API +80; namespace-local)
#   SANDGATE_BIN=<repo>/build/sandgate  SANDGATE_ARGS='' (extra flags, both modes)
#   NFT_ARGS='' (extra flags for dns+nft only, e.g. "--dyn-grace 30 --nft-timeout 100")
#   RESULTS_DIR=<repo>/bench/results (the report: nft-<UTC date>.md)  SHARED_BENCH=<repo>/../shared/bench
#   QUIET_MAX=25 QUIET_WAIT=180  before each measurement, waits (up to QUIET_WAIT s) until the host
#                                spends under QUIET_MAX % of one core over 2 s (our processes idle)
#   KEEP_WORK=1                  keeps the raw outputs (/tmp/sgnft.*); 0 removes them
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=$(cd "${SHARED_BENCH:-$REPO/../shared/bench}" 2>/dev/null && pwd) || {
  echo "shared harness not found (SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench})" >&2; exit 2; }
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
RUNS=${RUNS:-3}
MODES=${MODES:-"dns dns+nft"}
PARTS=${PARTS:-"warm cold"}
DURATION=${DURATION:-12}; CLIENTS=${CLIENTS:-10}; OUTSTANDING=${OUTSTANDING:-100}
WARM_LATENCY=${WARM_LATENCY:-0}
export N_RULES=${N_RULES:-1000} N_QUERIES=${N_QUERIES:-100000} ALLOW_PCT=${ALLOW_PCT:-80}
export WILDCARD_PCT=${WILDCARD_PCT:-50} SEED=${SEED:-42}
COLD_N=${COLD_N:-60000}; COLD_QPS=${COLD_QPS:-5000}; COLD_CLIENTS=${COLD_CLIENTS:-10}
PIN=${PIN:-1}; SUT_CPU=${SUT_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-31300}
UP_PORT=$BASE_PORT; DNS_PORT=$((BASE_PORT + 53)); API_PORT=$((BASE_PORT + 80))
SANDGATE_ARGS=${SANDGATE_ARGS:-}; NFT_ARGS=${NFT_ARGS:-}
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
QUIET_MAX=${QUIET_MAX:-25}; QUIET_WAIT=${QUIET_WAIT:-180}
KEEP_WORK=${KEEP_WORK:-1}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3

((RUNS >= 1 && RUNS <= 20)) || { echo "RUNS must be 1..20" >&2; exit 2; }
((DURATION >= 1 && DURATION <= 120)) || { echo "DURATION must be 1..120" >&2; exit 2; }
((COLD_N >= 1000 && COLD_N <= 1000000)) || { echo "COLD_N must be 1000..1000000" >&2; exit 2; }
((COLD_QPS >= 100 && COLD_QPS <= 100000)) || { echo "COLD_QPS must be 100..100000" >&2; exit 2; }
COLD_LIMIT=$((COLD_N / COLD_QPS + 15))   # dnsperf -l: a bound, the run ends after one pass
((COLD_LIMIT <= 300)) || { echo "COLD_N/COLD_QPS must stay under 285 s" >&2; exit 2; }
for m in $MODES; do [[ $m == dns || $m == dns+nft ]] || { echo "unknown mode $m" >&2; exit 2; }; done
for p in $PARTS; do [[ $p == warm || $p == cold ]] || { echo "unknown part $p" >&2; exit 2; }; done
((EUID == 0)) || { echo "nft-bench: needs root (ip netns, nftables)" >&2; exit 2; }
for t in ip nft nsd dnsperf dig curl taskset setsid "$PY" "$SANDGATE_BIN"; do
  command -v "$t" >/dev/null || { echo "nft-bench: $t is needed" >&2; exit 2; }
done
if [[ " $MODES " == *" dns+nft "* ]] &&
   ! "$SANDGATE_BIN" egress --help 2>&1 | grep -- '--mode' | grep -v 'not built' | grep -q -- 'dns+nft'; then
  # An unknown mode falls back to dns with a warning: the bench would compare dns with itself.
  echo "nft-bench: $SANDGATE_BIN has no --mode dns+nft yet (MODES=dns runs the dns half)" >&2; exit 2
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------- namespace and processes ----------
NETNS=sgbench-$$
NETNS_MADE=0
PGIDS=()
WORK=$(mktemp -d /tmp/sgnft.XXXXXX)
# A copy, so that a rebuild during the bench cannot change the binary between modes or runs.
cp "$SANDGATE_BIN" "$WORK/sandgate"
SANDGATE_SRC=$SANDGATE_BIN; SANDGATE_BIN=$WORK/sandgate
nsx() { ip netns exec "$NETNS" "$@"; }
# start_bg <var> <cpu> <logfile> cmd...: in the namespace, its own session (PID == PGID);
# `ip netns exec` and taskset exec the command, so the recorded PID is the command's own.
start_bg() {
  local __v=$1 cpu=$2 lf=$3; shift 3
  if [[ $PIN == 1 ]]; then
    setsid ip netns exec "$NETNS" taskset -c "$cpu" "$@" >"$lf" 2>&1 </dev/null &
  else
    setsid ip netns exec "$NETNS" "$@" >"$lf" 2>&1 </dev/null &
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
  local rc=$? p left
  trap - EXIT
  for p in "${PGIDS[@]}"; do stop_pg "$p"; done
  if ((NETNS_MADE)); then
    left=$(ip netns pids "$NETNS" 2>/dev/null | tr '\n' ' ' || true)
    [[ -n ${left// /} ]] && log "warning: processes still in $NETNS (not started by PGID here?): $left"
    ip netns del "$NETNS" 2>/dev/null || log "warning: could not delete netns $NETNS"
  fi
  if [[ $KEEP_WORK == 0 ]]; then rm -rf "$WORK"; else log "raw outputs in $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NETNS"
NETNS_MADE=1
nsx ip link set lo up
nsx nft list ruleset | grep -q . && { log "netns $NETNS is not empty"; exit 1; }

cpu_ticks() { # utime+stime of the live processes of a group, in clock ticks
  local t=0 p f
  for p in $(ps -o pid= -g "$1" 2>/dev/null); do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }
    # shellcheck disable=SC2086
    set -- $f
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
rcode_of() { nsx dig @127.0.0.1 -p "$1" "$2" A +tries=1 +time=1 ${3:-} 2>/dev/null | grep -o 'status: [A-Z]*' | cut -d' ' -f2 || true; }
wait_dns() { local _; for _ in $(seq $(($2 * 5))); do [[ -n $(rcode_of "$1" api.github.com) ]] && return 0; sleep 0.2; done; return 1; }
check_policy() { # the harness' 9 probes over UDP and TCP -> ok | FAIL(n)
  local bad=0 n want
  while read -r n want; do
    [[ $(rcode_of "$DNS_PORT" "$n") == "$want" ]] || bad=$((bad + 1))
    [[ $(rcode_of "$DNS_PORT" "$n" +tcp) == "$want" ]] || bad=$((bad + 1))
  done <"$WORK/probes.txt"
  ((bad == 0)) && echo ok || echo "FAIL($bad)"
}
# Host CPU from /proc/stat: busy = user+nice+system+irq+softirq (a task's system time includes
# the softirq ticks that landed in it), steal, total; in clock ticks over all CPUs.
host_ticks() {
  local _ u n sy idle iow irq sirq st
  read -r _ u n sy idle iow irq sirq st _ </proc/stat
  echo "$((u + n + sy + irq + sirq)) $st $((u + n + sy + idle + iow + irq + sirq + st))"
}
self_ticks() { # this script with its waited-for children (dnsperf, dig, ...)
  local f; f=$(cat "/proc/$$/stat"); f=${f##*) }
  # shellcheck disable=SC2086
  set -- $f
  echo $((${12} + ${13} + ${14} + ${15}))
}
NCPU=$(nproc)
# meter_start / meter_stop: around one measurement. meter_stop sets SUT_PCT (sandgate), OTHER_PCT
# (host user+system CPU that is not sandgate, NSD, dnsperf or this script: other jobs and kernel
# threads) and STEAL_PCT (the hypervisor's), each in % of one core.
meter_start() { read -ra M_HOST <<<"$(host_ticks)"; M_SG=$(cpu_ticks "$SG"); M_OURS=$(( $(cpu_ticks "$NSD") + $(self_ticks) )); }
meter_stop() {
  local h sg ours wall
  read -ra h <<<"$(host_ticks)"; sg=$(cpu_ticks "$SG"); ours=$(( $(cpu_ticks "$NSD") + $(self_ticks) ))
  wall=$(( (h[2] - M_HOST[2]) / NCPU )); ((wall > 0)) || wall=1
  SUT_PCT=$(( (sg - M_SG) * 100 / wall ))
  OTHER_PCT=$(( (h[0] - M_HOST[0] - (sg - M_SG) - (ours - M_OURS)) * 100 / wall ))
  ((OTHER_PCT >= 0)) || OTHER_PCT=0   # tick sampling
  STEAL_PCT=$(( (h[1] - M_HOST[1]) * 100 / wall ))
}
wait_quiet() { # nothing of ours runs here but an idle NSD
  local waited=0 a b busy
  while :; do
    read -ra a <<<"$(host_ticks)"; sleep 2; read -ra b <<<"$(host_ticks)"
    busy=$(( (b[0] - a[0]) * 100 * NCPU / (b[2] - a[2] > 0 ? b[2] - a[2] : 1) ))
    ((busy <= QUIET_MAX)) && return 0
    if ((waited >= QUIET_WAIT)); then log "host still busy (${busy} % of a core), going on"; return 0; fi
    ((waited == 0)) && log "host busy (${busy} % of a core > QUIET_MAX=$QUIET_MAX): waiting up to ${QUIET_WAIT}s"
    sleep 8; waited=$((waited + 10))
  done
}

# ---------- workload ----------
UPSTREAM_PORT=$UP_PORT "$PY" "$SHARED_BENCH/lib/gen_dns.py" "$WORK"
RULES=$WORK/rules.json
COLD_ZONE=${COLD_ZONE:-$(sed -n 's/.*"target":"\*\.\([^"]*\)".*/\1/p' "$RULES" | sed -n 1p)}
[[ -n $COLD_ZONE ]] || { echo "no wildcard rule in $RULES for the cold names" >&2; exit 1; }
write_nsd_config "$WORK" "$UP_PORT"
if [[ " $PARTS " == *" cold "* ]]; then
  # The cold names live in a zone of their own under a wildcard rule of the policy. Its `*`
  # keeps the warm mix's other names under that rule answering A 192.0.2.1, as with the root
  # zone alone. cold-<i>.<zone> -> 100.64.0.0/10 + i + 1, TTL 300.
  "$PY" - "$WORK" "$COLD_ZONE" "$COLD_N" <<'EOF'
import sys
d, zone, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = (100 << 24) | (64 << 16)
with open(f"{d}/cold.zone", "w") as z, open(f"{d}/cold-queries.txt", "w") as q:
    z.write(f"$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 300\n"
            "@ IN NS ns.bench.\n* IN A 192.0.2.1\n")
    for i in range(n):
        a = base + i + 1
        z.write(f"cold-{i} IN A {a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}\n")
        q.write(f"cold-{i}.{zone} A\n")
EOF
  printf 'zone:\n  name: "%s"\n  zonefile: "%s/cold.zone"\n' "$COLD_ZONE" "$WORK" >>"$WORK/nsd.conf"
  # With a zone pypi.org beside the root zone, NSD's name tree holds `org`: names under org. no
  # longer reach the root's `*` (closest encloser org, no *.org) and answer NXDOMAIN, which moved
  # the warm mix from 20.3 % to 33.6 % NXDOMAIN. A `*` under each ancestor restores the answers.
  anc=${COLD_ZONE#*.}
  while [[ -n $anc && $anc != "$COLD_ZONE" ]]; do
    printf '*.%s. IN A 192.0.2.1\n' "$anc" >>"$WORK/root.zone"
    if [[ $anc == *.* ]]; then anc=${anc#*.}; else anc=; fi
  done
fi
log "workdir $WORK  netns $NETNS  rules $(grep -c '"action"' "$RULES")  warm queries $(wc -l <"$WORK/queries.txt")"

start_bg NSD "$LOAD_CPU" "$WORK/nsd.out" nsd -d -c "$WORK/nsd.conf"
wait_dns "$UP_PORT" 60 || { log "nsd did not start"; cat "$WORK/nsd.out" "$WORK/nsd.log" >&2 || true; exit 1; }
if [[ " $PARTS " == *" cold "* ]]; then
  got=$(nsx dig @127.0.0.1 -p "$UP_PORT" "cold-$((COLD_N - 1)).$COLD_ZONE" A +short +tries=1 +time=2 2>/dev/null || true)
  [[ $got == 100.* ]] || { log "nsd does not serve the cold zone (got '$got')"; exit 1; }
fi

# start_sg <mode> <http-addr>: a fresh sandgate in the namespace, interception on.
start_sg() {
  local mode=$1 http=$2 extra=()
  # shellcheck disable=SC2206
  [[ $mode == dns+nft ]] && extra=($NFT_ARGS)
  # shellcheck disable=SC2206
  extra+=($SANDGATE_ARGS)
  SG_CMD=("$SANDGATE_BIN" egress --mode "$mode" --no-query-log --http-addr "$http"
          --listen "127.0.0.1:$DNS_PORT" --upstream "127.0.0.1:$UP_PORT" --rules "@$RULES" "${extra[@]}")
  start_bg SG "$SUT_CPU" "$WORK/sandgate-$TAG.log" "${SG_CMD[@]}"
  wait_dns "$DNS_PORT" 15 || { log "sandgate ($mode) did not start"; tail -5 "$WORK/sandgate-$TAG.log" >&2; exit 1; }
  nsx nft list table inet sandgate >"$WORK/ruleset-$TAG.txt" 2>&1 || true
  if [[ $mode == dns+nft ]] && ! grep -q 'type filter hook output' "$WORK/ruleset-$TAG.txt"; then
    log "sandgate --mode dns+nft is up but installed no filter output chain (see $WORK/ruleset-$TAG.txt)"
    exit 1
  fi
  # dns+nft keeps its table on exit by default; the next start replaces it. A dns run must not
  # find a filter left behind.
  if [[ $mode == dns ]] && grep -q 'type filter hook output' "$WORK/ruleset-$TAG.txt"; then
    log "a filter output chain is still installed in dns mode (see $WORK/ruleset-$TAG.txt)"
    exit 1
  fi
}

# load <outfile> dnsperf ...: the load generator on LOAD_CPU, in its own group, waited for
load() {
  local out=$1 dp; shift
  start_bg dp "$LOAD_CPU" "$out" "$@"
  wait "$dp" || true
  stop_pg "$dp"
}

RAW=$WORK/raw.tsv   # part run mode dnsperf-file probes sut-cpu-% metrics-file set-elements other-% steal-%
: >"$RAW"

warm() { # warm <run> <mode>
  local run=$1 mode=$2 out vflag=()
  TAG=warm-$mode-run$run; out=$WORK/$TAG.dnsperf
  [[ $WARM_LATENCY == 1 ]] && vflag=(-v)
  start_sg "$mode" off
  local probes; probes=$(check_policy)
  log "warm $mode run $run: probes $probes, dnsperf ${DURATION}s"
  meter_start
  load "$out" dnsperf -m udp -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/queries.txt" \
    -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" -t 2 "${vflag[@]}"
  meter_stop
  printf 'warm\t%s\t%s\t%s\t%s\t%s\t-\t-\t%s\t%s\n' "$run" "$mode" "$out" "$probes" \
    "$SUT_PCT" "$OTHER_PCT" "$STEAL_PCT" >>"$RAW"
  stop_pg "$SG"
}

cold() { # cold <run> <mode>
  local run=$1 mode=$2 out el=-
  TAG=cold-$mode-run$run; out=$WORK/$TAG.dnsperf
  start_sg "$mode" "127.0.0.1:$API_PORT"
  local probes; probes=$(check_policy)   # also opens the upstream path before the timed part
  local size
  size=$(awk '/set dyn_v4/ {f = 1} f && $1 == "size" {print $2; exit}' "$WORK/ruleset-$TAG.txt")
  if [[ -n $size ]] && ((COLD_N + 1 > size)); then
    log "warning: dyn_v4 holds at most $size elements: COLD_N=$COLD_N measures the full-set path (SERVFAILs)"
  fi
  log "cold $mode run $run: probes $probes, $COLD_N new names at $COLD_QPS q/s"
  meter_start
  load "$out" dnsperf -m udp -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/cold-queries.txt" -n 1 \
    -Q "$COLD_QPS" -c "$COLD_CLIENTS" -q 100 -l "$COLD_LIMIT" -t 2 -v
  meter_stop
  nsx curl -s --max-time 5 "http://127.0.0.1:$API_PORT/metrics" >"$WORK/$TAG.metrics" || log "metrics scrape failed"
  if [[ $mode == dns+nft ]]; then
    # Elements of the table's non-empty sets after the run (dyn_v4 should hold about COLD_N + 1).
    el=$(nsx nft -j list table inet sandgate 2>/dev/null | "$PY" -c '
import json, sys
out = []
for o in json.load(sys.stdin).get("nftables", []):
    s = o.get("set")
    if s and s.get("elem"):
        out.append("%s=%d" % (s["name"], len(s["elem"])))
print(" ".join(out) or "none")' 2>/dev/null || echo '?')
  fi
  printf 'cold\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$mode" "$out" "$probes" \
    "$SUT_PCT" "$WORK/$TAG.metrics" "$el" "$OTHER_PCT" "$STEAL_PCT" >>"$RAW"
  stop_pg "$SG"
}

# ---------- runs ----------
ts=$(date -u +%Y-%m-%dT%H%M%SZ)
HEADER=$WORK/header.md
{
  echo "# sandgate dns vs dns+nft ($ts)"
  echo
  echo "* binary: \`$SANDGATE_SRC\` ($(stat -c '%y' "$SANDGATE_SRC" | cut -d. -f1), sha256 $(sha256sum "$SANDGATE_BIN" | cut -c1-12), run from a copy), git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')," \
       "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true) changed file(s)"
  echo "* host: $(nproc) cores, $(uname -r); load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "* netns $NETNS (loopback only); PIN=$PIN: sandgate on CPU$SUT_CPU, NSD + dnsperf on CPU$LOAD_CPU; RUNS=$RUNS; modes alternate"
  echo "* sandgate: \`egress --mode MODE --no-query-log --http-addr off|127.0.0.1:$API_PORT --listen 127.0.0.1:$DNS_PORT --upstream 127.0.0.1:$UP_PORT --rules @rules.json${SANDGATE_ARGS:+ $SANDGATE_ARGS}\`" \
       "(interception on)${NFT_ARGS:+; dns+nft also: \`$NFT_ARGS\`}"
  [[ " $PARTS " == *" warm "* ]] && echo "* warm: $N_RULES rules, ${ALLOW_PCT}/$((100 - ALLOW_PCT)) allowed/denied, $N_QUERIES query names, every allowed answer A 192.0.2.1;" \
       "dnsperf udp ${DURATION}s, $CLIENTS clients, $OUTSTANDING outstanding$([[ $WARM_LATENCY == 1 ]] && echo ', -v' || echo ', no -v')"
  [[ " $PARTS " == *" cold "* ]] && echo "* cold: $COLD_N names cold-<i>.$COLD_ZONE (rule *.$COLD_ZONE), each its own A in 100.64.0.0/10, TTL 300, each asked once;" \
       "dnsperf -Q $COLD_QPS -c $COLD_CLIENTS -v (p50/p99 from per-query lines)"
  true
} >"$HEADER"
cat "$HEADER" >&2

for i in $(seq "$RUNS"); do
  order=$MODES
  ((i % 2 == 0)) && order=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' ')
  for part in $PARTS; do
    for m in $order; do
      wait_quiet
      "$part" "$i" "$m"
    done
  done
done
stop_pg "$NSD"

# ---------- report ----------
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/nft-$ts.md
{
  cat "$HEADER"
  echo
  "$PY" - "$RAW" "$SHARED_BENCH/lib/parse_dnsperf.py" "$COLD_N" <<'EOF'
import re, statistics, subprocess, sys
raw, parser, cold_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(raw) if l.strip()]

def dnsperf(path, probes, cpu):
    out = subprocess.run([sys.executable, parser, path, "x", probes, cpu],
                         capture_output=True, text=True).stdout.strip().split("\t")
    r = {"ok": len(out) >= 10}
    if r["ok"]:
        r.update(qps=float(out[1]), avg=float(out[2]), p50=out[3], p99=out[4], lost=int(out[5]),
                 nx=out[7], probes=out[8], cpu=out[9])
        r["p50"] = float(r["p50"]) if r["p50"] != "n/a" else None
        r["p99"] = float(r["p99"]) if r["p99"] != "n/a" else None
    text = open(path, errors="replace").read()
    m = re.search(r"Response codes:\s+(.*)", text)
    codes = dict((c, int(n)) for c, n in re.findall(r"([A-Z]+) (\d+)", m.group(1))) if m else {}
    r["servfail"] = codes.get("SERVFAIL", 0)
    m = re.search(r"Queries completed:\s+(\d+)", text)
    r["completed"] = int(m.group(1)) if m else 0
    return r

def metrics(path):
    buckets, vals = [], {}
    try:
        for line in open(path):
            if line.startswith("#") or not line.strip():
                continue
            name, v = line.rsplit(None, 1)
            m = re.match(r'sandgate_nft_ack_seconds_bucket\{le="([^"]+)"\}', name)
            if m:
                buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(v)))
            else:
                vals[name] = float(v)
    except OSError:
        pass
    return sorted(buckets), vals

def hq(q, buckets):
    """histogram_quantile as Prometheus computes it (linear inside the bucket), in ms."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total, rank, lo, prev = buckets[-1][1], q * buckets[-1][1], 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return "> %.3f" % (lo * 1000)   # beyond the last finite bucket
            if lo == 0:
                return "< %.3f" % (le * 1000)   # first bucket: interpolating from 0 means nothing
            return "%.3f" % ((lo + (le - lo) * ((rank - prev) / (c - prev) if c > prev else 1)) * 1000)
        lo, prev = le, c
    return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(x, fmt="%.3f"):
    return "n/a" if x is None else fmt % x

modes = []
for r in rows:
    if r[2] not in modes:
        modes.append(r[2])
data = {}
for part, run, mode, path, probes, cpu, mpath, elems, other, steal in rows:
    d = dnsperf(path, probes, cpu)
    d["run"], d["elems"], d["other"], d["steal"] = int(run), elems, other, steal
    if mpath != "-":
        d["buckets"], d["m"] = metrics(mpath)
    data.setdefault(part, {}).setdefault(mode, []).append(d)

warm, cold = data.get("warm"), data.get("cold")
if warm:
    print(f"## 1. Warm sets: QPS, median of {max(len(v) for v in warm.values())} run(s)")
    print()
    print("| mode | QPS | avg ms | p50 ms | p99 ms | lost | NXDOMAIN % | probes | SUT CPU % | QPS per SUT core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    mq = {}
    for mode in modes:
        rs = [r for r in warm.get(mode, []) if r["ok"]]
        if not rs:
            print(f"| {mode} | failed | | | | | | | | |"); continue
        mq[mode] = med([r["qps"] for r in rs])
        cpu = med([float(r["cpu"]) for r in rs if r["cpu"] not in ("-", "0")])
        core = med([r["qps"] * 100 / float(r["cpu"]) for r in rs if r["cpu"] not in ("-", "0")])
        print(f"| {mode} | {mq[mode]:.0f} | {f(med([r['avg'] for r in rs]))} | {f(med([r['p50'] for r in rs]))} | "
              f"{f(med([r['p99'] for r in rs]))} | {sum(r['lost'] for r in rs)} | {rs[0]['nx']} | "
              f"{','.join(sorted(set(r['probes'] for r in rs)))} | {f(cpu, '%.0f')} | {f(core, '%.0f')} |")
    if "dns" in mq and "dns+nft" in mq:
        ratio = mq["dns+nft"] / mq["dns"]
        print(f"\n**QPS ratio dns+nft/dns: {ratio:.3f}** (target >= 0.90: {'PASS' if ratio >= 0.90 else 'FAIL'})")
    print()
if cold:
    print(f"## 2. Cold sets: {cold_n} new IPs, fixed rate, median of {max(len(v) for v in cold.values())} run(s)")
    print()
    print("| mode | p50 ms | p99 ms | avg ms | achieved q/s | lost | SERVFAIL | SUT CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    mp = {}
    for mode in modes:
        rs = [r for r in cold.get(mode, []) if r["ok"]]
        if not rs:
            print(f"| {mode} | failed | | | | | | |"); continue
        mp[mode] = (med([r["p50"] for r in rs]), med([r["p99"] for r in rs]))
        print(f"| {mode} | {f(mp[mode][0])} | {f(mp[mode][1])} | {f(med([r['avg'] for r in rs]))} | "
              f"{med([r['qps'] for r in rs]):.0f} | {sum(r['lost'] for r in rs)} | {sum(r['servfail'] for r in rs)} | "
              f"{f(med([float(r['cpu']) for r in rs if r['cpu'] != '-']), '%.0f')} |")
    if "dns" in mp and "dns+nft" in mp and None not in mp["dns"] + mp["dns+nft"]:
        a50, a99 = mp["dns+nft"][0] - mp["dns"][0], mp["dns+nft"][1] - mp["dns"][1]
        print(f"\n**Added by dns+nft: p50 {a50:+.3f} ms, p99 {a99:+.3f} ms** (medians; target p99 added < 1 ms: "
              f"{'PASS' if a99 < 1.0 else 'FAIL'})")
        pairs = []
        for b in cold.get("dns+nft", []):
            a = [r for r in cold.get("dns", []) if r["run"] == b["run"]]
            if a and None not in (a[0]["p50"], a[0]["p99"], b["p50"], b["p99"]):
                pairs.append(f"run {b['run']}: p50 {b['p50'] - a[0]['p50']:+.3f}, p99 {b['p99'] - a[0]['p99']:+.3f}")
        if pairs:
            print("\nAdded, paired by run (ms): " + "; ".join(sorted(pairs)))
    nft = [r for r in cold.get("dns+nft", []) if r["ok"]]
    if nft:
        print()
        print("sandgate /metrics after each dns+nft cold run (ACK = kernel round trip per batch):")
        print()
        print("| run | ACK p50 ms | ACK p99 ms | ACK mean ms | batches (ACK count) | adds_total by result | elements sent | elements/batch | nft SERVFAIL | set elements after |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(nft, key=lambda r: r["run"]):
            v, b = r.get("m", {}), r.get("buckets", [])
            cnt, s = v.get("sandgate_nft_ack_seconds_count"), v.get("sandgate_nft_ack_seconds_sum")
            adds = {re.search(r'result="([^"]*)"', k).group(1): int(x) for k, x in v.items()
                    if k.startswith("sandgate_nft_adds_total{")}
            sf = v.get("sandgate_nft_servfail_total")
            mean = s / cnt * 1000 if cnt else None
            el = v.get("sandgate_nft_elements_total")
            per = el / cnt if cnt and el is not None else None
            print(f"| {r['run']} | {hq(0.5, b) or 'n/a'} | {hq(0.99, b) or 'n/a'} | {f(mean)} | {f(cnt, '%.0f')} | "
                  f"{' '.join(f'{k}={x}' for k, x in sorted(adds.items())) or 'n/a'} | {f(el, '%.0f')} | {f(per, '%.2f')} | "
                  f"{f(sf, '%.0f')} | {r['elems']} |")
        if not any(r.get("buckets") for r in nft):
            print("\n(no sandgate_nft_ack_seconds in /metrics)")
    print()
print("## Raw per-run numbers")
print()
print("CPU columns in % of one core over the measurement; other = host CPU (user+system+irq) not spent by "
      "sandgate, NSD or dnsperf (other jobs, kernel threads); steal = the hypervisor's.")
print()
print("| part | run | mode | QPS | avg ms | p50 ms | p99 ms | completed | lost | SERVFAIL | probes | SUT CPU % | other CPU % | steal % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for part in ("warm", "cold"):
    for mode in modes:
        for r in sorted(data.get(part, {}).get(mode, []), key=lambda r: r["run"]):
            if not r["ok"]:
                print(f"| {part} | {r['run']} | {mode} | dnsperf failed | | | | | | | | | | |"); continue
            print(f"| {part} | {r['run']} | {mode} | {r['qps']:.0f} | {r['avg']:.3f} | {f(r['p50'])} | {f(r['p99'])} | "
                  f"{r['completed']} | {r['lost']} | {r['servfail']} | {r['probes']} | {r['cpu']} | {r['other']} | {r['steal']} |")
EOF
  echo
  echo "Raw outputs: $WORK (dnsperf, sandgate logs, rulesets, /metrics)"
} | tee "$REPORT"
log "report: $REPORT"
