#!/usr/bin/env bash
# GET /policy/explain agrees with what the running proxy does: for every
# name below, the explanation's verdict and rcode are what dig gets through
# the intercepted port 53 in the sandbox, and its rule is the one the
# dns.query log line shows. Checked with the shipped policy and the
# always-lists, after a PATCH, and with an uploaded script that denies with
# its own rcodes and fails on one name. Also: the endpoint's auth, its 400s
# and 405.
#
# usage: test_explain_egress.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 --host-record=refused.example,192.0.2.31 \
  --host-record=quiet.example,192.0.2.32 || { not_ok "upstream dnsmasq started"; e2e_finish; }

TOKEN=explain-token
RULES=$TMP/rules
mkdir -p "$RULES"
printf '# operator\nx.example\n' >"$RULES/deny.always"
printf 'denied.example\nquiet.example\n' >"$RULES/allow.always"
printf 'quiet.example\n' >"$RULES/log_skip.always"

sg_start explain --token "$TOKEN" --rules-dir "$RULES" --rules @"$E2E_DIR/dns_policy.json"
check "sandgate egress starts with the API" proc_running "$SG_PID"

# explain NAME [QTYPE]: sets EX (the JSON) and EX_STATUS.
explain() {
  local q="name=$1"
  [ -n "${2:-}" ] && q="$q&qtype=$2"
  EX=$(in_sb curl -s -m 5 -o - -w '\n%{http_code}' -H "OPENSANDBOX-EGRESS-AUTH: $TOKEN" \
    "http://127.0.0.1:18080/policy/explain?$q")
  EX_STATUS=${EX##*$'\n'}
  EX=${EX%$'\n'*}
  EX=${EX%$'\n'} # bodies end with a newline
}
# field JSON KEY: a top-level field of the explanation ("" when absent).
field() {
  "$PY" -c 'import json,sys
v = json.loads(sys.argv[1]).get(sys.argv[2])
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$1" "$2"
}

# agree NAME QTYPE WHAT: asks /policy/explain, then the proxy (dig in the
# sandbox), and checks that they agree: an allow resolves (the upstream has
# a record for every name used here), a deny gets the explained rcode and
# no records, and the query's log line (unless log_skip) carries the
# explained verdict and rule.
agree() {
  local name=$1 qtype=$2 what=$3
  explain "$name" "$qtype"
  local verdict rule rcode logname
  verdict=$(field "$EX" verdict)
  rule=$(field "$EX" rule)
  rcode=$(field "$EX" rcode)
  logname=$(field "$EX" name)
  dig_sb "$name" "$qtype"
  local got an
  got=$(dig_rcode "$DIG_OUT")
  an=$(dig_ancount "$DIG_OUT")
  local want_rcode=$rcode want_an=0
  if [ "$verdict" == allow ]; then
    want_rcode=NOERROR
    want_an=nonzero
  fi
  if [ "$got" == "$want_rcode" ] && { [ "$want_an" == nonzero ] && [ "${an:-0}" -gt 0 ] || [ "$an" == "$want_an" ]; }; then
    ok "$what: explain says $verdict${rcode:+ $rcode}${rule:+ ($rule)}, dig gets $got with $an answers"
  else
    not_ok "$what: explain and dig agree"
    diag "explain: $EX" "dig: $got with $an answers"
  fi
  local n
  if [ "$(field "$EX" log_skip)" == true ]; then
    n=$(log_count "$SG_LOG" event=dns.query "name=$logname")
    check_eq "$what: log_skip, as explained: no dns.query line" 0 "$n"
  elif [ -n "$(field "$EX" error)" ]; then
    n=$(log_count "$SG_LOG" event=policy.decide_failed "name=$logname" "qtype=$qtype" \
      "error=$(field "$EX" error)")
    check "$what: the log's policy.decide_failed has the explained error" test "$n" -ge 1
  else
    local -a want=(event=dns.query "name=$logname" "qtype=$qtype" "verdict=$verdict")
    [ -n "$rule" ] && want+=("rule=$rule")
    n=$(log_count "$SG_LOG" "${want[@]}")
    check "$what: the dns.query line has the explained verdict and rule" test "$n" -ge 1
  fi
}

# ---- the endpoint ----------------------------------------------------------------

code=$(in_sb curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:18080/policy/explain?name=a.example")
check_eq "without the token: 401" 401 "$code"
explain allowed.example
check_eq "with the token: 200" 200 "$EX_STATUS"
check_eq "the answer names the rule by index, action and target" \
  '{"name":"allowed.example","qtype":"A","client":"127.0.0.1","transport":"udp","verdict":"allow","source":"policy","rule":"egress[0] allow allowed.example","index":0,"action":"allow","target":"allowed.example"}' \
  "$EX"
explain "a..example"
check_eq "a name with an empty label: 400 naming it" '400 name "a..example" has an empty label' "$EX_STATUS $EX"
explain a.example BOGUS
check_eq "an unknown qtype: 400 naming it" 400 "$EX_STATUS"
check_contains "... the message names the qtype" 'qtype "BOGUS" is not a DNS type' "$EX"
code=$(in_sb curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H "OPENSANDBOX-EGRESS-AUTH: $TOKEN" \
  "http://127.0.0.1:18080/policy/explain?name=a.example")
check_eq "POST /policy/explain: 405" 405 "$code"
code=$(in_sb curl -s -m 5 -o /dev/null -w '%{http_code}' -H "OPENSANDBOX-EGRESS-AUTH: $TOKEN" \
  "http://127.0.0.1:18080/policy/explain")
check_eq "no name: 400" 400 "$code"

# ---- the shipped policy, with the always-lists ------------------------------------

agree allowed.example A "an exact allow rule"
agree allowed.example AAAA "the same name, AAAA"
agree ALLOWED.Example. A "upper case and a trailing dot"
agree a.wild.example A "a wildcard allow"
agree bad.wild.example A "an exact deny before the wildcard"
agree wild.example A "a wildcard's apex: the default"
agree txt.example TXT "TXT for an allowed name"
agree a.example A "no rule: the default deny"
agree x.example A "deny.always"
agree denied.example A "allow.always"
agree quiet.example A "allow.always and log_skip.always"
explain x.example
check_eq "deny.always is its source" deny.always "$(field "$EX" source)"
explain a.example
check_eq "the default is said to be the default" true "$(field "$EX" default)"

# ---- a PATCH changes the answer at once --------------------------------------------

in_sb curl -s -m 5 -X PATCH -H "OPENSANDBOX-EGRESS-AUTH: $TOKEN" \
  -d '[{"action":"allow","target":"a.example"},{"action":"deny","target":"a.wild.example"}]' \
  http://127.0.0.1:18080/policy >/dev/null
agree a.example A "after a PATCH allowing it"
agree a.wild.example A "after a PATCH denying it"
explain a.wild.example
check_eq "the PATCHed rule is egress[1]" "egress[1] deny a.wild.example" "$(field "$EX" rule)"

# ---- an uploaded script: its own rcodes and rules, and a failure ---------------------

cat >"$TMP/custom.lua" <<'EOF'
local rules = require "sandgate.rules"
local M = {}
local policy = rules.compile(nil)
local REFUSED = { action = "deny", rcode = "REFUSED", rule = "custom: refused" }
local NODATA = { action = "deny", rcode = "NODATA", rule = "custom: no TXT" }
function M.load(doc) policy = rules.compile(doc) end
function M.decide(q)
  if q.name == "boom.example" then error("boom in decide") end
  if q.name == "refused.example" then return REFUSED end
  if q.qtype == "TXT" then return NODATA end
  if q.name == "b.example" then return "allow" end
  return policy:match(q.name)
end
return M
EOF
code=$(in_sb curl -s -m 5 -o /dev/null -w '%{http_code}' -X PUT -H "OPENSANDBOX-EGRESS-AUTH: $TOKEN" \
  --data-binary @"$TMP/custom.lua" http://127.0.0.1:18080/policy/script)
check_eq "PUT /policy/script with a custom script: 200" 200 "$code"
agree refused.example A "the script's REFUSED"
agree txt.example TXT "the script's NODATA"
agree b.example A "a plain \"allow\" (no rule)"
agree allowed.example A "the policy through the script"
agree boom.example A "the script fails: denied"
explain boom.example
check_contains "a failure is explained with the script's error" "boom in decide" "$(field "$EX" error)"
explain b.example
check_eq "a verdict without a rule: rule is null" "null" "$("$PY" -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1])["rule"]))' "$EX")"

e2e_finish
