#!/usr/bin/env bash
# `sandgate check` and `sandgate test` as a user runs them: the shipped
# policies and examples load; every script in broken/ is refused with exit 1
# and exactly the lines its "-- expect: " comments give; usage errors exit 2;
# `test` prints a line per case and the summary, shows expected and actual
# for a mismatch, and names the file and case of a malformed cases file.
# Needs no root.
#
# usage: test_cli.sh path/to/sandgate
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=$(readlink -f "${1:?usage: $0 path/to/sandgate}")
TMP=$(mktemp -d "/tmp/sgcli.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
diag() { sed 's/^/#   /'; }

# run CMD...: OUT (stdout), ERR (stderr), RC.
run() {
  RC=0
  "$@" >"$TMP/out" 2>"$TMP/err" || RC=$?
  OUT=$(cat "$TMP/out")
  ERR=$(cat "$TMP/err")
}

check_run() { # WHAT WANT_RC WANT_SUBSTRING (in stdout+stderr)
  if [ "$RC" == "$2" ] && [[ "$OUT$ERR" == *"$3"* ]]; then
    ok "$1"
  else
    not_ok "$1"
    echo "expected exit $2 and \"$3\"; got exit $RC:" | diag
    printf '%s\n%s\n' "$OUT" "$ERR" | head -n 20 | diag
  fi
}

cd "$ROOT" || exit 1

# ---- check: the shipped scripts load ------------------------------------------

for f in policies/egress/default.lua policies/ingress/header.lua policies/ingress/uri.lua \
  examples/egress/audit.lua examples/egress/qtype_hours.lua examples/ingress/canary.lua; do
  run "$BIN" check "$f"
  if [ "$RC" == 0 ] && [ "$OUT" == ok ]; then ok "check $f: ok"; else
    not_ok "check $f: ok"
    printf '%s\n%s\n' "$OUT" "$ERR" | diag
  fi
done
run "$BIN" check policies/egress/default.lua --policy spec/e2e/dns_policy.json
check_run "check with a policy document: ok" 0 ok
run "$BIN" check policies/ingress/uri.lua --kind ingress --routes /dev/null
check_run "check --kind ingress with an empty routes file: refused, as the gateway refuses it" \
  1 "is empty (an empty routes table is {})"
printf '{}' >"$TMP/empty-routes.json"
run "$BIN" check policies/ingress/uri.lua --kind ingress --routes "$TMP/empty-routes.json"
check_run "check --kind ingress with an empty routes table ({}): ok" 0 ok

# ---- check: broken scripts -----------------------------------------------------

# Each line of the output must be one of the expected lines, and each
# expected line must be in the output: nothing missing, nothing extra.
for f in "$HERE"/broken/*.lua; do
  name=$(basename "$f")
  want=$(sed -n 's/^-- expect: //p' "$f")
  (cd "$HERE/broken" && "$BIN" check "$name" >"$TMP/out" 2>"$TMP/err")
  RC=$?
  got=$(cat "$TMP/out")
  if [ "$RC" == 1 ] && [ "$got" == "$want" ]; then
    ok "check broken/$name: exit 1 and $(wc -l <<<"$want") error line(s) with file:line and hook"
  else
    not_ok "check broken/$name: exit 1 and the expected lines"
    { echo "exit $RC; expected:"; echo "$want"; echo "got:"; echo "$got"; cat "$TMP/err"; } | diag
  fi
done

printf '{"defaultAction":"perhaps"}' >"$TMP/bad-policy.json"
run "$BIN" check policies/egress/default.lua --policy "$TMP/bad-policy.json"
check_run "a bad policy document: the line names the file and the problem" 1 \
  "$TMP/bad-policy.json: invalid policy: defaultAction: \"perhaps\" is not allow or deny"
printf '{"a": {"host": "1.2.3.4:80"}}' >"$TMP/bad-routes.json"
run "$BIN" check policies/ingress/header.lua --routes "$TMP/bad-routes.json"
check_run "bad routes: the line names the file and the entry" 1 "$TMP/bad-routes.json: invalid routes: \"a\": host"
run "$BIN" check "$TMP/missing.lua"
check_run "a script that is not there: exit 1, named" 1 "cannot read $TMP/missing.lua: No such file or directory"
printf 'return { decide = function() end, route = function() end }\n' >"$TMP/both.lua"
run "$BIN" check "$TMP/both.lua"
check_run "both hooks: the kind cannot be told" 1 'has both a "decide" hook (egress) and a "route" hook (ingress)'
run "$BIN" check "$TMP/both.lua" --kind ingress
check_run "both hooks with --kind ingress: ok" 0 ok

# ---- the README's walkthrough ------------------------------------------------------

# Its policy (the first ```lua block) and its cases (the first ```json block
# after the walkthrough's heading) pass, printed as the README shows.
"$(command -v python3)" - "$ROOT/README.md" "$TMP" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
policy = re.search(r"```lua\n(.*?)```", text, re.S).group(1)
walk = text[text.index("### A custom policy in ten lines"):]
cases = re.search(r"```json\n(.*?)```", walk, re.S).group(1)
shown = re.search(r"\$ sandgate test /etc/sandgate/policy.lua policy.cases.json\n(.*?)```",
                  walk, re.S).group(1)
open(sys.argv[2] + "/policy.lua", "w").write(policy)
open(sys.argv[2] + "/policy.cases.json", "w").write(cases)
open(sys.argv[2] + "/shown.txt", "w").write(shown)
EOF
run "$BIN" check "$TMP/policy.lua"
check_run "README: the walkthrough's policy checks ok" 0 ok
(cd "$TMP" && "$BIN" test policy.lua policy.cases.json >"$TMP/readme.out" 2>/dev/null)
RC=$?
if [ "$RC" == 0 ] && diff -u "$TMP/shown.txt" "$TMP/readme.out" >"$TMP/readme.diff"; then
  ok "README: the walkthrough's cases pass, printed as the README shows"
else
  not_ok "README: the walkthrough's cases pass, printed as the README shows (exit $RC)"
  diag <"$TMP/readme.diff"
fi

# ---- usage errors ---------------------------------------------------------------

run "$BIN" check
check_run "check without a script: exit 2" 2 "expected 1 argument, got 0"
run "$BIN" check a.lua b.lua
check_run "check with two scripts: exit 2" 2 "expected 1 argument, got 2"
run "$BIN" check policies/egress/default.lua --kind dns
check_run "check --kind dns: exit 2, named" 2 '--kind: "dns" is not egress or ingress'
run "$BIN" check policies/egress/default.lua --bogus
check_run "an unknown flag: exit 2" 2 'unknown flag or missing value near "--bogus"'
run "$BIN" check policies/egress/default.lua --policy "$TMP/nope.json"
check_run "a policy file that is not there: exit 2" 2 "cannot read $TMP/nope.json"
run "$BIN" check --help
check_run "check --help: exit 0, usage" 0 "usage: sandgate check SCRIPT"
run "$BIN" test policies/egress/default.lua
check_run "test without a cases file: exit 2" 2 "expected 2 arguments, got 1"

# ---- test: the report -------------------------------------------------------------

run "$BIN" test policies/egress/default.lua spec/cases/policies/egress/default.json
check_run "test: the shipped cases pass, exit 0" 0 " passed, 0 failed"
check_run "test: one line per case" 0 "ok 1 - api.github.com A"

cat >"$TMP/mixed.json" <<'EOF'
{"policy": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "*.pypi.org"}]},
 "cases": [
   {"name": "files.pypi.org", "expect": "allow"},
   {"description": "wrong on purpose", "name": "pypi.org", "expect": "allow", "rule": "egress[0] allow *.pypi.org"},
   {"name": "a..b", "expect": "deny"}
 ]}
EOF
run "$BIN" test policies/egress/default.lua "$TMP/mixed.json"
check_run "test: a failing case exits 1 with the summary" 1 "1 passed, 2 failed"
check_run "test: the failing case is named" 1 "not ok 2 - wrong on purpose"
check_run "test: expected against actual, per field" 1 '#   verdict: expected "allow", got "deny"'
check_run "test: ... and the rule" 1 '#   rule: expected "egress[0] allow *.pypi.org", got "default"'
check_run "test: the whole actual answer" 1 '#   actual: {"name":"pypi.org","qtype":"A"'
check_run "test: a case the DNS cannot ask fails with the reason" 1 '#   the case cannot be asked: name "a..b" has an empty label'

cat >"$TMP/malformed.json" <<'EOF'
{"cases": [{"name": "a.example", "expect": "allow"}, {"name": "b.example", "expcet": "deny"}]}
EOF
run "$BIN" test policies/egress/default.lua "$TMP/malformed.json"
check_run "test: a malformed case exits 2, naming the file and the case" 2 \
  "$TMP/malformed.json: cases[1]: unknown field \"expcet\""
printf '{"cases": [' >"$TMP/notjson.json"
run "$BIN" test policies/egress/default.lua "$TMP/notjson.json"
check_run "test: a file that is not JSON exits 2" 2 "$TMP/notjson.json: not valid JSON"
run "$BIN" test policies/ingress/header.lua spec/cases/policies/egress/default.json
check_run "test: egress cases for an ingress script exit 2" 2 "policy is for egress cases; this is an ingress script"
printf 'return { decide = function() end,\n  load = function() error("refused") end }\n' >"$TMP/refuses.lua"
run "$BIN" test "$TMP/refuses.lua" "$TMP/mixed.json"
check_run "test: a script that does not load fails every case" 1 "0 passed, 3 failed"
check_run "test: ... with the load's error" 1 "#   $TMP/refuses.lua:2: in load(): refused"
run "$BIN" test "$HERE/broken/main_error.lua" "$TMP/mixed.json"
check_run "test: a script whose main chunk fails: exit 1 with the error" 1 \
  "#   $HERE/broken/main_error.lua:3: in main chunk: attempt to call global 'undefined_function'"

cat >"$TMP/ingress.json" <<'EOF'
{"routes": {"sbx-1": "10.0.0.5"},
 "cases": [
   {"request": {"path": "/x", "host": "sbx-1-8080.gw"}, "expect": {"host": "10.0.0.5", "port": 8080, "path": "/x"}},
   {"request": {"path": "/x", "host": "sbx-2-8080.gw"}, "expect": {"host": "10.0.0.5"}},
   {"request": {"path": "/x", "host": "sbx-1-80.gw"}, "expect": {"status": 404}}
 ]}
EOF
run "$BIN" test policies/ingress/header.lua "$TMP/ingress.json"
check_run "test ingress: the summary" 1 "1 passed, 2 failed"
check_run "test ingress: a refusal where a forward was expected" 1 \
  '#   expected a forward, got 404 "sandbox not found: sbx-2"'
check_run "test ingress: a forward where a status was expected" 1 \
  "#   status: expected 404, got a forward to 10.0.0.5:80"

# Thousands of cases run in well under a second; this only checks they all
# run (timing belongs in bench/).
"$(command -v python3)" - "$TMP/many.json" <<'EOF'
import json, sys
cases = [{"name": "h%d.pypi.org" % i, "expect": "allow"} for i in range(5000)]
cases += [{"name": "h%d.example" % i, "expect": "deny"} for i in range(5000)]
json.dump({"policy": {"egress": [{"action": "allow", "target": "*.pypi.org"}]}, "cases": cases},
          open(sys.argv[1], "w"))
EOF
t0=$(date +%s%N)
run "$BIN" test policies/egress/default.lua "$TMP/many.json"
ms=$((($(date +%s%N) - t0) / 1000000))
check_run "test: 10000 cases all run" 0 "10000 passed, 0 failed"
echo "# 10000 cases in $ms ms"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
