#!/usr/bin/env bash
# The README's first command, played by the test suite: scripts/demo.sh with
# the binary under test, checking that every step of the story shows what it
# claims and that the demo leaves nothing behind.
#
# usage: test_demo.sh path/to/sandgate
set -u
BIN=$(readlink -f "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp /tmp/sgdemo-test.XXXXXX)
trap 'rm -f "$OUT"' EXIT
pass=0 fail=0
check() { # check "what" pattern
  if grep -qE -- "$2" "$OUT"; then
    echo "ok - $1"; pass=$((pass + 1))
  else
    echo "not ok - $1"; echo "#   no line matches: $2"; fail=$((fail + 1))
  fi
}
before_ns=$(ip netns list | grep -c '^sgdemo-' || true)
before_run=$(ip netns list | grep -c '^sgrun-' || true)
SANDGATE_BIN=$BIN timeout -s KILL 120 bash "$ROOT/scripts/demo.sh" >"$OUT" 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then echo "ok - the demo exits 0"; pass=$((pass + 1)); else
  echo "not ok - the demo exits 0 (got $rc)"; sed 's/^/#   /' "$OUT" | tail -n 30; fail=$((fail + 1)); fi
check "1. sandgate run names its namespace" "sandbox sgrun-[0-9]+: 10\.200\.[0-9]+\.2"
check "1. the allowed site works" "curl http://docs\.example\.test/ +-> Hello from docs\.example\.test"
check "1. the denied site gets NXDOMAIN" "dig evil\.example\.test +-> status: NXDOMAIN"
check "1. the IP literal is blocked" "IP literal\) -> blocked \(curl exit 7"
check "2. the PATCH answer is OpenSandbox's" 'answer: \{"status":"ok","mode":"enforcing","enforcementMode":"dns\+nft"\}'
check "2. after the PATCH the denied site works" "curl http://evil\.example\.test/ +-> Hello from evil\.example\.test"
check "3. header mode reaches the server in the sandbox" "-> \(header mode\) hello from inside the sandbox"
check "3. URI mode too" "-> \(URI mode\) hello from inside the sandbox"
check "3. an unknown sandbox is a 404 with OpenSandbox's message" "sandbox not found: nope \(404\)"
check "3. the WebSocket echoes through the gateway" "got 'echo: hello sandbox'"
check "4. the run returns the command's status" "exited with the command's status: 0"
check "4. nothing of the run is left" "sgrun namespaces left: 0; NAT tables left in the host: 0"
check "the demo finishes" "Demo finished\."
after_ns=$(ip netns list | grep -c '^sgdemo-' || true)
after_run=$(ip netns list | grep -c '^sgrun-' || true)
if [ "$after_ns" -eq "$before_ns" ] && [ "$after_run" -le "$before_run" ]; then echo "ok - no demo namespace is left"; pass=$((pass + 1)); else
  echo "not ok - no demo namespace is left"; fail=$((fail + 1)); fi
if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$OUT"; then
  echo "not ok - no sanitizer report"; fail=$((fail + 1)); else echo "ok - no sanitizer report"; pass=$((pass + 1)); fi
# A failed check shows what the demo printed, so a CI log is enough to see why.
if [ "$fail" -ne 0 ] && [ "$rc" -eq 0 ]; then sed 's/^/#   /' "$OUT" | tail -n 40; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
