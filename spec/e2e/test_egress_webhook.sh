#!/usr/bin/env bash
# The deny webhook (OPENSANDBOX_EGRESS_DENY_WEBHOOK), end to end: a small
# HTTP receiver in the upstream namespace records what it gets. A denied
# name is reported once per window (A and AAAA for one name are one event),
# with OpenSandbox's JSON; a dead receiver never slows a DNS answer.
#
# usage: test_egress_webhook.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

HOOK_LOG=$TMP/hook.jsonl
cat >"$TMP/receiver.py" <<'EOF'
import http.server, sys
log = open(sys.argv[2], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        log.write(self.path + " " + self.headers.get("Content-Type", "") + " " + body.decode() + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], 8089), H).serve_forever()
EOF
# ip execs the interpreter, so $! is the receiver itself (never start it
# through a shell function: its PID would be a subshell's).
ip netns exec "$NS_UP" "$PY" "$TMP/receiver.py" "$UP4" "$HOOK_LOG" >/dev/null 2>&1 &
E2E_PIDS+=($!)
wait_until 10 in_up "$PY" -c "import socket; socket.create_connection(('$UP4', 8089), 1)" 2>/dev/null

rcode() { dig_sb "$@"; dig_rcode "$DIG_OUT"; }
events() { grep -c "\"hostname\":\"$1\"" "$HOOK_LOG" 2>/dev/null || true; }

sg_start hook --deny-webhook "http://$UP4:8089/deny" --sandbox-id sbx-42 \
  --rules '{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.example"}]}'
check "sandgate starts with a deny webhook" proc_running "$SG_PID"

check_eq "denied.example is denied" NXDOMAIN "$(rcode denied.example A)"
rcode denied.example AAAA >/dev/null
rcode denied.example A >/dev/null
rcode DENIED.example TXT >/dev/null
wait_until 5 test "$(events denied.example)" -ge 1
sleep 0.5 # room for a (wrong) second event to arrive
check_eq "four denials of one name (A, AAAA, TXT, any case) within the window: one event" 1 "$(events denied.example)"
line=$(grep '"hostname":"denied.example"' "$HOOK_LOG" | head -n1)
check_contains "the event goes to the URL's path with application/json" "/deny application/json " "$line"
check "the body is OpenSandbox's event, field for field" "$PY" - "$line" <<'EOF'
import json, re, sys
body = json.loads(sys.argv[1].split(" ", 2)[2])
ok = (list(body) == ["hostname", "timestamp", "source", "sandboxId"]
      and body["hostname"] == "denied.example"
      and body["source"] == "opensandbox-egress"
      and body["sandboxId"] == "sbx-42"
      and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"]))
sys.exit(0 if ok else 1)
EOF
check_eq "an allowed name sends nothing" NOERROR "$(rcode allowed.example A)"
rcode x.example A >/dev/null
wait_until 5 test "$(events x.example)" -ge 1
check_eq "another denied name: its own event" 1 "$(events x.example)"
check_eq "allowed.example never reached the webhook" 0 "$(events allowed.example)"
metrics=$(in_sb curl -s -m 5 http://127.0.0.1:18080/metrics)
check_contains "/metrics counts the sent events" 'sandgate_webhook_events_total{outcome="sent"} 2' "$metrics"
check_contains "/metrics counts the de-duplicated ones" 'sandgate_webhook_events_total{outcome="deduplicated"} 3' "$metrics"
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"

# A dead receiver (nothing listens on that port): DNS answers stay fast
# while the webhook retries in the background.
sg_start deadhook --deny-webhook "http://$UP4:8099/deny" \
  --rules '{"defaultAction":"deny"}'
worst=0
for i in $(seq 1 40); do
  dig_sb "d$i.example" A
  [ "$DIG_MS" -gt "$worst" ] && worst=$DIG_MS
done
check "40 denied names with a dead receiver: the slowest answer took ${worst} ms (< 500)" test "$worst" -lt 500
check_eq "every one was answered NXDOMAIN" NXDOMAIN "$(rcode d40.example A)"

e2e_finish
