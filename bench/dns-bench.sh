#!/usr/bin/env bash
# sandgate egress vs dnsdist: runs the shared DNS harness RUNS times with our binary in the
# candidate slot, keeps every table in $RESULTS_DIR and prints the medians.
#
# Env (ours):
#   RUNS=3                      rounds of the shared dns-bench.sh
#   RESULTS_DIR=/tmp/sandgate-bench
#   SHARED_BENCH=<repo>/../shared/bench   the shared harness
#   SANDGATE_BIN=<repo>/build/sandgate    built (RelWithDebInfo) if missing
#   BUILD_TYPE=RelWithDebInfo             used only when the binary has to be built
#   SANDGATE_ARGS=''                      extra flags appended to the candidate command
#   CANDIDATE_DNS_CMD                     overrides the whole candidate command
# Env (passed through to the harness, see its README):
#   SYSTEMS="direct dnsdist-lua candidate" DURATION=12 CLIENTS=10 OUTSTANDING=100 MODE=udp|tcp
#   N_RULES=1000 N_QUERIES=100000 ALLOW_PCT=80 WILDCARD_PCT=50 SEED UPSTREAM=nsd|unbound LATENCY=1
#   PIN=1 SUT_CPU=0 LOAD_CPU=1 BASE_PORT=25300 (the harness default 15300 puts the proxy on
#   15353, sandgate's own default port, which a developer's instance may hold)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
SHARED_BENCH=$(cd "$SHARED_BENCH" 2>/dev/null && pwd) || {
  echo "shared harness not found (SHARED_BENCH=${SHARED_BENCH})" >&2; exit 2; }
[[ -x $SHARED_BENCH/dns-bench.sh ]] || { echo "no $SHARED_BENCH/dns-bench.sh" >&2; exit 2; }

RUNS=${RUNS:-3}
RESULTS_DIR=${RESULTS_DIR:-/tmp/sandgate-bench}
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
((RUNS >= 1 && RUNS <= 20)) || { echo "RUNS must be 1..20" >&2; exit 2; }

if [[ ! -x $SANDGATE_BIN ]]; then
  if [[ $SANDGATE_BIN != "$REPO/build/sandgate" ]]; then
    echo "SANDGATE_BIN=$SANDGATE_BIN does not exist" >&2; exit 2
  fi
  echo "[bench] building $SANDGATE_BIN ($BUILD_TYPE)" >&2
  cmake -S "$REPO" -B "$REPO/build" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >&2
  cmake --build "$REPO/build" -j"$(nproc)" --target sandgate >&2
fi

# The harness substitutes the {…} placeholders; --rules @file reads the policy JSON from a file.
export CANDIDATE_DNS_CMD=${CANDIDATE_DNS_CMD:-"$SANDGATE_BIN egress --no-intercept --no-query-log --http-addr off \
--listen {LISTEN_ADDR}:{LISTEN_PORT} --upstream {UPSTREAM_ADDR}:{UPSTREAM_PORT} --rules @{RULES}${SANDGATE_ARGS:+ $SANDGATE_ARGS}"}
export SYSTEMS=${SYSTEMS:-"direct dnsdist-lua candidate"}
export BASE_PORT=${BASE_PORT:-25300}
export MODE=${MODE:-udp}
# Everything else (DURATION CLIENTS OUTSTANDING N_RULES N_QUERIES ALLOW_PCT WILDCARD_PCT SEED
# UPSTREAM LATENCY PIN SUT_CPU LOAD_CPU) reaches the harness through the environment as is.

mkdir -p "$RESULTS_DIR"
ts=$(date -u +%Y%m%dT%H%M%SZ)
tag="$ts-dns-$MODE-r${N_RULES:-1000}"
log=$RESULTS_DIR/$tag.log
files=()
{
  echo "sandgate bench $ts"
  echo "binary: $SANDGATE_BIN ($(stat -c '%y' "$SANDGATE_BIN" 2>/dev/null | cut -d. -f1))"
  echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true) changed file(s)"
  echo "candidate: $CANDIDATE_DNS_CMD"
  echo "systems: $SYSTEMS  mode: $MODE  runs: $RUNS  load avg: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$log" >&2

for i in $(seq "$RUNS"); do
  out=$RESULTS_DIR/$tag-run$i.md
  echo "[bench] run $i/$RUNS -> $out (load avg before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$SHARED_BENCH/dns-bench.sh" 2>>"$log" | tee "$out"
  files+=("$out")
done

echo
echo "## Summary: median of $RUNS run(s), mode=$MODE, rules=${N_RULES:-1000}  (tables: $RESULTS_DIR/$tag-run*.md)"
"$PY" "$HERE/summarize.py" "${files[@]}" | tee "$RESULTS_DIR/$tag-summary.md"
