#!/usr/bin/env bash
# sandgate portproxy, end to end on 127.0.0.1 with real backends: the path
# and query forwarded byte for byte, the added headers, the token (401 JSON,
# removed before forwarding), execd's messages (400, 502), SSE flushed per
# event and WebSocket through the one port.
#
# usage: test_portproxy.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"
BE="$E2E_DIR/ingress_backend.py"

read -r PP HTTPP WSP DEADP <<<"$("$PY" "$BE" freeports 4)"
"$PY" "$BE" http "$HTTPP" pp >/dev/null 2>&1 &
E2E_PIDS+=("$!")
"$PY" "$BE" ws "$WSP" >/dev/null 2>&1 &
E2E_PIDS+=("$!")
"$BIN" portproxy --port "$PP" --listen 127.0.0.1 --token s3cret 2>"$TMP/pp.log" &
E2E_PIDS+=("$!")
E2E_LOGS+=("$TMP/pp.log")
wait_until 5 curl -s -o /dev/null "http://127.0.0.1:$HTTPP/" || not_ok "backend up"
wait_until 5 curl -s -o /dev/null "http://127.0.0.1:$PP/" || not_ok "portproxy up"
TOK=(-H "X-EXECD-ACCESS-TOKEN: s3cret")

out=$(curl -s "${TOK[@]}" "http://127.0.0.1:$PP/proxy/$HTTPP/a/b%2Fc?x=1&y=%20")
check_contains "the path and query reach the backend byte for byte" \
  "GET /a/b%2Fc?x=1&y=%20 HTTP/1.1" "$out"
check_contains "X-Forwarded-Prefix: /proxy/<port> is added" \
  "X-Forwarded-Prefix: /proxy/$HTTPP" "$out"
check_contains "X-Forwarded-Proto is added" "X-Forwarded-Proto: http" "$out"
check_not_contains "the token is removed before forwarding" "s3cret" "$out"
out=$(curl -s "${TOK[@]}" "http://127.0.0.1:$PP/proxy/$HTTPP")
check_contains "/proxy/<port> without a rest goes to /" "GET / HTTP/1.1" "$out"

out=$(curl -s -i "http://127.0.0.1:$PP/proxy/$HTTPP/")
check_contains "no token: 401" "HTTP/1.1 401" "$out"
check_contains "... with a JSON body naming the header" \
  '{"error":"Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN"}' "$out"
check_contains "... as application/json" "Content-Type: application/json" "$out"
check_contains "a wrong token: 401 too" "HTTP/1.1 401" \
  "$(curl -s -i -H 'X-EXECD-ACCESS-TOKEN: s3cre' "http://127.0.0.1:$PP/proxy/$HTTPP/")"

out=$(curl -s -i "${TOK[@]}" "http://127.0.0.1:$PP/proxy/")
check_contains "/proxy/: 400" "HTTP/1.1 400" "$out"
check_contains "... port is required" "port is required" "$out"
out=$(curl -s "${TOK[@]}" "http://127.0.0.1:$PP/proxy/70000/x")
check_contains "a bad port: 400 naming it" 'invalid port "70000"' "$out"
out=$(curl -s -i "${TOK[@]}" "http://127.0.0.1:$PP/proxy/$DEADP/x")
check_contains "nothing listening: 502" "HTTP/1.1 502" "$out"
check_contains "... Bad Gateway" "Bad Gateway" "$out"

out=$("$PY" "$BE" sse "http://127.0.0.1:$PP/proxy/$HTTPP/__sse" "X-EXECD-ACCESS-TOKEN:s3cret")
check_contains "SSE through the port proxy: the three events" "events one,two,three" "$out"
times=$(grep -o 'times [0-9., ]*' <<<"$out" | cut -d' ' -f2-)
check "... the first arrives a second before the second (flushed per event: $times)" \
  awk -F', *' '{ exit !($2 - $1 > 0.7) }' <<<"$times"

out=$("$PY" "$BE" ws-echo "ws://127.0.0.1:$PP/proxy/$WSP/echo" "X-EXECD-ACCESS-TOKEN:s3cret")
check_contains "WebSocket through the port proxy: text" "text ok" "$out"
check_contains "... binary" "binary ok" "$out"
check_contains "... a 1 MiB message" "big ok" "$out"
check_contains "... the app sees the rest of the path" '"path": "/echo"' "$out"

e2e_finish
