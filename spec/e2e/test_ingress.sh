#!/usr/bin/env bash
# sandgate ingress end to end, on 127.0.0.1 only (no namespaces): real HTTP,
# SSE and WebSocket backends (spec/e2e/ingress_backend.py), two gateways (header
# mode, and URI mode trusting 127.0.0.0/8 as proxies) and a third one for the
# drain. Checks header and URI routing to two backends, the exact request the
# backend gets, every error status and body, X-Forwarded-*, signed routes,
# WebSocket and raw Upgrade tunnels, SSE flushed per event, 100 MiB both ways
# with bounded gateway memory, slowloris, pipelining, keep-alive reuse,
# Expect: 100-continue, mid-stream backend failure, a reload under load with a
# WebSocket open across it, and graceful drain on SIGTERM.
#
# usage: test_ingress.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"
# A sanitizer build holds freed memory in quarantine: its RSS says nothing
# about the gateway's buffering.
ASAN_BUILD=0
ldd "$BIN" 2>/dev/null | grep -q libasan && ASAN_BUILD=1

BK=$E2E_DIR/ingress_backend.py
ROUTES=$TMP/routes.json
KEYS="a=$(printf %s my-test-secret | base64)"
BIG=$((100 * 1024 * 1024))

read -r PA PB PW DEAD GWH ADH GWU ADU GWD ADD <<<"$("$PY" "$BK" freeports 10)"

# ---- processes -----------------------------------------------------------------

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# bk_start NAME PORT ARGS...: a backend from ingress_backend.py.
bk_start() {
  local name=$1 port=$2
  shift 2
  "$PY" "$BK" "$@" >"$TMP/bk-$name.log" 2>&1 &
  E2E_PIDS+=($!)
  wait_until 10 port_open "$port"
}

# gw_start NAME PORT ADMINPORT [flags...]: sandgate ingress on 127.0.0.1;
# sets GW_PID.
gw_start() {
  local name=$1 port=$2 admin=$3
  shift 3
  local log=$TMP/gw-$name.log
  "$BIN" ingress --listen 127.0.0.1 --port "$port" --admin-addr "127.0.0.1:$admin" \
    --routes "$ROUTES" --header-timeout 2 --connect-timeout 2 --first-byte-timeout 3 \
    --idle-timeout 10 "$@" >"$log" 2>&1 &
  GW_PID=$!
  E2E_PIDS+=("$GW_PID")
  E2E_LOGS+=("$log")
  if ! wait_until 10 gw_ready "$GW_PID" "$log" || ! proc_running "$GW_PID" || ! port_open "$port"; then
    echo "# sandgate ingress $name did not start:"
    diag <"$log"
    return 1
  fi
}
gw_ready() { grep -q '"event":"ingress.started"' "$2" 2>/dev/null || ! proc_running "$1"; }

# bg CMD...: a background client, recorded for cleanup; sets BG_PID.
bg() {
  "$@" &
  BG_PID=$!
  E2E_PIDS+=("$BG_PID")
}

write_routes() { # atomically, as an operator's tool would
  printf '%s\n' "$1" >"$ROUTES.tmp" && mv -f "$ROUTES.tmp" "$ROUTES"
}

BASE_ROUTES='{"sbxa":"127.0.0.1","sbxb":{"host":"127.0.0.1"},"my-sbx-1":"127.0.0.1",
 "notready":{"host":"127.0.0.1","ready":false},"locked":{"host":"127.0.0.1","token":"tok-123"}}'
write_routes "$BASE_ROUTES"

# ---- requests -------------------------------------------------------------------

