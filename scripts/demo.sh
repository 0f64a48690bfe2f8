#!/usr/bin/env bash
# The README's first command: installs the dependencies, builds sandgate and
# plays a short story with real parts, all inside network namespaces this
# script creates and removes again:
#
#   "internet" namespace: a DNS server (dnsmasq) and two web servers
#   "host" namespace: plays this machine; runs `sandgate run` and the gateway
#
# 1. `sandgate run` with an allowlist: an allowed site works, a denied site
#    gets NXDOMAIN, an IP literal is blocked (dns+nft);
# 2. a PATCH through the policy API opens the denied site while the command
#    runs, and the next fetch works;
# 3. `sandgate ingress` routes a header-mode request, a URI-mode request and
#    a WebSocket to servers inside the sandbox;
# 4. everything is gone afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: needs root (network namespaces and nftables)" >&2
  exit 1
fi
# SANDGATE_BIN: play the demo with an already built binary (the test suite
# does, for each of its builds); otherwise install and build first.
if [[ -n ${SANDGATE_BIN:-} ]]; then
  BIN=$(readlink -f "$SANDGATE_BIN")
else
  bash scripts/install-deps.sh
  if [[ ! -x build/sandgate ]] || [[ -n $(find core lua CMakeLists.txt -newer build/sandgate -print -quit) ]]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j"$(nproc)" >/dev/null
  fi
  BIN=$ROOT/build/sandgate
fi
PY=/usr/bin/python3 # Debian's, with python3-websockets

