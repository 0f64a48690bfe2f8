#!/usr/bin/env bash
# Policy writes under DNS load: PATCH_RATE PATCHes per second through the
# policy API for DURATION seconds while dnsperf sends QPS queries per second.
# Every PATCH is a hot reload (a new policy VM, an atomic file write, a
# swap), and touches only names the DNS load never asks for, so every DNS
# answer has one right rcode. Passes when no query is lost and the rcode
# counts are exactly the expected ones.
#
# Loopback only; every process is started here and stopped by its PID.
# Env: PATCH_RATE=200 DURATION=10 QPS=10000 BASE_PORT=29300 SANDGATE_BIN
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PATCH_RATE=${PATCH_RATE:-200}
DURATION=${DURATION:-10}
QPS=${QPS:-10000}
BASE_PORT=${BASE_PORT:-29300}
UP_PORT=$BASE_PORT
DNS_PORT=$((BASE_PORT + 53))
API_PORT=$((BASE_PORT + 80))
SANDGATE_BIN=${SANDGATE_BIN:-$ROOT/build/sandgate}
PY=/usr/bin/python3
((DURATION >= 1 && DURATION <= 120)) || { echo "DURATION must be 1..120" >&2; exit 2; }
for t in dnsmasq dnsperf "$PY" "$SANDGATE_BIN"; do
  command -v "$t" >/dev/null || { echo "patch-load: $t is needed" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/sgpatch.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dnsmasq --keep-in-foreground --log-facility=- --pid-file= --conf-file=/dev/null \
  --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port="$UP_PORT" \
  --address=/example/192.0.2.1 --cache-size=0 >"$WORK/dnsmasq.log" 2>&1 &
PIDS+=($!)

# 20 allowed names and 20 denied ones, each asked QPS*DURATION/40 times.
"$PY" - "$WORK" <<'EOF'
import json, sys
d = sys.argv[1]
rules = [{"action": "allow", "target": "ok%d.example" % i} for i in range(20)]
json.dump({"defaultAction": "deny", "egress": rules}, open(d + "/policy.json", "w"))
with open(d + "/queries.txt", "w") as f:
    for i in range(20):
        f.write("ok%d.example A\n" % i)
        f.write("no%d.example A\n" % i)
EOF
"$SANDGATE_BIN" egress --no-intercept --no-query-log --listen "127.0.0.1:$DNS_PORT" \
  --upstream "127.0.0.1:$UP_PORT" --http-addr "127.0.0.1:$API_PORT" \
  --policy-file "$WORK/state.json" --rules "@$WORK/policy.json" 2>"$WORK/sandgate.log" &
SG=$!
PIDS+=("$SG")
for _ in $(seq 100); do
  grep -q '"egress.started"' "$WORK/sandgate.log" && break
  sleep 0.05
done

passes=$((QPS * DURATION / 40))
echo "patch-load: dnsperf ${QPS} q/s x ${DURATION} s ($((passes * 40)) queries) with ${PATCH_RATE} PATCH/s"
dnsperf -s 127.0.0.1 -p "$DNS_PORT" -d "$WORK/queries.txt" -n "$passes" -Q "$QPS" \
  -c 4 -t 2 >"$WORK/dnsperf.out" 2>&1 &
DP=$!
PIDS+=("$DP")

# The writer: PATCH_RATE PATCHes a second on one keep-alive connection, each
# adding or replacing one of 50 rules the DNS load never asks about.
"$PY" - "$API_PORT" "$PATCH_RATE" "$DURATION" >"$WORK/patches.out" <<'EOF'
import http.client, json, sys, time
port, rate, duration = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
ok = bad = 0
lat = []
t0 = time.monotonic()
i = 0
while time.monotonic() - t0 < duration:
    body = json.dumps([{"action": "allow" if i % 2 else "deny", "target": "p%d.example" % (i % 50)}])
    s = time.monotonic()
    conn.request("PATCH", "/policy", body)
    r = conn.getresponse()
    r.read()
    lat.append(time.monotonic() - s)
    if r.status == 200:
        ok += 1
    else:
        bad += 1
    i += 1
    nxt = t0 + i / rate
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
el = time.monotonic() - t0
lat.sort()
print("patches_ok %d patches_failed %d rate %.1f p50_ms %.2f p99_ms %.2f" % (
    ok, bad, ok / el, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000))
EOF
wait "$DP" || true
cat "$WORK/patches.out"
grep -E "Queries (sent|completed|lost)|Response codes|Queries per second" "$WORK/dnsperf.out"

expect=$((passes * 20))
noerror=$(sed -n 's/.*NOERROR \([0-9]*\).*/\1/p' "$WORK/dnsperf.out")
nxdomain=$(sed -n 's/.*NXDOMAIN \([0-9]*\).*/\1/p' "$WORK/dnsperf.out")
lost=$(sed -n 's/.*Queries lost: *\([0-9]*\).*/\1/p' "$WORK/dnsperf.out")
other=$(grep -E "Response codes" "$WORK/dnsperf.out" | grep -oE '(SERVFAIL|FORMERR|REFUSED) [0-9]+' || true)
read -r _ pok _ pbad _ <"$WORK/patches.out"
if [[ $lost == 0 && $noerror == "$expect" && $nxdomain == "$expect" && -z $other && $pbad == 0 ]]; then
  echo "patch-load: PASS (${pok} PATCHes, every one a hot reload; $((2 * expect)) DNS answers, none lost or wrong)"
else
  echo "patch-load: FAIL (lost=$lost NOERROR=$noerror NXDOMAIN=$nxdomain expected $expect each; other: ${other:-none}; failed PATCHes=$pbad)"
  exit 1
fi