# hreq PORT PATH [curl args...]: sets R_STATUS, R_CT, R_BODY, R_HDRS (CR
# removed), R_RC (curl's exit status).
hreq() {
  local port=$1 path=$2
  shift 2
  local out
  R_RC=0
  rm -f "$TMP/r.body" "$TMP/r.hdrs"
  out=$(curl -sS -m 15 --path-as-is -o "$TMP/r.body" -D "$TMP/r.hdrs" \
    -w '%{http_code} %{content_type}' "$@" "http://127.0.0.1:$port$path" 2>"$TMP/r.err") || R_RC=$?
  R_STATUS=${out%% *}
  R_CT=${out#* }
  R_BODY=$(cat "$TMP/r.body" 2>/dev/null)
  R_HDRS=$(tr -d '\r' <"$TMP/r.hdrs" 2>/dev/null)
}
to() { echo "OpenSandbox-Ingress-To: $1"; }

# Fields of the echo backend's answer in $R_BODY (or $1).
e_name() { sed -n 's/^name: //p' <<<"${1:-$R_BODY}" | head -n1; }
e_line() { awk '/^--- head$/{getline; print; exit}' <<<"${1:-$R_BODY}"; }
e_head() { awk '/^--- head$/{f=1;next} /^--- body$/{exit} f' <<<"${1:-$R_BODY}"; }
e_body() { awk 'f{print} /^--- body$/{f=1}' <<<"${1:-$R_BODY}"; }
# e_hdr NAME: every value of that request header (case-insensitive name).
e_hdr() {
  e_head | tail -n +2 | awk -v n="$1" '{ i = index($0, ":"); if (tolower(substr($0, 1, i - 1)) == tolower(n)) print substr($0, i + 2) }'
}
# resp_hdr NAME: the value of a response header in $R_HDRS.
resp_hdr() {
  awk -v n="$1" '{ i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == tolower(n)) print substr($0, i + 2) }' <<<"$R_HDRS" | head -n1
}

metrics() { curl -sS -m 5 "http://127.0.0.1:$1/metrics" 2>/dev/null; }
# metric ADMINPORT NAME-REGEX
metric() { metrics "$1" | grep -E "^$2 " | awk '{print $2}'; }

# check_err WHAT STATUS: $R_STATUS, the OpenSandbox error body and headers.
check_err() {
  local what=$1 want=$2
  local body1=${R_BODY%%$'\n'*}
  if [ "$R_STATUS" == "$want" ] && [[ "$R_BODY" == "OpenSandbox Ingress: "* ]] &&
    [[ "$R_CT" == text/plain* ]] && [ "$(resp_hdr Reverse-Proxy-Server-PowerBy)" == OpenSandbox-ingress ]; then
    ok "$what: $want, text/plain \"${body1:0:70}\""
  else
    not_ok "$what: expected $want text/plain \"OpenSandbox Ingress: ...\""
    diag "got: status $R_STATUS ($R_CT) curl rc $R_RC: $body1"
    diag <<<"$R_HDRS"
  fi
}

# ---- start ------------------------------------------------------------------------

bk_start A "$PA" http "$PA" A || { not_ok "backend A started"; e2e_finish; }
bk_start B "$PB" http "$PB" B || { not_ok "backend B started"; e2e_finish; }
bk_start W "$PW" ws "$PW" || { not_ok "WebSocket backend started"; e2e_finish; }
gw_start header "$GWH" "$ADH" --mode header --secure-access-keys "$KEYS" ||
  { not_ok "gateway (header mode) started"; e2e_finish; }
GWH_PID=$GW_PID
gw_start uri "$GWU" "$ADU" --mode uri --secure-access-keys "$KEYS" --trusted-proxies 127.0.0.0/8 ||
  { not_ok "gateway (uri mode) started"; e2e_finish; }
GWU_PID=$GW_PID
ok "backends A :$PA, B :$PB, WebSocket :$PW; gateways header :$GWH, uri :$GWU"

hreq "$GWH" /status.ok
check_eq "header mode: GET /status.ok" "200 OK" "$R_STATUS $R_BODY"
hreq "$GWU" /status.ok
check_eq "uri mode: GET /status.ok" "200 OK" "$R_STATUS $R_BODY"

# ---- header-mode routing ------------------------------------------------------------

hreq "$GWH" /hello -H "$(to "sbxa-$PA")"
check_eq "OpenSandbox-Ingress-To: sbxa-$PA reaches backend A" "200 A" "$R_STATUS $(e_name)"
check_eq "... with Host set to the backend" "127.0.0.1:$PA" "$(e_hdr Host)"
check_eq "... the response carries Reverse-Proxy-Server-PowerBy" OpenSandbox-ingress \
  "$(resp_hdr Reverse-Proxy-Server-PowerBy)"
check_eq "... and the backend's own headers" A "$(resp_hdr X-Backend)"
hreq "$GWH" /hello -H "$(to "sbxa-$PB")"
check_eq "sbxa-$PB (another port) reaches backend B" "200 B" "$R_STATUS $(e_name)"
check_eq "... with Host 127.0.0.1:$PB" "127.0.0.1:$PB" "$(e_hdr Host)"
hreq "$GWH" /hello -H "$(to "my-sbx-1-$PB")"
check_eq "an id with dashes (my-sbx-1-$PB) splits on the last '-'" "200 B" "$R_STATUS $(e_name)"
hreq "$GWH" /hello -H "opensandbox-ingress-to: sbxb-$PA"
check_eq "the header name is case-insensitive" "200 A" "$R_STATUS $(e_name)"
hreq "$GWH" /hello -H "OPEN-SANDBOX-INGRESS: sbxb-$PB"
check_eq "the deprecated OPEN-SANDBOX-INGRESS routes" "200 B" "$R_STATUS $(e_name)"
check_eq "... and is removed before the backend" "" "$(e_hdr OPEN-SANDBOX-INGRESS)"
hreq "$GWH" /hello -H "Host: sbxa-$PB.sandboxes.example.com"
check_eq "Host's first label routes (sbxa-$PB.sandboxes.example.com)" "200 B" "$R_STATUS $(e_name)"
check_eq "... X-Forwarded-Host keeps the client's Host" "sbxa-$PB.sandboxes.example.com" "$(e_hdr X-Forwarded-Host)"
hreq "$GWH" /hello -H "Host: sbxa-$PA:8443"
check_eq "Host with a port (sbxa-$PA:8443) routes by its label" "200 A" "$R_STATUS $(e_name)"
hreq "$GWH" /hello -H "$(to "sbxa-$PA")" -H "OPEN-SANDBOX-INGRESS: sbxa-$PB" -H "Host: sbxa-$PB.example.com"
check_eq "OpenSandbox-Ingress-To wins over the deprecated header and Host" "200 A" "$R_STATUS $(e_name)"
hreq "$GWH" /hello -H "OPEN-SANDBOX-INGRESS: sbxa-$PA" -H "Host: sbxa-$PB.example.com"
check_eq "OPEN-SANDBOX-INGRESS wins over Host" "200 A" "$R_STATUS $(e_name)"

# ---- URI-mode routing -----------------------------------------------------------------

hreq "$GWU" "/sbxa/$PA/hello"
check_eq "/sbxa/$PA/hello reaches A as GET /hello" "200 A GET /hello HTTP/1.1" "$R_STATUS $(e_name) $(e_line)"
check_eq "... X-Forwarded-Prefix: /sbxa/$PA" "/sbxa/$PA" "$(e_hdr X-Forwarded-Prefix)"
check_eq "... Host set to the backend" "127.0.0.1:$PA" "$(e_hdr Host)"
check_eq "... Reverse-Proxy-Server-PowerBy" OpenSandbox-ingress "$(resp_hdr Reverse-Proxy-Server-PowerBy)"
hreq "$GWU" "/sbxa/$PB/hello"
check_eq "/sbxa/$PB/hello reaches B" "200 B GET /hello HTTP/1.1" "$R_STATUS $(e_name) $(e_line)"
hreq "$GWU" "/my-sbx-1/$PB/x/y"
check_eq "/my-sbx-1/$PB/x/y reaches B as /x/y" "200 B GET /x/y HTTP/1.1" "$R_STATUS $(e_name) $(e_line)"
hreq "$GWU" "/sbxa/$PA"
check_eq "/sbxa/$PA (no rest) -> GET /" "200 GET / HTTP/1.1" "$R_STATUS $(e_line)"
hreq "$GWU" "/sbxa/$PA/"
check_eq "/sbxa/$PA/ -> GET /" "200 GET / HTTP/1.1" "$R_STATUS $(e_line)"
hreq "$GWU" "/sbxa/$PA?q=1&r"
check_eq "/sbxa/$PA?q=1&r -> GET /?q=1&r" "200 GET /?q=1&r HTTP/1.1" "$R_STATUS $(e_line)"
hreq "$GWU" "/sbxa/$PA/a%2Fb/c%20d/./../e?x=%2F&y=a+b&&z=%zz#frag"
check_eq "raw path and query kept byte for byte (%2F, %20, ./.., %zz)" \
  "200 GET /a%2Fb/c%20d/./../e?x=%2F&y=a+b&&z=%zz HTTP/1.1" "$R_STATUS $(e_line)"
check_eq "... X-Forwarded-Prefix /sbxa/$PA" "/sbxa/$PA" "$(e_hdr X-Forwarded-Prefix)"
hreq "$GWU" "/sbxa/$PA/q" -X POST --data-binary 'k=v&x=1'
check_eq "POST body forwarded in URI mode" "200 POST /q HTTP/1.1 k=v&x=1" "$R_STATUS $(e_line) $(e_body)"

# ---- the exact request the backend receives --------------------------------------------

printf '%s\r\n' "GET /p%2Fq/../r?a=b&c=%41&&d=%zz HTTP/1.1" "Host: front.example.com" \
  "OpenSandbox-Ingress-To: sbxa-$PA" "OPEN-SANDBOX-INGRESS: sbxb-$PB" \
  "X-Custom: Value  With  Spaces" "x-lower: v" "X-Dup: 1" "X-Dup: 2" "Cookie: a=b; c=d" \
  "Authorization: Bearer abc" "Connection: keep-alive, X-Hop" "X-Hop: secret" "Keep-Alive: timeout=5" \
  "Proxy-Connection: keep-alive" "TE: trailers" "Accept: */*" "" >"$TMP/exact.req"
RAW=$("$PY" "$BK" raw "$GWH" 1 <"$TMP/exact.req")
R_BODY=$(sed -n '/^-- body$/,$p' <<<"$RAW" | tail -n +2)
check_eq "header mode: request line byte for byte (%2F, .., %41, empty and bad escapes)" \
  "GET /p%2Fq/../r?a=b&c=%41&&d=%zz HTTP/1.1" "$(e_line)"
got=$(e_head | tail -n +2 | grep -viE '^(connection|x-forwarded-(for|proto|host)):')
want=$(printf '%s\n' "Host: 127.0.0.1:$PA" "X-Custom: Value  With  Spaces" "x-lower: v" "X-Dup: 1" "X-Dup: 2" \
  "Cookie: a=b; c=d" "Authorization: Bearer abc" "Accept: */*")
check_eq "backend headers: end-to-end ones in order and case, routing and hop-by-hop gone, nothing added" \
  "$(sort <<<"$want")" "$(sort <<<"$got")"
check_eq "... and in the client's order" "$(grep -v '^Host:' <<<"$want")" "$(grep -v '^Host:' <<<"$got")"
check_eq "... X-Forwarded-For: the client" 127.0.0.1 "$(e_hdr X-Forwarded-For)"
check_eq "... X-Forwarded-Proto: http" http "$(e_hdr X-Forwarded-Proto)"
check_eq "... X-Forwarded-Host: the client's Host" front.example.com "$(e_hdr X-Forwarded-Host)"
conn=$(e_hdr Connection)
if [[ "${conn,,}" == *x-hop* ]]; then not_ok "backend Connection header is the proxy's own"; diag "got: $conn"; else ok "backend Connection header is the proxy's own (${conn:-none})"; fi

hreq "$GWH" /post -X POST -H "$(to "sbxa-$PA")" -H 'Content-Type: application/x-test' --data-binary $'line1\nline2\x01'
check_eq "Content-Length body: forwarded whole" "200 POST /post HTTP/1.1" "$R_STATUS $(e_line)"
check_eq "... body bytes" $'line1\nline2\x01' "$(e_body)"
check_eq "... Content-Length: 12 at the backend" 12 "$(e_hdr Content-Length)"
check_eq "... Content-Type kept" application/x-test "$(e_hdr Content-Type)"
printf 'chunked body %.0s' {1..100} >"$TMP/chunked.txt"
hreq "$GWH" /chunked -X POST -H "$(to "sbxa-$PA")" -H 'Transfer-Encoding: chunked' --data-binary @"$TMP/chunked.txt"
check_eq "chunked request body forwarded (1300 bytes)" "200 1300" "$R_STATUS $(sed -n 's/^body-len: //p' <<<"$R_BODY")"
check_eq "... body bytes" "$(cat "$TMP/chunked.txt")" "$(e_body)"
hreq "$GWH" /put -X PUT -H "$(to "sbxa-$PA")" --data-binary ''
check_eq "an empty PUT body" "200 PUT /put HTTP/1.1 0" "$R_STATUS $(e_line) $(sed -n 's/^body-len: //p' <<<"$R_BODY")"
hreq "$GWH" /h -I -H "$(to "sbxa-$PA")"
check_eq "HEAD answered without a body" "200" "$R_STATUS"

# ---- X-Forwarded-* ---------------------------------------------------------------------

spoof=(-H 'X-Forwarded-For: 1.2.3.4' -H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: evil.example')
hreq "$GWH" /xf -H "$(to "sbxa-$PA")" "${spoof[@]}"
check_eq "untrusted client: X-Forwarded-For replaced by the client IP" 127.0.0.1 "$(e_hdr X-Forwarded-For)"
check_eq "untrusted client: X-Forwarded-Proto is http" http "$(e_hdr X-Forwarded-Proto)"
check_eq "untrusted client: X-Forwarded-Host is the request's Host" "127.0.0.1:$GWH" "$(e_hdr X-Forwarded-Host)"
hreq "$GWU" "/sbxa/$PA/xf" "${spoof[@]}"
check_eq "trusted proxy: X-Forwarded-For appended" "1.2.3.4, 127.0.0.1" "$(e_hdr X-Forwarded-For)"
check_eq "trusted proxy: X-Forwarded-Proto kept" https "$(e_hdr X-Forwarded-Proto)"
check_eq "trusted proxy: X-Forwarded-Host kept" evil.example "$(e_hdr X-Forwarded-Host)"
hreq "$GWU" "/sbxa/$PA/xf" -H 'X-Forwarded-For: 1.1.1.1' -H 'X-Forwarded-For: 2.2.2.2, 3.3.3.3'
check_eq "trusted proxy: two X-Forwarded-For lines are both kept, then the client" \
  "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1" "$(e_hdr X-Forwarded-For | paste -sd, - | sed 's/,\([^ ]\)/, \1/g')"
hreq "$GWU" "/sbxa/$PA/xf"
check_eq "trusted proxy without X-Forwarded-For: the client" 127.0.0.1 "$(e_hdr X-Forwarded-For)"
check_eq "... X-Forwarded-Host: the Host" "127.0.0.1:$GWU" "$(e_hdr X-Forwarded-Host)"
hreq "$GWH" /xf -H "$(to "sbxa-$PA")" -H 'X-Forwarded-For: 1.1.1.1' -H 'X-Forwarded-For: 2.2.2.2'
check_eq "untrusted client with two X-Forwarded-For lines: one, the client" 127.0.0.1 "$(e_hdr X-Forwarded-For | paste -sd' ' -)"

# ---- errors ---------------------------------------------------------------------------------

hreq "$GWH" /e -H 'Host: localhost'
check_err "header mode, no route header, Host localhost" 400
hreq "$GWH" /e
check_err "header mode, no route header, Host 127.0.0.1:port" 400
hreq "$GWH" /e -H "$(to nodash)"
check_err "route without a port (nodash)" 400
hreq "$GWH" /e -H "$(to sbxa-0)"
check_err "port 0" 400
hreq "$GWH" /e -H "$(to sbxa-65536)"
check_err "port 65536" 400
hreq "$GWH" /e -H "$(to sbxa-80a)"
check_err "port 80a" 400
hreq "$GWH" /e -H "$(to "nosuch-$PA")"
check_err "unknown sandbox" 404
check_contains "... the body names the sandbox" nosuch "$R_BODY"
hreq "$GWH" /e -H "$(to "notready-$PA")"
check_err "sandbox not ready" 503
hreq "$GWH" /e -H "$(to "locked-$PA")"
check_err "sandbox with a token, no credential" 401
hreq "$GWH" /e -H "$(to "locked-$PA")" -H 'OpenSandbox-Secure-Access: tok-12'
check_err "a wrong OpenSandbox-Secure-Access (prefix of the token)" 401
hreq "$GWH" /e -H "$(to "locked-$PA")" -H 'OpenSandbox-Secure-Access: tok-1234'
check_err "a wrong OpenSandbox-Secure-Access (longer)" 401
hreq "$GWH" /ok -H "$(to "locked-$PA")" -H 'OpenSandbox-Secure-Access: tok-123'
check_eq "the right OpenSandbox-Secure-Access: 200 from A" "200 A" "$R_STATUS $(e_name)"
check_eq "... and the token header is not forwarded" "" "$(e_hdr OpenSandbox-Secure-Access)"
hreq "$GWH" /e -H "$(to "sbxa-$DEAD")"
check_err "backend port closed" 502
t0=$(now_ms)
hreq "$GWH" '/__slow?ms=4500' -H "$(to "sbxa-$PA")"
el=$(($(now_ms) - t0))
check_err "backend answers after the 3 s first-byte timeout" 504
check "... the 504 came after ~3 s, not the backend's 4.5 s (${el} ms)" test "$el" -ge 2500 -a "$el" -lt 4400
head -c 100000 /dev/zero | tr '\0' a | sed 's/^/X-Huge: /' >"$TMP/huge.hdr"
hreq "$GWH" /e -H "$(to "sbxa-$PA")" -H @"$TMP/huge.hdr"
check_err "a 100 KB header" 431
hreq "$GWU" /e -H @"$TMP/huge.hdr"
check_err "uri mode: a 100 KB header" 431
hreq "$GWH" /after -H "$(to "sbxa-$PA")"
check_eq "the gateway answers after the errors" "200 A" "$R_STATUS $(e_name)"

hreq "$GWU" /
check_err "uri mode: /" 400
hreq "$GWU" /sbxa
check_err "uri mode: /sbxa (no port)" 400
hreq "$GWU" /sbxa/http/x
check_err "uri mode: /sbxa/http/x" 400
hreq "$GWU" /sbxa/70000/x
check_err "uri mode: /sbxa/70000/x" 400
hreq "$GWU" "/nosuch/$PA/x"
check_err "uri mode: unknown sandbox" 404
hreq "$GWU" "/notready/$PA/x"
check_err "uri mode: not ready" 503
hreq "$GWU" "/locked/$PA/x"
check_err "uri mode: token required" 401
hreq "$GWU" "/locked/$PA/x" -H 'OpenSandbox-Secure-Access: tok-123'
check_eq "uri mode: the right token: 200 /x" "200 GET /x HTTP/1.1" "$R_STATUS $(e_line)"
hreq "$GWU" "/sbxa/$DEAD/x"
check_err "uri mode: backend port closed" 502

hreq "$GWH" '/__status?code=404' -H "$(to "sbxa-$PA")"
check_eq "a backend's own 404 is relayed as is" "404 status 404 yes" "$R_STATUS $R_BODY $(resp_hdr X-Status-Test)"
hreq "$GWH" '/__status?code=502' -H "$(to "sbxa-$PA")"
check_eq "a backend's own 502 is relayed as is" "502 status 502" "$R_STATUS $R_BODY"

# ---- signed routes (OSEP-0011) ------------------------------------------------------------

check_eq "the test's signer gives the OSEP-0011 test vector" 0ff8cd39a \
  "$("$PY" "$BK" sig my-test-secret a sbx-001 8080 x2qxvk)"
b36() { "$PY" -c 'import sys,string
n=int(sys.argv[1]); d=string.digits+string.ascii_lowercase; s=""
while n: s=d[n%36]+s; n//=36
print(s)' "$1"; }
FUT=$(b36 $(($(date +%s) + 3600)))
PAST=$(b36 $(($(date +%s) - 60)))
SIG=$("$PY" "$BK" sig my-test-secret a locked "$PA" "$FUT")
SIGP=$("$PY" "$BK" sig my-test-secret a locked "$PA" "$PAST")
hreq "$GWH" /signed -H "$(to "locked-$PA-$FUT-$SIG")"
check_eq "a signed route (header) opens the locked sandbox" "200 A" "$R_STATUS $(e_name)"
hreq "$GWH" /signed -H "Host: locked-$PA-$FUT-$SIG.example.com"
check_eq "a signed route (Host) opens the locked sandbox" "200 A" "$R_STATUS $(e_name)"
hreq "$GWH" /e -H "$(to "locked-$PA-$PAST-$SIGP")"
check_err "an expired signed route" 401
# The signature with its 8th hex digit changed (to 0, or to 1 when it is 0: a
# fixed digit would be the right one once in 16 runs).
BAD=0; [ "${SIG:7:1}" = 0 ] && BAD=1
hreq "$GWH" /e -H "$(to "locked-$PA-$FUT-${SIG:0:7}${BAD}a")"
check_err "a wrong signature" 401
hreq "$GWH" /e -H "$(to "locked-$PA-$FUT-${SIG:0:8}z")"
check_err "an unknown key id" 401
hreq "$GWU" "/locked/$PA/$FUT/$SIG/rest?x=1"
check_eq "uri mode: a signed route -> /rest?x=1" "200 GET /rest?x=1 HTTP/1.1" "$R_STATUS $(e_line)"
hreq "$GWU" "/locked/$PA/$PAST/$SIGP/rest"
check_err "uri mode: an expired signed route" 401

# ---- WebSocket and Upgrade ------------------------------------------------------------------

tun0=$(metric "$ADH" sandgate_ingress_tunnels_total)
WS=$("$PY" "$BK" ws-echo "ws://127.0.0.1:$GWH/chat?room=1" "OpenSandbox-Ingress-To:sbxa-$PW")
check_contains "WebSocket via header mode: text echo" "text ok" "$WS"
check_contains "WebSocket: binary frame echo" "binary ok" "$WS"
check_contains "WebSocket: 1 MiB binary message echo" "big ok" "$WS"
info=$(sed -n 's/^info //p' <<<"$WS")
check_eq "WebSocket: the backend sees path and query" "/chat?room=1" "$(jq -r .path <<<"$info" 2>/dev/null)"
check_eq "WebSocket: the routing header is not forwarded" null "$(jq -r '.headers["opensandbox-ingress-to"]' <<<"$info" 2>/dev/null)"
check_eq "WebSocket: X-Forwarded-For added" 127.0.0.1 "$(jq -r '.headers["x-forwarded-for"]' <<<"$info" 2>/dev/null)"
WS=$("$PY" "$BK" ws-echo "ws://127.0.0.1:$GWU/sbxa/$PW/chat")
check_contains "WebSocket via uri mode: text echo" "text ok" "$WS"
check_contains "WebSocket via uri mode: 1 MiB message" "big ok" "$WS"
info=$(sed -n 's/^info //p' <<<"$WS")
check_eq "WebSocket via uri mode: the backend sees /chat" /chat "$(jq -r .path <<<"$info" 2>/dev/null)"
check_eq "WebSocket via uri mode: X-Forwarded-Prefix" "/sbxa/$PW" "$(jq -r '.headers["x-forwarded-prefix"]' <<<"$info" 2>/dev/null)"
check "tunnels are counted" test "$(metric "$ADH" sandgate_ingress_tunnels_total)" -ge $((tun0 + 1))
check_eq "any Upgrade (foo/1): 101 then a byte tunnel both ways" \
  "HTTP/1.1 101 Switching Protocols | HELLO TUNNEL | binary ok" "$("$PY" "$BK" tunnel "$GWH" "sbxa-$PA")"
hreq "$GWH" '/__status?code=426' -H "$(to "sbxa-$PA")" -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
  -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='
check_eq "an Upgrade answered without 101 is relayed as is" "426 status 426" "$R_STATUS $R_BODY"
hreq "$GWH" /after-ws -H "$(to "sbxa-$PB")"
check_eq "plain requests still work after the tunnels" "200 B" "$R_STATUS $(e_name)"

# ---- SSE --------------------------------------------------------------------------------------

# sse_check WHAT OUTPUT: events one,two,three, the first well before the second.
sse_check() {
  local what=$1 out=$2
  local t1 t2
  t1=$(sed -n 's/.* times \([0-9.]*\),\([0-9.]*\),.*/\1/p' <<<"$out")
  t2=$(sed -n 's/.* times \([0-9.]*\),\([0-9.]*\),.*/\2/p' <<<"$out")
  if [[ "$out" == "status 200 ctype text/event-stream events one,two,three times "* ]] &&
    "$PY" -c "import sys; sys.exit(not ($t1 < 0.6 and $t2 - $t1 > 0.6))" 2>/dev/null; then
    ok "$what ($out)"
  else
    not_ok "$what: expected events one,two,three, the first < 0.6 s and > 0.6 s before the second"
    diag "got: $out"
  fi
}
sse_check "SSE (chunked) via header mode: events arrive one by one" \
  "$("$PY" "$BK" sse "http://127.0.0.1:$GWH/__sse" "OpenSandbox-Ingress-To:sbxa-$PA")"
sse_check "SSE (close-delimited) via header mode: events arrive one by one" \
  "$("$PY" "$BK" sse "http://127.0.0.1:$GWH/__sse?close=1" "OpenSandbox-Ingress-To:sbxa-$PB")"
sse_check "SSE (chunked) via uri mode: events arrive one by one" \
  "$("$PY" "$BK" sse "http://127.0.0.1:$GWU/sbxa/$PA/__sse")"

# ---- 100 MiB both ways, bounded memory ------------------------------------------------------

head -c "$BIG" /dev/urandom >"$TMP/big.bin"
BIGSHA=$(sha256sum "$TMP/big.bin" | awk '{print $1}')
PATSHA=$("$PY" "$BK" pattern-sha "$BIG")
hwm() { awk '/^VmHWM/{print int($2/1024)}' "/proc/$1/status"; }
HWM0=$(hwm "$GWH_PID")
out=$(curl -sS -m 60 -T "$TMP/big.bin" -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWH/__upload?delay=1000" 2>&1)
check_eq "100 MiB upload (Content-Length, backend reads after 1 s) arrives intact" "len $BIG sha256 $BIGSHA" "$out"
out=$(curl -sS -m 60 -T - -H "$(to "sbxa-$PB")" "http://127.0.0.1:$GWH/__upload" <"$TMP/big.bin" 2>&1)
check_eq "100 MiB upload (chunked) arrives intact" "len $BIG sha256 $BIGSHA" "$out"
out=$(curl -sS -m 60 -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWH/__download?n=$BIG" 2>&1 | sha256sum | awk '{print $1}')
check_eq "100 MiB download (Content-Length) arrives intact" "$PATSHA" "$out"
out=$("$PY" "$BK" slowread "$GWH" "sbxa-$PA" "$BIG" 2 2>&1)
check_eq "100 MiB download to a client that reads only after 2 s arrives intact" "len $BIG sha256 $PATSHA" "$out"
out=$(curl -sS -m 60 "http://127.0.0.1:$GWU/sbxa/$PB/__download?n=$BIG&chunked=1" 2>&1 | sha256sum | awk '{print $1}')
check_eq "100 MiB download (chunked) via uri mode arrives intact" "$PATSHA" "$out"
HWM=$(hwm "$GWH_PID")
if [ "$ASAN_BUILD" == 1 ]; then
  echo "# skipped: header gateway peak RSS stays under 64 MiB after 400 MiB through it: not measured on the sanitizer build (its allocator keeps freed memory in quarantine)"
else
  check "header gateway peak RSS stays under 64 MiB after 400 MiB through it (VmHWM $HWM0 -> $HWM MiB)" test "$HWM" -lt 64
fi
HWMU=$(hwm "$GWU_PID")
if [ "$ASAN_BUILD" == 1 ]; then
  echo "# skipped: uri gateway peak RSS stays under 64 MiB: not measured on the sanitizer build (its allocator keeps freed memory in quarantine)"
else
  check "uri gateway peak RSS stays under 64 MiB (VmHWM $HWMU MiB)" test "$HWMU" -lt 64
fi
rm -f "$TMP/big.bin"

# ---- slowloris --------------------------------------------------------------------------------

bg "$PY" "$BK" slowloris "$GWH" "sbxa-$PA" >"$TMP/slowloris.out"
SL_PID=$BG_PID
sleep 0.5
hreq "$GWH" /during -H "$(to "sbxa-$PA")"
check_eq "other clients are served while a slowloris client trickles" "200 A" "$R_STATUS $(e_name)"
wait_exit "$SL_PID" 20
SL=$(cat "$TMP/slowloris.out")
secs=$(awk '{print int($2)}' <<<"$SL")
check "a header byte per second is cut off after the 2 s header timeout ($SL)" test "${secs:-99}" -le 4
if [[ "$SL" == *"response -" || "$SL" == *"response HTTP/1.1 408"* ]]; then
  ok "... with a 408 or a plain close"
else
  not_ok "... with a 408 or a plain close"
  diag "$SL"
fi

# ---- pipelining -----------------------------------------------------------------------------------

printf '%s\r\n' "GET /__slow?ms=500 HTTP/1.1" "Host: x" "$(to "sbxa-$PA")" "" \
  "POST /second HTTP/1.1" "Host: x" "$(to "sbxa-$PB")" "Content-Length: 4" "" >"$TMP/pipe.req"
printf 'abcd' >>"$TMP/pipe.req"
printf '%s\r\n' "GET /status.ok HTTP/1.1" "Host: x" "" "GET /third HTTP/1.1" "Host: x" "$(to "sbxa-$PA")" "" >>"$TMP/pipe.req"
PIPE=$("$PY" "$BK" raw "$GWH" 4 <"$TMP/pipe.req")
order=$(awk '/^== /{s=$2} /^slow done$/{print s" slow"} /^name: /{n=$2} /^POST \/second/{print s" "n" second"} /^GET \/third/{print s" "n" third"} /^OK$/{print s" status"}' <<<"$PIPE" | paste -sd, -)
check_eq "four pipelined requests in one write (slow A, POST B, /status.ok, A) answered in order" \
  "200 slow,200 B second,200 status,200 A third" "$order"
check_contains "... the pipelined POST body reached B" "abcd" "$PIPE"

# ---- keep-alive ---------------------------------------------------------------------------------

new0=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="new"\}')
reu0=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="reused"\}')
u="http://127.0.0.1:$GWH/ka"
out=$(curl -sS -m 10 -H "$(to "sbxa-$PB")" -w '\nconnects %{num_connects}\n' "$u" "$u" "$u" "$u" "$u" 2>&1)
check_eq "client keep-alive: five requests on one client connection" "1,0,0,0,0" \
  "$(sed -n 's/^connects //p' <<<"$out" | paste -sd, -)"
check_eq "backend keep-alive: the five reached B on one backend connection" 1 \
  "$(sed -n 's/^conn: //p' <<<"$out" | sort -u | wc -l)"
new1=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="new"\}')
reu1=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="reused"\}')
check "metrics: at least 4 of the 5 on a reused backend connection (reused $reu0 -> $reu1, new $new0 -> $new1)" \
  test $((reu1 - reu0)) -ge 4 -a $((new1 - new0)) -le 1
# Separate client connections share the pools too: one per SO_REUSEPORT
# worker at most (the kernel spreads the clients over the workers).
WORKERS=$(grep -o '"workers":[0-9]*' "$TMP/gw-header.log" | head -n1 | cut -d: -f2)
WORKERS=${WORKERS:-1}
new0=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="new"\}')
conns=$(for i in 1 2 3 4 5 6 7 8; do
  curl -sS -m 5 -H "$(to "sbxa-$PB")" "http://127.0.0.1:$GWH/ka2" | sed -n 's/^conn: //p'
done | sort -u | wc -l)
new1=$(metric "$ADH" 'sandgate_ingress_upstream_connections_total\{kind="new"\}')
check "eight client connections in a row use at most one backend connection per worker ($conns backend connections, $((new1 - new0)) new, $WORKERS workers)" \
  test "$conns" -le "$WORKERS" -a $((new1 - new0)) -le "$WORKERS"

