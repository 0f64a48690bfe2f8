#!/usr/bin/env bash
# The README's first command: installs the dependencies, builds sandgate and
# plays a short story with real parts, all inside network namespaces this
# script creates and removes again:
#
#   "internet" namespace: a real DNS server (dnsmasq) that knows every name
#   "sandbox"  namespace: `sandgate egress` intercepting port 53, and an app
#
# 1. an allowed name resolves, 2. a denied name gets NXDOMAIN (although the
# DNS server knows it), 3. an operator PATCHes the policy through the API and
# the name resolves at once, 4. the policy script is swapped for an audit-only
# one while running (hot reload, no restart), 5. a broken script is refused
# and the running policy stays.
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

NET=sgdemo-net-$$
BOX=sgdemo-box-$$
WORK=$(mktemp -d /tmp/sgdemo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NET" 2>/dev/null || true
  ip netns del "$BOX" 2>/dev/null || true
  # A sanitizer build reports into the proxy's log: show it before the log
  # goes (the test suite plays this demo with its ASan build too).
  grep -h -A30 -E "ERROR: [A-Za-z]+Sanitizer|runtime error:" "$WORK"/*.log >&2 2>/dev/null || true
  rm -rf "/etc/netns/$BOX" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
in_box() { ip netns exec "$BOX" "$@"; }
wait_log() { # wait_log <pattern> <count>: until the log has that many matches
  for _ in $(seq 100); do
    (($(grep -c -- "$1" "$WORK/egress.log" || true) >= $2)) && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for '$1' in the log" >&2
  cat "$WORK/egress.log" >&2
  return 1
}
ask() { # ask <name>: what the app in the sandbox gets
  local out status answer
  out=$(in_box dig +time=3 +tries=1 "$1" A 2>&1 || true)
  status=$(grep -o 'status: [A-Z]*' <<<"$out" | cut -d' ' -f2)
  answer=$(awk '/^;; ANSWER SECTION/ {f = 1; next} /^$/ {f = 0} f && $4 == "A" {printf "%s ", $5}' <<<"$out")
  printf '   app in sandbox: dig %-22s -> %-8s %s\n' "$1" "${status:-no answer}" "$answer"
}

bold "Setting up: an 'internet' namespace with a DNS server, and a sandbox namespace"
ip netns add "$NET"
ip netns add "$BOX"
ip link add sgdemo0 netns "$NET" type veth peer name eth0 netns "$BOX"
ip -n "$NET" addr add 10.77.0.1/24 dev sgdemo0
ip -n "$BOX" addr add 10.77.0.10/24 dev eth0
for ns in "$NET" "$BOX"; do ip -n "$ns" link set lo up; done
ip -n "$NET" link set sgdemo0 up
ip -n "$BOX" link set eth0 up
mkdir -p "/etc/netns/$BOX"
echo "nameserver 10.77.0.1" >"/etc/netns/$BOX/resolv.conf"
ip netns exec "$NET" dnsmasq --keep-in-foreground --log-facility=- --pid-file= \
  --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.77.0.1 \
  --address=/pypi.org/10.77.1.1 --address=/github.com/10.77.1.2 \
  --address=/evil.example/10.77.6.6 >"$WORK/dnsmasq.log" 2>&1 &
PIDS+=($!)
say "DNS server 10.77.0.1 answers pypi.org, *.pypi.org, github.com and evil.example"
say "the sandbox's /etc/resolv.conf says: nameserver 10.77.0.1"

bold "Starting the egress plane in the sandbox with an allowlist"
cp policies/egress/default.lua "$WORK/policy.lua"
RULES='{"defaultAction":"deny","egress":[{"action":"allow","target":"*.pypi.org"},{"action":"allow","target":"github.com"}]}'
say "policy: $RULES"
ip netns exec "$BOX" "$BIN" egress --script "$WORK/policy.lua" --rules "$RULES" --cleanup \
  --token demo-token 2>"$WORK/egress.log" &
PIDS+=($!)
wait_log '"egress.started"' 1
say "sandgate egress is up (policy API on :18080, token demo-token);"
say "nftables in the sandbox now redirects port 53 to it:"
in_box nft list table inet sandgate | sed 's/^/      /'

bold "1. Allowed names resolve"
ask files.pypi.org
ask github.com
bold "2. Denied names get NXDOMAIN, although the DNS server knows them"
ask evil.example
ask pypi.org
say "(*.pypi.org allows names below pypi.org, not pypi.org itself)"
say "the proxy logged each decision with the rule that made it:"
grep '"dns.query"' "$WORK/egress.log" | sed 's/^.*"name"/      {"name"/' | head -4

bold "3. An operator opens evil.example at runtime through the policy API"
say "PATCH http://127.0.0.1:18080/policy  [{\"action\":\"allow\",\"target\":\"evil.example\"}]"
out=$(in_box curl -s -X PATCH -H "OPENSANDBOX-EGRESS-AUTH: demo-token" \
  -d '[{"action":"allow","target":"evil.example"}]' http://127.0.0.1:18080/policy)
say "answer: $out"
ask evil.example
say "GET /policy now shows:"
in_box curl -s -H "OPENSANDBOX-EGRESS-AUTH: demo-token" http://127.0.0.1:18080/policy | sed 's/^/      /'
echo
in_box curl -s -X DELETE -H "OPENSANDBOX-EGRESS-AUTH: demo-token" \
  -d '["evil.example"]' http://127.0.0.1:18080/policy >/dev/null
say "(and DELETE takes the rule away again)"
ask evil.example

bold "4. Hot reload: swap in an audit-only policy script while running"
say "examples/egress/audit.lua allows everything and logs what it would deny"
cp examples/egress/audit.lua "$WORK/policy.lua.new"
mv "$WORK/policy.lua.new" "$WORK/policy.lua"
wait_log '"policy.reloaded"' 1
say "the file change was noticed; the new script loaded with the same policy document"
ask evil.example
wait_log '"policy.audit_would_deny"' 1
say "log: $(grep '"policy.audit_would_deny"' "$WORK/egress.log" | tail -1 | sed 's/^.*"event"/{"event"/')"

bold "5. A broken script is refused; the running policy stays"
printf 'return { decide = function(q)\n  return "allow"\n' >"$WORK/policy.lua.new"
mv "$WORK/policy.lua.new" "$WORK/policy.lua"
wait_log '"policy.reload_failed"' 1
say "log: $(grep '"policy.reload_failed"' "$WORK/egress.log" | tail -1 | grep -o '"error":"[^"]*"')"
ask evil.example
say "(still the audit script: the broken one never replaced it)"

bold "Stopping: SIGTERM (with --cleanup) removes the interception table"
kill -TERM "${PIDS[1]}"
wait "${PIDS[1]}" || true
if in_box nft list table inet sandgate >/dev/null 2>&1; then
  say "table still present (unexpected)"
  exit 1
fi
say "table inet sandgate is gone; the namespaces are removed on exit"
bold "Demo finished."
