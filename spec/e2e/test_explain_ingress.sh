#!/usr/bin/env bash
# The gateway's POST /explain agrees with what the gateway actually does:
# every request below is sent byte for byte to `sandgate ingress` (in the
# sandbox namespace) and described to its admin /explain; the explanation
# must name the backend that got the request, the request-target it got and
# every header of it in order (Host, hop-by-hop headers dropped,
# X-Forwarded-* from a trusted proxy, the route's own headers), or the
# gateway's own status and body. With the shipped header and URI scripts,
# the canary example (whose choice depends on the client's address), and
# across a routes reload. Also: the endpoint's 400s, and that it sends
# nothing.
#
# usage: test_explain_ingress.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"
HTTP="$E2E_DIR/explainhttp.py"
SRC=$(cd "$E2E_DIR/../.." && pwd)

topo_up || { not_ok "network namespaces set up"; e2e_finish; }

# Echo backends on two addresses of the "internet" namespace.
ip netns exec "$NS_UP" "$PY" "$HTTP" echo "$UP4" 8080 "$ALT4" 8080 >"$TMP/echo.requests" 2>"$TMP/echo.log" &
E2E_PIDS+=("$!")
echo_up() { in_sb "$PY" -c "import socket; socket.create_connection(('$1', 8080), 1).close()" 2>/dev/null; }
wait_until 10 echo_up "$UP4" && wait_until 10 echo_up "$ALT4" || {
  not_ok "echo backends started"
  e2e_finish
}

# Every gateway here: $SB4:28888 with the admin API on 127.0.0.1:28889 and
# two workers (ing_start is lib.sh's).
GW_FLAGS=(--listen "$SB4" --port 28888 --admin-addr 127.0.0.1:28889 --workers 2)

ing_stop() {
  kill -TERM "$ING_PID" 2>/dev/null
  wait_exit "$ING_PID" 15
  check_eq "sandgate ingress stops cleanly" 0 "$WAIT_RC"
}

# compare CASES-JSON: runs explainhttp.py compare in the sandbox and turns
# its lines into checks.
compare() {
  printf '%s' "$1" >"$TMP/cases.json"
  local line
  while IFS= read -r line; do
    case $line in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" ;;
    *) echo "$line" ;;
    esac
  done < <(in_sb "$PY" "$HTTP" compare "$SB4" 28888 127.0.0.1 28889 "$TMP/cases.json" 2>&1)
}