# ---- Expect: 100-continue ------------------------------------------------------------------------

check_eq "Expect: 100-continue: interim 100, then the body goes through" "interim 100 final 200 body ok" \
  "$("$PY" "$BK" expect "$GWH" "sbxa-$PA")"
out=$(curl -sS -m 10 -H "$(to "sbxa-$PA")" -H 'Expect: 100-continue' --expect100-timeout 5 \
  --data-binary @"$TMP/chunked.txt" -w '\n%{time_total}' "http://127.0.0.1:$GWH/expect" 2>&1)
check_contains "curl with Expect: 100-continue gets its body through" "body-len: 1300" "$out"
check "... without waiting out its 5 s expect timeout ($(tail -n1 <<<"$out") s)" \
  "$PY" -c "import sys; sys.exit(not float('$(tail -n1 <<<"$out")') < 2)"

# ---- a backend failing mid-stream ------------------------------------------------------------------

ab0=$(metric "$ADH" sandgate_ingress_aborted_total)
rc=0
curl -sS -m 10 -o "$TMP/mid.out" -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWH/__midfail?mode=cl" 2>/dev/null || rc=$?
n=$(wc -c <"$TMP/mid.out")
check "backend dies mid Content-Length body: the client sees an error, not a clean end (curl rc $rc, $n bytes)" \
  test "$rc" -ne 0 -a "$n" -ge 1000 -a "$n" -lt 1000000