NET=sgdemo-net-$$
HOST=sgdemo-host-$$
WORK=$(mktemp -d /tmp/sgdemo.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  touch "$WORK/done" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NET" 2>/dev/null || true
  ip netns del "$HOST" 2>/dev/null || true
  # A sanitizer build reports into the logs: show it before they go (the
  # test suite plays this demo with its ASan build too).
  grep -h -A30 -E "ERROR: [A-Za-z]+Sanitizer|runtime error:" "$WORK"/*.log >&2 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
in_host() { ip netns exec "$HOST" "$@"; }
wait_file() { # wait_file FILE: until it exists
  for _ in $(seq 200); do
    [ -e "$1" ] && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for $1" >&2
  return 1
}
wait_for() { # wait_for FILE PATTERN: until FILE has a line matching PATTERN
  for _ in $(seq 200); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  return 1
}

bold "Setting up: an 'internet' namespace and a 'host' namespace that plays this machine"
ip netns add "$NET"
ip netns add "$HOST"
ip link add sgdemo0 netns "$NET" type veth peer name eth0 netns "$HOST"
ip -n "$NET" addr add 10.77.0.1/24 dev sgdemo0
ip -n "$NET" addr add 10.77.0.2/24 dev sgdemo0
ip -n "$NET" addr add 10.77.0.3/24 dev sgdemo0
ip -n "$HOST" addr add 10.77.0.10/24 dev eth0
for ns in "$NET" "$HOST"; do ip -n "$ns" link set lo up; done
ip -n "$NET" link set sgdemo0 up
ip -n "$HOST" link set eth0 up
ip -n "$HOST" route add default via 10.77.0.1
# Answers to the sandboxes that `sandgate run` makes go back via the host.
ip -n "$NET" route add 10.200.0.0/16 via 10.77.0.10
ip netns exec "$NET" dnsmasq --keep-in-foreground --log-facility=- --pid-file= \
  --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.77.0.1 \
  --address=/docs.example.test/10.77.0.2 --address=/evil.example.test/10.77.0.3 \
  >"$WORK/dnsmasq.log" 2>&1 &
PIDS+=($!)
for site in docs:10.77.0.2 evil:10.77.0.3; do
  mkdir -p "$WORK/www-${site%%:*}"
  echo "Hello from ${site%%:*}.example.test" >"$WORK/www-${site%%:*}/index.html"
  ip netns exec "$NET" "$PY" -m http.server 80 --bind "${site#*:}" \
    --directory "$WORK/www-${site%%:*}" >/dev/null 2>&1 &
  PIDS+=($!)
done
# The servers take a moment to start: the story begins once they answer.
for _ in $(seq 200); do
  ip netns exec "$NET" curl -s -o /dev/null -m 1 http://10.77.0.2/ &&
    ip netns exec "$NET" curl -s -o /dev/null -m 1 http://10.77.0.3/ &&
    ip netns exec "$NET" dig +short +time=1 +tries=1 @10.77.0.1 docs.example.test | grep -q . && break
  sleep 0.05
done
say "DNS server 10.77.0.1: docs.example.test -> 10.77.0.2, evil.example.test -> 10.77.0.3"
say "web servers on 10.77.0.2 and 10.77.0.3"

# What runs inside the sandbox: fetches, then servers for the gateway part.
cat >"$WORK/app.sh" <<APP
#!/bin/bash
say() { printf '   app in sandbox: %s\n' "\$*"; }
say "curl http://docs.example.test/      -> \$(curl -s -m 5 http://docs.example.test/)"
say "dig evil.example.test               -> \$(dig +time=3 +tries=1 evil.example.test | grep -o 'status: [A-Z]*')"
out=\$(curl -s -m 5 -o /dev/null -w '%{exitcode} %{time_total}' http://10.77.0.3/ || true)
say "curl http://10.77.0.3/ (IP literal) -> blocked (curl exit \${out% *}, after \${out#* } s)"
echo "hello from inside the sandbox" >$WORK/inside.txt
(cd $WORK && exec $PY -m http.server 8000 >/dev/null 2>&1) &
$PY $WORK/echo_ws.py >/dev/null 2>&1 &
touch $WORK/ready
while [ ! -e $WORK/patched ]; do sleep 0.1; done
say "curl http://evil.example.test/      -> \$(curl -s -m 5 http://evil.example.test/)"
touch $WORK/fetched
while [ ! -e $WORK/done ]; do sleep 0.1; done
APP
chmod 755 "$WORK/app.sh"
cat >"$WORK/echo_ws.py" <<'WS'
import asyncio, websockets
async def echo(ws):
    async for m in ws:
        await ws.send("echo: " + m)
async def main():
    async with websockets.serve(echo, "0.0.0.0", 8001):
        await asyncio.Future()
asyncio.run(main())
WS

bold "1. sandgate run: a command in a fresh namespace, allowed to reach docs.example.test only"
say "sandgate run --allow docs.example.test --policy-api 127.0.0.1:18081 --upstream 10.77.0.1 -- app.sh"
# Started with `ip netns exec` directly (not through a shell function), so
# that $! is the process itself.
ip netns exec "$HOST" "$BIN" run --allow docs.example.test --policy-api 127.0.0.1:18081 \
  --upstream 10.77.0.1 -- "$WORK/app.sh" >"$WORK/app.out" 2>"$WORK/run.log" &
RUN=$!
PIDS+=($RUN)
wait_for "$WORK/run.log" "policy API"
SBIP=$(grep -o 'sandbox sgrun-[0-9]*: [0-9.]*' "$WORK/run.log" | awk '{print $3}')
say "$(grep -o 'sandbox sgrun-[0-9]*: [0-9.]*' "$WORK/run.log") (its own network namespace, dns+nft mode)"
wait_for "$WORK/app.out" "IP literal"
sed 's/^/ /' "$WORK/app.out"

bold "2. While it runs, the operator opens evil.example.test through the policy API"
say "PATCH http://127.0.0.1:18081/policy  [{\"action\":\"allow\",\"target\":\"evil.example.test\"}]"
out=$(in_host curl -s -X PATCH -d '[{"action":"allow","target":"evil.example.test"}]' \
  http://127.0.0.1:18081/policy)
say "answer: $out"
touch "$WORK/patched"
wait_file "$WORK/fetched"
tail -1 "$WORK/app.out" | sed 's/^/ /'

bold "3. The gateway: a stable URL for every port of the sandbox"
echo "{\"sbx-demo\": \"$SBIP\"}" >"$WORK/routes.json"
say "routes.json: $(cat "$WORK/routes.json")"
ip netns exec "$HOST" "$BIN" ingress --port 28888 --admin-addr 127.0.0.1:28889 --workers 1 \
  --routes "$WORK/routes.json" 2>"$WORK/ingress.log" &
PIDS+=($!)
ip netns exec "$HOST" "$BIN" ingress --port 28890 --admin-addr off --workers 1 --mode uri \
  --routes "$WORK/routes.json" 2>"$WORK/ingress-uri.log" &
PIDS+=($!)
wait_file "$WORK/ready"
for _ in $(seq 100); do
  in_host curl -s -o /dev/null http://127.0.0.1:28888/status.ok && \
    in_host curl -s -o /dev/null http://127.0.0.1:28890/status.ok && break
  sleep 0.05
done
# The sandbox's server may still be starting (the gateway says 502 until then).
for _ in $(seq 100); do
  [ "$(in_host curl -s -o /dev/null -w '%{http_code}' -H 'OpenSandbox-Ingress-To: sbx-demo-8000' \
    http://127.0.0.1:28888/inside.txt)" == 200 ] && break
  sleep 0.05
done
say "header mode: curl -H 'OpenSandbox-Ingress-To: sbx-demo-8000' http://127.0.0.1:28888/inside.txt"
say "   -> (header mode) $(in_host curl -s -H 'OpenSandbox-Ingress-To: sbx-demo-8000' http://127.0.0.1:28888/inside.txt)"
say "URI mode:    curl http://127.0.0.1:28890/sbx-demo/8000/inside.txt"
say "   -> (URI mode) $(in_host curl -s http://127.0.0.1:28890/sbx-demo/8000/inside.txt)"
say "unknown sandbox: $(in_host curl -s -w ' (%{http_code})' -H 'OpenSandbox-Ingress-To: nope-8000' http://127.0.0.1:28888/ | tr -d '\n')"
for _ in $(seq 100); do
  in_host "$PY" -c "import socket; socket.create_connection(('$SBIP', 8001), 1)" 2>/dev/null && break
  sleep 0.05
done
ws=$(in_host "$PY" - <<'PYWS'
import asyncio, websockets
async def main():
    async with websockets.connect("ws://127.0.0.1:28888/ws",
            extra_headers={"OpenSandbox-Ingress-To": "sbx-demo-8001"}) as ws:
        await ws.send("hello sandbox")
        print(await ws.recv())
asyncio.run(main())
PYWS
)
say "WebSocket through the gateway to sbx-demo-8001: sent 'hello sandbox', got '$ws'"

bold "4. The command ends; sandgate run removes what it made"
touch "$WORK/done"
wait "$RUN"
say "sandgate run exited with the command's status: $?"
left=$(ip netns list | grep -c '^sgrun-' || true)
say "sgrun namespaces left: $left; NAT tables left in the host: $(in_host nft list tables | grep -c sandgate_run || true)"
bold "Demo finished."
