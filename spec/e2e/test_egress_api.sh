#!/usr/bin/env bash
# The OpenSandbox policy API, end to end with curl against the real binary in
# the sandbox namespace: health, auth, every /policy method with its status
# codes and bodies, every write being a hot reload that DNS answers follow at
# once, refused writes changing nothing, limits, and persistence (a restart
# restores the policy; kill -9 during a stream of PATCHes never leaves a torn
# file).
#
# usage: test_egress_api.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

TOKEN=s3cret-token
POLICY_FILE=$TMP/state/policy.json
mkdir -p "$TMP/state"

# api METHOD PATH [BODY-FILE] [curl args...]: sets API_STATUS, API_BODY,
# API_CT (content type) and API_HDRS (response headers).
api() {
  local method=$1 path=$2 body=${3:-}
  shift 3 2>/dev/null || shift $#
  local -a data=()
  [ -n "$body" ] && data=(--data-binary "@$body")
  local out
  out=$(in_sb curl -sS -m 10 -X "$method" -o "$TMP/api.body" -D "$TMP/api.hdrs" \
    -w '%{http_code} %{content_type}' "${data[@]}" "$@" "http://127.0.0.1:18080$path" 2>&1)
  API_STATUS=${out%% *}
  API_CT=${out#* }
  API_BODY=$(cat "$TMP/api.body" 2>/dev/null)
  API_HDRS=$(cat "$TMP/api.hdrs" 2>/dev/null)
}
auth=(-H "OPENSANDBOX-EGRESS-AUTH: $TOKEN")
body() { printf '%s' "$1" >"$TMP/req.json"; echo "$TMP/req.json"; }
rcode() { dig_sb "$1" A; dig_rcode "$DIG_OUT"; }

sg_start api --policy-file "$POLICY_FILE" --token "$TOKEN" \
  --rules '{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.example"}]}'
check "sandgate egress starts with the API on :18080" proc_running "$SG_PID"
check_eq "egress.loaded names the source and the rules" 1 \
  "$(log_count "$SG_LOG" event=egress.loaded source=OPENSANDBOX_EGRESS_RULES 'policy~=allowed.example')"

# ---- health and auth ---------------------------------------------------------

api GET /healthz ""
check_eq "GET /healthz needs no token: 200 ok" "200 ok" "$API_STATUS $API_BODY"
api GET /policy ""
check_eq "GET /policy without the token: 401 unauthorized" "401 unauthorized" "$API_STATUS $API_BODY"
check_contains "401 is text/plain" "text/plain" "$API_CT"
api GET /policy "" -H "OPENSANDBOX-EGRESS-AUTH: wrong"
check_eq "a wrong token: 401" 401 "$API_STATUS"
api GET /policy "" -H "OPENSANDBOX-EGRESS-AUTH: ${TOKEN}x"
check_eq "a longer token with the right prefix: 401" 401 "$API_STATUS"
api GET /policy "" "${auth[@]}"
check_eq "GET /policy with the token: 200" 200 "$API_STATUS"
check_contains "GET /policy is application/json" "application/json" "$API_CT"
check_eq "GET /policy shows the initial policy in OpenSandbox's shape" \
  '{"status":"ok","mode":"enforcing","enforcementMode":"dns","policy":{"egress":[{"action":"allow","target":"allowed.example"}],"defaultAction":"deny"}}' \
  "$API_BODY"

# ---- writes are hot reloads ---------------------------------------------------

check_eq "before any write: denied.example is NXDOMAIN" NXDOMAIN "$(rcode denied.example)"
api PATCH /policy "$(body '[{"action":"allow","target":"*.wild.example"}]')" "${auth[@]}"
check_eq "PATCH adding *.wild.example: 200 with mode" \
  '200 {"status":"ok","mode":"enforcing","enforcementMode":"dns"}' "$API_STATUS $API_BODY"
check_eq "after the PATCH a.wild.example resolves at once" NOERROR "$(rcode a.wild.example)"
check_eq "egress.updated logs the new rules" 1 \
  "$(log_count "$SG_LOG" event=egress.updated 'policy~=*.wild.example')"
check_eq "the earlier rule still holds: allowed.example resolves" NOERROR "$(rcode allowed.example)"
api PATCH /policy "$(body '[{"action":"deny","target":"api.wild.example"}]')" "${auth[@]}"
check_eq "a later PATCH denying api.wild.example: 200" 200 "$API_STATUS"
check_eq "the later PATCH goes first: api.wild.example is denied" NXDOMAIN "$(rcode api.wild.example)"
check_eq "other names under *.wild.example still resolve" NOERROR "$(rcode www.wild.example)"
api GET /policy "" "${auth[@]}"
check_contains "GET shows the merged order (the newest patch first)" \
  '"egress":[{"action":"deny","target":"api.wild.example"},{"action":"allow","target":"*.wild.example"},{"action":"allow","target":"allowed.example"}]' \
  "$API_BODY"

api DELETE /policy "$(body '["API.WILD.EXAMPLE"]')" "${auth[@]}"
check_eq "DELETE matches targets case-insensitively: 200" 200 "$API_STATUS"
check_eq "after the DELETE api.wild.example resolves again" NOERROR "$(rcode api.wild.example)"
api DELETE /policy "$(body '["nothing.example"]')" "${auth[@]}"
check_eq "DELETE with no match: 200 and the reason" \
  '200 {"status":"ok","mode":"enforcing","enforcementMode":"dns","reason":"no matching targets found"}' \
  "$API_STATUS $API_BODY"

# ---- refused writes change nothing --------------------------------------------

before=$(cat "$POLICY_FILE")
api POST /policy "$(body '{"defaultAction":"maybe"}')" "${auth[@]}"
check_eq "an invalid defaultAction: 400" 400 "$API_STATUS"
check_contains "the error names the value" 'invalid policy: ' "$API_BODY"
check_contains "... and the value" 'maybe' "$API_BODY"
check_eq "the refused write left the file as it was" "$before" "$(cat "$POLICY_FILE")"
check_eq "egress.update_failed logs the refused rules" 1 \
  "$(log_count "$SG_LOG" event=egress.update_failed method=POST status=400 'body~=maybe')"
check_eq "the refused write left DNS as it was" NOERROR "$(rcode a.wild.example)"
api POST /policy "$(body '{"egress":[{"action":"allow","target":"a b"}]}')" "${auth[@]}"
check_eq "a target that is no name, IP or CIDR: 400" 400 "$API_STATUS"
api PATCH /policy "$(body '')" "${auth[@]}"
check_eq "PATCH with an empty body: 400 empty body" "400 empty body" "$API_STATUS $API_BODY"
api PATCH /policy "$(body '[]')" "${auth[@]}"
check_eq "PATCH with an empty array: 400" "400 invalid patch rules: empty array" "$API_STATUS $API_BODY"
api PATCH /policy "$(body '{not json')" "${auth[@]}"
check_eq "PATCH with garbage: 400" 400 "$API_STATUS"
api DELETE /policy "$(body '[]')" "${auth[@]}"
check_eq "DELETE with an empty array: 400" 400 "$API_STATUS"
api OPTIONS /policy "" "${auth[@]}"
check_eq "OPTIONS /policy: 405" 405 "$API_STATUS"
check_contains "405 lists the allowed methods" "Allow: GET, POST, PUT, PATCH, DELETE" "$API_HDRS"
api GET /nowhere "" "${auth[@]}"
check_eq "an unknown path: 404" 404 "$API_STATUS"

# A body over 1 MiB is refused whole, never truncated.
"$PY" -c 'import sys; sys.stdout.write("[" + " " * (1 << 20) + "]")' >"$TMP/big.json"
api PATCH /policy "$TMP/big.json" "${auth[@]}"
check_eq "a 1 MiB + 2 byte body: 413" 413 "$API_STATUS"
"$PY" - "$TMP/4097.json" <<'EOF'
import json, sys
rules = [{"action": "allow", "target": "h%d.example" % i} for i in range(4097)]
open(sys.argv[1], "w").write(json.dumps({"defaultAction": "deny", "egress": rules}))
EOF
api POST /policy "$TMP/4097.json" "${auth[@]}"
check_eq "4097 rules: 413 with the limit message" \
  "413 egress rule total count 4097 exceeds limit 4096" "$API_STATUS $API_BODY"
check_eq "the refused limit left DNS as it was" NOERROR "$(rcode a.wild.example)"

# ---- metrics -------------------------------------------------------------------

metric() { grep -E "^$1 " <<<"$API_BODY" | awk '{print $2}'; }
api GET /metrics ""
check_eq "GET /metrics needs no token: 200" 200 "$API_STATUS"
check_contains "GET /metrics is Prometheus text" "text/plain; version=0.0.4" "$API_CT"
check "denied A queries are counted" test "$(metric 'sandgate_dns_queries_total\{verdict="deny",qtype="A"\}')" -ge 2
check "allowed A queries are counted" test "$(metric 'sandgate_dns_queries_total\{verdict="allow",qtype="A"\}')" -ge 3
check "forwarded queries are in the upstream histogram" test "$(metric sandgate_dns_upstream_duration_seconds_count)" -ge 3
check_eq "the histogram's +Inf bucket equals its count" "$(metric sandgate_dns_upstream_duration_seconds_count)" \
  "$(metric 'sandgate_dns_upstream_duration_seconds_bucket\{le="\+Inf"\}')"
check_eq "the rule gauge counts the document's rules" 2 "$(metric sandgate_policy_rules)"
check "successful writes are counted" test "$(metric 'sandgate_policy_updates_total\{result="ok"\}')" -ge 3
check "refused writes are counted" test "$(metric 'sandgate_policy_updates_total\{result="failed"\}')" -ge 5
check_contains "script errors are exported" "sandgate_policy_script_errors_total 0" "$API_BODY"

# ---- the policy script through the API ---------------------------------------

api GET /policy/script "" "${auth[@]}"
check_eq "GET /policy/script: 200" 200 "$API_STATUS"
check_contains "GET /policy/script returns the running script" 'require "sandgate.rules"' "$API_BODY"
api GET /policy/script ""
check_eq "GET /policy/script without the token: 401" 401 "$API_STATUS"
printf 'return { decide = function(q)\n  return "allow"\n' >"$TMP/broken.lua"
api PUT /policy/script "$TMP/broken.lua" "${auth[@]}"
check_eq "PUT a script with a syntax error: 400" 400 "$API_STATUS"
check_contains "the error names the line" 'policy.script.lua:3:' "$API_BODY"
check_contains "the error starts with invalid script:" 'invalid script: ' "$API_BODY"
check_eq "the refused script left DNS as it was" NOERROR "$(rcode a.wild.example)"
check_eq "no script file was persisted for the refused upload" 0 \
  "$(find "$TMP/state" -name 'policy.script.lua' | wc -l)"
cat >"$TMP/blocker.lua" <<'EOF'
-- Uploaded through the API: the default semantics, and names containing
-- "blocked" are always denied.
local rules = require "sandgate.rules"
local M, policy = {}, rules.compile(nil)
local BLOCK = { action = "deny", rule = "uploaded: blocked" }
function M.load(doc) policy = rules.compile(doc) end
function M.decide(q)
  if q.name:find("blocked", 1, true) then return BLOCK end
  return policy:match(q.name)
end
return M
EOF
api PUT /policy/script "$TMP/blocker.lua" "${auth[@]}"
check_eq "PUT a working script: 200" '200 {"status":"ok"}' "$API_STATUS $API_BODY"
check_eq "the uploaded script decides at once: blocked.wild.example is denied" NXDOMAIN "$(rcode blocked.wild.example)"
check_eq "... with the current document: x.wild.example resolves" NOERROR "$(rcode x.wild.example)"
check_eq "the upload is persisted next to the policy file" "$(cat "$TMP/blocker.lua")" \
  "$(cat "$TMP/state/policy.script.lua" 2>/dev/null)"
api GET /policy/script "" "${auth[@]}"
check_contains "GET /policy/script returns the upload" 'uploaded: blocked' "$API_BODY"
api POST /policy/script "$TMP/blocker.lua" "${auth[@]}"
check_eq "POST /policy/script: 405" 405 "$API_STATUS"
check_contains "405 lists GET, PUT" "Allow: GET, PUT" "$API_HDRS"

# ---- replace, reset ----------------------------------------------------------

api PUT /policy "$(body '{"defaultAction":"allow"}')" "${auth[@]}"
check_eq "PUT allow-all: 200 mode allow_all" \
  '200 {"status":"ok","mode":"allow_all","enforcementMode":"dns"}' "$API_STATUS $API_BODY"
check_eq "after PUT allow-all denied.example resolves" NOERROR "$(rcode denied.example)"
api POST /policy "$(body '')" "${auth[@]}"
check_eq "POST with an empty body resets to deny-all" \
  '200 {"status":"ok","mode":"deny_all","reason":"policy reset to default deny-all"}' \
  "$API_STATUS $API_BODY"
check_eq "after the reset allowed.example is denied" NXDOMAIN "$(rcode allowed.example)"

# ---- persistence ---------------------------------------------------------------

api POST /policy "$(body '{"defaultAction":"deny","egress":[{"action":"allow","target":"b.example"}]}')" "${auth[@]}"
check_eq "POST a policy to persist: 200" 200 "$API_STATUS"
check_contains "the policy file holds it" '"target":"b.example"' "$(cat "$POLICY_FILE")"
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"
# The restart gives different rules on the command line: the file wins.
sg_start api2 --policy-file "$POLICY_FILE" --token "$TOKEN" \
  --rules '{"defaultAction":"allow"}'
check_eq "after a restart the persisted policy applies: b.example resolves" NOERROR "$(rcode b.example)"
check_eq "after a restart the persisted policy applies: a.example is denied" NXDOMAIN "$(rcode a.example)"
api GET /policy/script "" "${auth[@]}"
check_contains "after a restart the uploaded script is back" 'uploaded: blocked' "$API_BODY"
check_eq "the restart logged policy.script_restored" 1 "$(log_count "$SG_LOG" event=policy.script_restored)"

# kill -9 in the middle of a stream of PATCHes: the file must parse and be one
# of the states that were written.
"$PY" - "$TMP/patches" <<'EOF'
import json, os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(300):
    rules = [{"action": "allow", "target": "p%d-%d.example" % (i, j)} for j in range(20)]
    open(os.path.join(d, "%03d.json" % i), "w").write(json.dumps(rules))
EOF
(
  for f in "$TMP"/patches/*.json; do
    in_sb curl -s -m 5 -o /dev/null -X PATCH --data-binary "@$f" "${auth[@]}" \
      http://127.0.0.1:18080/policy || true
  done
) &
STREAM=$!
E2E_PIDS+=("$STREAM")
wait_until 10 "$PY" -c "import sys; sys.exit(0 if open('$POLICY_FILE').read().count('p20-') else 1)" || true
kill -KILL "$SG_PID"
wait "$SG_PID" 2>/dev/null
kill "$STREAM" 2>/dev/null
wait "$STREAM" 2>/dev/null
check "after kill -9 mid-stream the policy file is valid JSON" \
  "$PY" -c "import json; json.load(open('$POLICY_FILE'))"
check "... and holds complete patches (every p<i>- prefix has all 20 rules)" "$PY" - "$POLICY_FILE" <<'EOF'
import collections, json, sys
doc = json.load(open(sys.argv[1]))
count = collections.Counter(r["target"].split("-")[0] for r in doc.get("egress") or [] if r["target"].startswith("p"))
sys.exit(0 if count and all(n == 20 for n in count.values()) else 1)
EOF
# What an interrupted write leaves behind (whether or not the kill above hit
# one), and a file that only looks similar, which must stay.
: >"$TMP/state/policy.json.tmp.Zz9xYq"
: >"$TMP/state/policy.json.tmp.notmine.txt"
sg_start api3 --policy-file "$POLICY_FILE" --token "$TOKEN"
check "sandgate restarts from the file left by kill -9" proc_running "$SG_PID"
check_eq "no temporary file of an interrupted write is left after the restart" 0 \
  "$(find "$TMP/state" -name '*.tmp.??????' | wc -l)"
check "a file that only looks like a temporary one is left alone" test -e "$TMP/state/policy.json.tmp.notmine.txt"
api GET /policy "" "${auth[@]}"
check_contains "the restarted sidecar serves the persisted patches" '"target":"p' "$API_BODY"

e2e_finish