rc=0
curl -sS -m 10 -o "$TMP/mid.out" -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWH/__midfail?mode=chunked" 2>/dev/null || rc=$?
check "backend dies mid chunked body: the client sees an error, not a clean end (curl rc $rc)" test "$rc" -ne 0
check "aborted responses are counted" test "$(metric "$ADH" sandgate_ingress_aborted_total)" -ge $((ab0 + 2))

# ---- reload under load -------------------------------------------------------------------------------

STEPS=()
step() { STEPS+=("$(awk -v a="$(date +%s.%N)" -v b="$LOAD_T0" 'BEGIN{printf "%.3f", a - b}') s: $1"); }
ok0=$(metric "$ADH" 'sandgate_ingress_reloads_total\{result="ok"\}')
fail0=$(metric "$ADH" 'sandgate_ingress_reloads_total\{result="failed"\}')
bg "$PY" "$BK" ws-hold "ws://127.0.0.1:$GWH/hold" 6 "$TMP/wshold" "OpenSandbox-Ingress-To:sbxa-$PW"
WSH_PID=$BG_PID
wait_until 5 test -f "$TMP/wshold.open"
LOAD_T0=$(date +%s.%N)
bg "$PY" "$BK" load "$GWH" /load 5 "$TMP/load.out" "OpenSandbox-Ingress-To:sbxa-$PA"
LOAD_PID=$BG_PID
bg "$PY" "$BK" load "$GWU" "/sbxa/$PB/load" 5 "$TMP/loadu.out"
LOADU_PID=$BG_PID
sleep 0.5
step "routes file replaced (mv), newsbx added"
write_routes "${BASE_ROUTES%\}}, \"newsbx\":\"127.0.0.1\"}"
sleep 0.7
hreq "$GWH" /new -H "$(to "newsbx-$PB")"
check_eq "a sandbox added to the routes file routes within 0.7 s" "200 B" "$R_STATUS $(e_name)"
step SIGHUP
kill -HUP "$GWH_PID"
sleep 0.5
step "POST /reload"
out=$(curl -sS -m 5 -X POST -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADH/reload" 2>&1)
check_eq "POST /reload on the admin port: 200" 200 "$out"
sleep 0.5
step "broken routes file (mv)"
printf '{"sbxa": not json' >"$ROUTES.tmp" && mv -f "$ROUTES.tmp" "$ROUTES"
sleep 0.7
hreq "$GWH" /new -H "$(to "newsbx-$PB")"
check_eq "a broken routes file is refused: the previous routes keep working" "200 B" "$R_STATUS $(e_name)"
step "fixed routes file written in place"
printf '%s\n' "$BASE_ROUTES" >"$ROUTES" # in place this time
sleep 0.7
hreq "$GWH" /new -H "$(to "newsbx-$PB")"
check_err "the fixed file (written in place) is loaded: newsbx is gone" 404
wait_exit "$LOAD_PID" 15
wait_exit "$LOADU_PID" 15
wait_exit "$WSH_PID" 15
LOAD=$(cat "$TMP/load.out" 2>/dev/null)
check "header-mode requests in a loop across 5 reloads: zero failures ($LOAD)" \
  grep -qE '^total [0-9]{2,} fail 0 ' "$TMP/load.out"
LOADU=$(cat "$TMP/loadu.out" 2>/dev/null)
check "uri-mode requests in a loop meanwhile (same routes file): zero failures ($LOADU)" \
  grep -qE '^total [0-9]{2,} fail 0 ' "$TMP/loadu.out"
if grep -q '^failures' "$TMP/load.out" "$TMP/loadu.out"; then
  diag "header: $(sed -n 2p "$TMP/load.out")" "uri: $(sed -n 2p "$TMP/loadu.out")" "steps after the start of the load:"
  printf '%s\n' "${STEPS[@]}" | diag
fi
check_contains "a WebSocket opened before the reloads stays open and echoes across them" "ok " "$(cat "$TMP/wshold" 2>/dev/null)"
diag "ws-hold: $(cat "$TMP/wshold" 2>/dev/null)"
ok1=$(metric "$ADH" 'sandgate_ingress_reloads_total\{result="ok"\}')
fail1=$(metric "$ADH" 'sandgate_ingress_reloads_total\{result="failed"\}')
check "reloads counted: ok $ok0 -> $ok1 (>= 4: file, SIGHUP, POST, fixed file)" test "$ok1" -ge $((ok0 + 4))
check "failed reload counted: $fail0 -> $fail1" test "$fail1" -ge $((fail0 + 1))
check "ingress.reload_failed logged with the error" grep -q '"event":"ingress.reload_failed"' "$TMP/gw-header.log"

# A file truncated in place is empty for a moment: that is no routes
# table, and must not replace the running one.
: >"$ROUTES.tmp" && mv -f "$ROUTES.tmp" "$ROUTES"
sleep 0.7
hreq "$GWH" /empty -H "$(to "sbxa-$PA")"
check_eq "an empty (0-byte) routes file is refused: sandboxes keep routing" "200 A" "$R_STATUS $(e_name)"
[ "$R_STATUS" == 200 ] || diag "$R_BODY"
write_routes "${BASE_ROUTES/\"ready\":false/\"ready\":true}"
sleep 0.7
hreq "$GWH" /ready -H "$(to "notready-$PA")"
check_eq "a sandbox flipped to ready in the routes file answers" "200 A" "$R_STATUS $(e_name)"
write_routes "$BASE_ROUTES"

# ---- metrics -------------------------------------------------------------------------------------

M=$(metrics "$ADH")
check "requests_total counts requests" test "$(grep -E '^sandgate_ingress_requests_total ' <<<"$M" | awk '{print $2}')" -ge 100
check_contains "responses by class" 'sandgate_ingress_responses_total{class="4xx"}' "$M"
check "5xx responses counted" test "$(grep -F 'sandgate_ingress_responses_total{class="5xx"}' <<<"$M" | awk '{print $2}')" -ge 3
clients_zero() { [ "$(metric "$ADH" sandgate_ingress_clients)" == 0 ]; }
check "the open clients gauge returns to 0 once every client is gone ($(metric "$ADH" sandgate_ingress_clients) now)" \
  wait_until 3 clients_zero

# ---- graceful drain ---------------------------------------------------------------------------------

# A custom script (a copy of the shipped header.lua): a broken version is
# refused and the running one keeps routing; then the drain.
cp "$E2E_DIR/../../policies/ingress/header.lua" "$TMP/custom.lua"
gw_start drain "$GWD" "$ADD" --script "$TMP/custom.lua" || { not_ok "drain gateway started"; e2e_finish; }
GWD_PID=$GW_PID
hreq "$GWD" /custom -H "$(to "sbxa-$PA")"
check_eq "--script FILE routes" "200 A" "$R_STATUS $(e_name)"
cp "$TMP/custom.lua" "$TMP/custom.good"
printf 'return {route = function(\n' >"$TMP/custom.lua"
wait_until 3 grep -q '"event":"ingress.reload_failed"' "$TMP/gw-drain.log"
check "a broken script is refused with its error (ingress.reload_failed)" \
  grep -q '"event":"ingress.reload_failed".*custom.lua' "$TMP/gw-drain.log"
hreq "$GWD" /custom -H "$(to "sbxa-$PB")"
check_eq "... and the previous script keeps routing" "200 B" "$R_STATUS $(e_name)"
printf -- '-- the same, touched\n' | cat - "$TMP/custom.good" >"$TMP/custom.lua"
wait_until 3 grep -q '"event":"ingress.reloaded".*file-change' "$TMP/gw-drain.log"
check "the fixed script is loaded on change (ingress.reloaded)" \
  grep -q '"event":"ingress.reloaded".*file-change' "$TMP/gw-drain.log"
hreq "$GWD" /custom -H "$(to "sbxa-$PA")"
check_eq "... and routes" "200 A" "$R_STATUS $(e_name)"
bg curl -sS -m 10 -w ' %{http_code}' -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWD/__slow?ms=1500" >"$TMP/drain.out" 2>&1
DR_PID=$BG_PID
sleep 0.5
kill -TERM "$GWD_PID"
sleep 0.3
rc=0
curl -sS -m 3 -o /dev/null -H "$(to "sbxa-$PA")" "http://127.0.0.1:$GWD/new" 2>/dev/null || rc=$?
check_eq "after SIGTERM new connections are refused (curl rc 7)" 7 "$rc"
wait_exit "$DR_PID" 10
check_eq "the request in flight at SIGTERM completes" "slow done 200" "$(tr -d '\n' <"$TMP/drain.out")"
wait_exit "$GWD_PID" 12
check_eq "the gateway exits 0 once drained" 0 "$WAIT_RC"
check "ingress.stopped logged" grep -q '"event":"ingress.stopped"' "$TMP/gw-drain.log"

e2e_finish
