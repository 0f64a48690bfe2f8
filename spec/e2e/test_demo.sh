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
SANDGATE_BIN=$BIN timeout -s KILL 120 bash "$ROOT/scripts/demo.sh" >"$OUT" 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then echo "ok - the demo exits 0"; pass=$((pass + 1)); else
  echo "not ok - the demo exits 0 (got $rc)"; sed 's/^/#   /' "$OUT" | tail -n 30; fail=$((fail + 1)); fi
check "the interception table is shown" "udp dport 53 redirect to :15353"
check "1. an allowed name resolves" "dig files\.pypi\.org +-> NOERROR +10\.77\.1\.1"
check "2. a denied name gets NXDOMAIN" "dig evil\.example +-> NXDOMAIN"
check "2. the wildcard apex is denied" "dig pypi\.org +-> NXDOMAIN"
check "3. the PATCH answer is OpenSandbox's" 'answer: \{"status":"ok","mode":"enforcing","enforcementMode":"dns"\}'
check "3. after the PATCH evil.example resolves" "dig evil\.example +-> NOERROR +10\.77\.6\.6"
check "4. the audit script logged a would-deny" '"event":"policy.audit_would_deny"'
check "5. the broken script's error names its line" '"error":"[^"]*policy\.lua:3:'
check "the table is removed at the end" "table inet sandgate is gone"
check "the demo finishes" "Demo finished\."
after_ns=$(ip netns list | grep -c '^sgdemo-' || true)
if [ "$after_ns" -eq "$before_ns" ]; then echo "ok - no demo namespace is left"; pass=$((pass + 1)); else
  echo "not ok - no demo namespace is left"; fail=$((fail + 1)); fi
if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$OUT"; then
  echo "not ok - no sanitizer report"; fail=$((fail + 1)); else echo "ok - no sanitizer report"; pass=$((pass + 1)); fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
