#!/usr/bin/env bash
# The operator's always-lists in SANDGATE_RULES_DIR: deny.always beats the
# policy, allow.always beats the policy's denials, log_skip.always silences
# allowed queries in the log; edits take effect within a second through
# inotify, a bad line keeps the previous lists, and the lists never show in
# GET /policy nor count against the rule limit.
#
# usage: test_egress_always.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

RULES=$TMP/rules
mkdir -p "$RULES"
cat >"$RULES/deny.always" <<'EOF'
# names no policy may open
bad.wild.example

EOF
printf 'denied.example\n' >"$RULES/allow.always"
printf '# quiet names\nallowed.example\n' >"$RULES/log_skip.always"
rcode() { dig_sb "$1" A; dig_rcode "$DIG_OUT"; }
policy_get() { in_sb curl -s -m 5 http://127.0.0.1:18080/policy; }

sg_start always --rules-dir "$RULES" --max-rules 2 \
  --rules '{"defaultAction":"deny","egress":[{"action":"allow","target":"*.wild.example"}]}'
check "sandgate starts with the always-lists" proc_running "$SG_PID"

check_eq "the policy allows *.wild.example: a.wild.example resolves" NOERROR "$(rcode a.wild.example)"
check_eq "deny.always beats the policy: bad.wild.example is NXDOMAIN" NXDOMAIN "$(rcode bad.wild.example)"
check_eq "allow.always beats the default deny: denied.example resolves" NOERROR "$(rcode denied.example)"
check_eq "the log names the list and line of the decision" 1 \
  "$(log_count "$SG_LOG" event=dns.query name=bad.wild.example verdict=deny 'rule=deny.always:2 bad.wild.example')"
check_eq "allow.always decisions are logged with their line" 1 \
  "$(log_count "$SG_LOG" event=dns.query name=denied.example verdict=allow 'rule=allow.always:1 denied.example')"

# log_skip.always: allowed queries for these names are not logged.
in_sb curl -s -m 5 -X PATCH -d '[{"action":"allow","target":"allowed.example"}]' \
  http://127.0.0.1:18080/policy >/dev/null
check_eq "a PATCH up to the limit of 2 is accepted (the always-lists do not count): allowed.example resolves" NOERROR "$(rcode allowed.example)"
check_eq "log_skip.always: the allowed query for allowed.example is not logged" 0 \
  "$(log_count "$SG_LOG" event=dns.query name=allowed.example)"

# The lists are not part of the document and not counted against the limit.
body=$(policy_get)
check_contains "GET /policy shows only the document's rules" '"egress":[{"action":"allow","target":"allowed.example"},{"action":"allow","target":"*.wild.example"}]' "$body"
check_not_contains "GET /policy does not show deny.always" "bad.wild.example" "$body"

# An edit takes effect within a second (inotify, not polling).
t0=$(now_ms)
printf 'bad.wild.example\nworse.wild.example\n' >"$RULES/deny.always.new"
mv "$RULES/deny.always.new" "$RULES/deny.always"
wait_until 2 log_has "$SG_LOG" event=egress.always_updated
elapsed=$(($(now_ms) - t0))
check "an edited deny.always is picked up within a second (${elapsed} ms)" test "$elapsed" -lt 1000
check_eq "the new line applies: worse.wild.example is NXDOMAIN" NXDOMAIN "$(rcode worse.wild.example)"

# A bad line keeps the previous lists and names the file and line.
printf 'denied.example\nnot a name\n' >"$RULES/allow.always"
wait_until 2 log_has "$SG_LOG" event=egress.always_failed
check_eq "a bad line is refused with file:line" 1 \
  "$(log_count "$SG_LOG" event=egress.always_failed 'error~=allow.always:2: ')"
check_eq "the previous lists stay: worse.wild.example is still denied" NXDOMAIN "$(rcode worse.wild.example)"
check_eq "the previous lists stay: denied.example still resolves" NOERROR "$(rcode denied.example)"

# Removing a list removes its effect.
rm -f "$RULES/allow.always"
wait_until 2 test "$(log_count "$SG_LOG" event=egress.always_updated)" -ge 2
check_eq "without allow.always denied.example is denied again" NXDOMAIN "$(rcode denied.example)"
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"

# A bad line at start stops the start: running without an operator's deny
# list would fail open.
printf 'ok.example\n*bad\n' >"$RULES/deny.always"
sg_run_fg 10 --rules-dir "$RULES" --no-intercept --listen 127.0.0.1:15399 --http-addr off
check_eq "a bad deny.always line at start: exit status 1" 1 "$FG_RC"
check_contains "the message names the file and line" "deny.always:2: " "$(cat "$FG_ERR")"

e2e_finish