admin() { # BODY: POST /explain; sets ADM_STATUS and ADM_BODY
  local out
  out=$(in_sb curl -s -m 5 -w '\n%{http_code}' -X POST --data-binary "$1" http://127.0.0.1:28889/explain)
  ADM_STATUS=${out##*$'\n'}
  ADM_BODY=${out%$'\n'*}
  ADM_BODY=${ADM_BODY%$'\n'} # bodies end with a newline
}

# ---- header mode ------------------------------------------------------------------

ROUTES=$TMP/routes.json
cat >"$ROUTES" <<EOF
{"sbx-1": "$UP4", "sbx-2": "$ALT4", "tok": {"host": "$UP4", "token": "tok-1"},
 "sbx-001": {"host": "$ALT4", "token": "tok-001"}, "starting": {"host": "$UP4", "ready": false}}
EOF
ing_start header "${GW_FLAGS[@]}" --routes "$ROUTES" --trusted-proxies "$SB4/32" \
  --secure-access-keys a=bXktdGVzdC1zZWNyZXQ= || e2e_finish

compare '[
 {"what": "OpenSandbox-Ingress-To", "path": "/api?x=1&y=%2F",
  "headers": [["OpenSandbox-Ingress-To", "sbx-1-8080"], ["Accept", "*/*"], ["User-Agent", "e2e"]]},
 {"what": "Host routing, hop-by-hop headers and those Connection names dropped", "path": "/h",
  "headers": [["Host", "sbx-2-8080.gw.example"], ["Connection", "keep-alive, X-Hop"], ["X-Hop", "1"],
              ["Keep-Alive", "timeout=5"], ["TE", "trailers"], ["X-Kept", "a"]]},
 {"what": "a trusted client: its X-Forwarded-* values are kept and extended", "path": "/xff",
  "headers": [["Host", "sbx-1-8080"], ["X-Forwarded-For", "203.0.113.9"], ["X-Forwarded-Proto", "https"],
              ["X-Forwarded-Host", "public.example"]]},
 {"what": "DELETE with the deprecated header", "method": "DELETE", "path": "/thing",
  "headers": [["OPEN-SANDBOX-INGRESS", "sbx-2-8080"], ["Host", "ignored-1"]]},
 {"what": "the secure-access token is checked and removed", "path": "/t",
  "headers": [["Host", "tok-8080.gw"], ["OpenSandbox-Secure-Access", "tok-1"]]},
 {"what": "an OSEP-0011 signed route", "path": "/v1?q",
  "headers": [["Host", "sbx-001-8080-x2qxvk-0ff8cd39a.gw"]]},
 {"what": "no token: 401", "path": "/", "headers": [["Host", "tok-8080.gw"]]},
 {"what": "a bad signature: 401", "path": "/", "headers": [["Host", "sbx-001-8080-x2qxvk-1ff8cd39a.gw"]]},
 {"what": "an unknown sandbox: 404", "path": "/", "headers": [["Host", "nope-8080.gw"]]},
 {"what": "a sandbox not ready: 503", "path": "/", "headers": [["Host", "starting-8080.gw"]]},
 {"what": "a port with a leading zero: 400", "path": "/", "headers": [["Host", "sbx-1-08080.gw"]]},
 {"what": "no routing header and no Host: 400", "path": "/"},
 {"what": "two Host headers: the engine refuses", "path": "/", "headers": [["Host", "sbx-1-8080"], ["Host", "sbx-2-8080"]]},
 {"what": "GET /status.ok: the gateway answers", "path": "/status.ok"}
]'

# /explain sends nothing: the backend sees no request for a path only explained.
admin '{"path": "/only-explained", "host": "sbx-1-8080"}'
check_eq "POST /explain answers 200" 200 "$ADM_STATUS"
check_contains "... with the route" "\"host\":\"$UP4\",\"port\":8080,\"path\":\"/only-explained\"" "$ADM_BODY"
compare '[{"what": "a real request after it", "path": "/after", "headers": [["Host", "sbx-1-8080"]]}]'
check "the backend got the real request" grep -q " GET /after$" "$TMP/echo.requests"
check "the backend never got the explained one" bash -c "! grep -q only-explained '$TMP/echo.requests'"
admin '{"path": "x"}'
check_eq "a bad description: 400 naming the problem" \
  '400 request description: path "x" must start with / and have no spaces or control characters' \
  "$ADM_STATUS $ADM_BODY"
admin '{"path": "/", "heders": {}}'
check_contains "a misspelt field: 400 naming it" 'unknown field "heders"' "$ADM_BODY"
admin 'not json'
check_eq "not JSON: 400" 400 "$ADM_STATUS"
code=$(in_sb curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:28889/explain)
check_eq "GET /explain: 404 (POST only)" 404 "$code"

# A routes change: explain follows the reload, and so do requests.
cat >"$ROUTES.new" <<EOF
{"sbx-1": "$ALT4", "sbx-2": "$UP4"}
EOF
mv "$ROUTES.new" "$ROUTES"
wait_until 5 grep -q '"event":"ingress.reloaded"' "$ING_LOG"
check "the routes change is reloaded" grep -q '"event":"ingress.reloaded"' "$ING_LOG"
admin '{"path": "/", "host": "sbx-1-8080"}'
check_contains "explain after the reload names the new backend" "\"host\":\"$ALT4\"" "$ADM_BODY"
compare '[
 {"what": "after the reload, sbx-1", "path": "/r", "headers": [["Host", "sbx-1-8080"]]},
 {"what": "after the reload, a sandbox that is gone: 404", "path": "/r", "headers": [["Host", "tok-8080"]]}
]'
ing_stop

# ---- URI mode: the route sets X-Forwarded-Prefix -------------------------------------

ing_start uri "${GW_FLAGS[@]}" --mode uri --routes "$ROUTES" || e2e_finish
compare '[
 {"what": "URI mode: /id/port/rest, the raw rest and query", "path": "/sbx-1/8080/a/b%2Fc?q=%2F&x",
  "headers": [["Host", "gw.example"], ["X-Forwarded-Prefix", "/spoofed"]]},
 {"what": "URI mode: the root", "path": "/sbx-2/8080"},
 {"what": "URI mode: a short path: 400", "path": "/sbx-1"}
]'
ing_stop

# ---- the canary example: the client's address decides -------------------------------

cat >"$ROUTES" <<EOF
{"app-1": "$UP4", "app-1-canary": "$ALT4"}
EOF
ing_start canary "${GW_FLAGS[@]}" --script "$SRC/examples/ingress/canary.lua" --routes "$ROUTES" || e2e_finish
compare '[
 {"what": "canary: this client, by its address", "path": "/c", "headers": [["Host", "app-1-8080.gw"]]},
 {"what": "canary: forced to the canary, the override removed", "path": "/c",
  "headers": [["Host", "app-1-8080.gw"], ["X-Sandgate-Canary", "always"]]},
 {"what": "canary: forced to the stable sandbox", "path": "/c",
  "headers": [["Host", "app-1-8080.gw"], ["X-Sandgate-Canary", "never"]]}
]'
admin "{\"path\": \"/c\", \"host\": \"app-1-8080.gw\", \"headers\": {\"X-Sandgate-Canary\": \"always\"}, \"client\": \"$SB4\"}"
check_contains "explain names the canary sandbox" '"sandbox":"app-1-canary"' "$ADM_BODY"
ing_stop

e2e_finish
