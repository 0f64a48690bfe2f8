#!/usr/bin/env bash
# Start, configuration and stop of `sandgate egress`: starts that must fail
# (config_cases.txt), where the initial policy comes from (policy_cases.txt),
# listeners and query logging, the nft table on stop (removed or kept) and at
# start (a stale one is replaced), and running without CAP_NET_ADMIN.
#
# usage: test_egress_lifecycle.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"
# Most cases here check what a stop leaves behind, so they remove the table
# on exit; the default (keep) is tested on its own below.
export SANDGATE_EGRESS_ON_EXIT=remove

ALLOW_ALLOWED='{"egress":[{"action":"allow","target":"allowed.example"}]}'

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

table() { in_sb nft list table inet sandgate 2>/dev/null; }
has_table() { in_sb nft list tables 2>/dev/null | grep -q '^table inet sandgate$'; }
no_table() { ! has_table; }

trim() { sed 's/^ *//; s/ *$//' <<<"$1"; }

# ---- starts that must fail ---------------------------------------------------

while IFS='|' read -r -u 3 want_rc want_msg words; do
  want_rc=${want_rc// /}
  [[ -z "$want_rc" || "$want_rc" == \#* ]] && continue
  want_msg=$(trim "$want_msg")
  args=()
  eval "args=($words)"
  envs=() flags=()
  for a in "${args[@]}"; do
    if [[ "$a" =~ ^[A-Z_]+= ]]; then envs+=("$a"); else flags+=("$a"); fi
  done
  sg_run_fg 5 "${envs[@]}" "${flags[@]}" --no-intercept --listen 127.0.0.1:15399
  what="start with $(trim "$words") fails with status $want_rc"
  if [ "$FG_RC" == "$want_rc" ] && grep -qF -- "$want_msg" "$FG_ERR"; then
    ok "$what, stderr names \"$want_msg\""
  else
    not_ok "$what, stderr names \"$want_msg\""
    diag "status $FG_RC, stderr:"
    head -n 5 "$FG_ERR" | diag
  fi
done 3<"$E2E_DIR/config_cases.txt"
check "the failed starts left no nft table" no_table

# A hostname is refused before anything starts, also with interception on.
sg_run_fg 5 --upstream dns.example.com --rules "$ALLOW_ALLOWED"
check_eq "hostname upstream with interception on: status 2" 2 "$FG_RC"
check "hostname upstream with interception on: no nft table" no_table

# ---- where the policy comes from ---------------------------------------------

n=0
while IFS='|' read -r -u 3 label file how rules allowed denied event; do
  label=$(trim "$label")
  [[ -z "$label" || "$label" == \#* ]] && continue
  n=$((n + 1))
  file=$(trim "$file") how=$(trim "$how") rules=$(trim "$rules")
  allowed=$(trim "$allowed") denied=$(trim "$denied") event=$(trim "$event")
  pfile=
  case $file in
  -) ;;
  missing) pfile=$TMP/no-such-policy.json ;;
  blank) pfile=$TMP/policy-$n.json && printf '  \n' >"$pfile" ;;
  *) pfile=$TMP/policy-$n.json && printf '%s\n' "$file" >"$pfile" ;;
  esac
  envs=() flags=()
  if [ "$how" == env ]; then
    [ -n "$pfile" ] && envs+=("OPENSANDBOX_EGRESS_POLICY_FILE=$pfile")
    [ "$rules" != - ] && envs+=("OPENSANDBOX_EGRESS_RULES=$rules")
  else
    [ -n "$pfile" ] && flags+=(--policy-file "$pfile")
    [ "$rules" != - ] && flags+=(--rules "$rules")
  fi
  for e in "${envs[@]}"; do export "${e?}"; done
  sg_start "policy-$n-$label" "${flags[@]}"
  started=$?
  for e in "${envs[@]}"; do unset "${e%%=*}"; done
  if [ $started != 0 ]; then
    not_ok "$label: sandgate starts"
    continue
  fi
  bad=()
  for name in ${allowed//,/ }; do
    [ "$name" == - ] && continue
    dig_sb "$name" A
    [ "$(dig_rcode "$DIG_OUT")" == NOERROR ] || bad+=("$name: $(dig_rcode "$DIG_OUT"), wanted NOERROR")
  done
  for name in ${denied//,/ }; do
    [ "$name" == - ] && continue
    dig_sb "$name" A
    [ "$(dig_rcode "$DIG_OUT")" == NXDOMAIN ] || bad+=("$name: $(dig_rcode "$DIG_OUT"), wanted NXDOMAIN")
  done
  if [ ${#bad[@]} -eq 0 ]; then
    ok "$label: allowed $allowed, denied $denied"
  else
    not_ok "$label: allowed $allowed, denied $denied"
    diag "${bad[@]}"
  fi
  check "$label: $event logged" log_has "$SG_LOG" "event=$event"
  sg_stop
  check_eq "$label: stops with status 0" 0 "$SG_RC"
done 3<"$E2E_DIR/policy_cases.txt"
check "all $n policy cases ran" [ "$n" -ge 10 ]

# A reload rebuilds the script with the document it started with: the policy
# file's, not the rules it won over.
printf '%s\n' '{"egress":[{"action":"allow","target":"a.example"}]}' >"$TMP/reload-policy.json"
sg_start policy-reload --policy-file "$TMP/reload-policy.json" \
  --rules '{"egress":[{"action":"allow","target":"b.example"}]}'
kill -HUP "$SG_PID"
wait_log "$SG_LOG" 5 event=policy.reloaded trigger=SIGHUP
check "policy file + SIGHUP: policy.reloaded" log_has "$SG_LOG" event=policy.reloaded trigger=SIGHUP
dig_sb a.example A
check_dig "policy file + SIGHUP: the file's policy still allows a.example" NOERROR 192.0.2.11
dig_sb b.example A
check_dig "policy file + SIGHUP: b.example (only in the rules) still denied" NXDOMAIN -
sg_stop

# ---- listeners and query log -------------------------------------------------

SANDGATE_LOG_QUERIES=0 sg_start no-query-log --rules "$ALLOW_ALLOWED" --listen 127.0.0.1:5399 --listen '[::1]:5399'
check_eq "--listen 127.0.0.1:5399: egress.started names it" 1 \
  "$(log_count "$SG_LOG" event=egress.started listen=127.0.0.1:5399)"
check_contains "--listen: the nft redirect goes to the listen port" "udp dport 53 redirect to :5399" "$(table)"
dig_sb allowed.example A
check_dig "--listen 5399: a query to port 53 over IPv4 reaches it" NOERROR 192.0.2.1
dig_sb @"$UP6" +tcp allowed.example A
check_dig "--listen 5399: a query to port 53 over IPv6 TCP reaches it" NOERROR 192.0.2.1
dig_sb @127.0.0.1 -p 15353 allowed.example A
check_contains "--listen replaces the default listeners (nothing on 15353)" "no servers could be reached" "$DIG_OUT"
check_eq "SANDGATE_LOG_QUERIES=0: no dns.query lines" 0 "$(log_count "$SG_LOG" event=dns.query)"
sg_stop
check_eq "stops with status 0" 0 "$SG_RC"

SANDGATE_EGRESS_LISTEN="127.0.0.1:5400, [::1]:5400" sg_start listen-env --rules "$ALLOW_ALLOWED" --no-query-log
dig_sb @::1 -p 5400 allowed.example A
check_dig "SANDGATE_EGRESS_LISTEN (comma list): [::1]:5400 answers" NOERROR 192.0.2.1
dig_sb denied.example A
check_dig "SANDGATE_EGRESS_LISTEN: interception goes to 5400" NXDOMAIN -
check_eq "--no-query-log: no dns.query lines" 0 "$(log_count "$SG_LOG" event=dns.query)"
sg_stop

# ---- the nft table on stop ---------------------------------------------------

sg_start term --rules "$ALLOW_ALLOWED" --cleanup
check "running: the table exists" has_table
sg_stop
check_eq "SIGTERM: status 0" 0 "$SG_RC"
check "SIGTERM: egress.stopping logged" log_has "$SG_LOG" event=egress.stopping msg=SIGTERM
check "SIGTERM with --cleanup: nft.removed logged" log_has "$SG_LOG" event=nft.removed
check "SIGTERM with --cleanup: the table is gone" no_table
dig_sb denied.example A
check_dig "after the stop, DNS goes straight to the upstream again" NOERROR 192.0.2.66

SANDGATE_EGRESS_ON_EXIT=remove sg_start int --rules "$ALLOW_ALLOWED"
kill -INT "$SG_PID"
wait_exit "$SG_PID" 15
check_eq "SIGINT: status 0" 0 "$WAIT_RC"
check "SIGINT with SANDGATE_EGRESS_ON_EXIT=remove: the table is gone" no_table

# The default keeps the table: the sandbox fails closed while no sidecar runs.
SANDGATE_EGRESS_ON_EXIT= sg_start keep --rules "$ALLOW_ALLOWED"
sg_stop
check_eq "default (keep): status 0" 0 "$SG_RC"
check "default (keep): nft.kept logged" log_has "$SG_LOG" event=nft.kept
kept=$(table)
check_contains "default (keep): the table and its redirect stay" "udp dport 53 redirect to :15353" "$kept"
dig_sb denied.example A
check_contains "kept table: DNS stays redirected (fails closed while nothing listens)" "no servers could be reached" "$DIG_OUT"

# A new start takes over the kept table; --on-exit remove (the flag) removes it.
sg_start after-keep --rules "$ALLOW_ALLOWED" --on-exit remove
dig_sb denied.example A
check_dig "a start over a kept table intercepts again" NXDOMAIN -
check_eq "... with one dns_intercept chain" 1 "$(table | grep -c 'chain ')"
sg_stop
check "--on-exit remove: the table is gone" no_table

sg_start keep-flag --rules "$ALLOW_ALLOWED" --on-exit keep
sg_stop
check "--on-exit keep: the table stays" has_table
in_sb nft delete table inet sandgate

# ---- stopping while busy --------------------------------------------------------

# A query waiting on a silent upstream (30 s timeout) and an idle TCP client
# do not hold up SIGTERM.
sg_start busy --rules '{"defaultAction":"allow"}' --upstream "$DROP4A" --upstream-timeout 30
ip netns exec "$NS_SB" dig +time=20 +tries=1 allowed.example A >"$TMP/busy-dig.out" 2>&1 &
dig_pid=$!
E2E_PIDS+=("$dig_pid")
ip netns exec "$NS_SB" "$PY" "$DNSCLIENT" idle "$UP4" 53 20 >"$TMP/busy-idle.out" 2>&1 &
idle_pid=$!
E2E_PIDS+=("$idle_pid")
wait_log "$SG_LOG" 5 event=dns.query name=allowed.example
sleep 0.3
t0=$(now_ms)
sg_stop
ms=$(($(now_ms) - t0))
check_eq "SIGTERM with a query in flight and a TCP client: status 0" 0 "$SG_RC"
check "... within 3 s, not after the upstream timeout ($ms ms)" [ "$ms" -lt 3000 ]
wait_until 5 proc_gone "$idle_pid"
check_contains "... the TCP client's connection is closed" "closed" "$(cat "$TMP/busy-idle.out")"
e2e_kill "$dig_pid"
check "... and the table is gone" no_table

# ---- a stale table is replaced at start ---------------------------------------

in_sb nft -f - <<'EOF'
table inet sandgate {
  chain stale_filter {
    type filter hook output priority 0; policy accept;
    udp dport 9 counter drop
  }
  chain dns_intercept {
    type nat hook output priority -100; policy accept;
    udp dport 53 redirect to :9999
    tcp dport 53 redirect to :9999
  }
}
EOF
check "precondition: a stale table with an extra chain and a wrong redirect" \
  grep -q stale_filter <<<"$(table)"
sg_start stale --rules "$ALLOW_ALLOWED"
t=$(table)
check_eq "start over a stale table: only the dns_intercept chain remains" "chain dns_intercept {" \
  "$(grep 'chain ' <<<"$t" | sed 's/^[[:space:]]*//')"
check_not_contains "start over a stale table: the stale redirect is gone" ":9999" "$t"
check_eq "start over a stale table: the table is exactly what a fresh start installs" \
  "meta mark 0x00000001 return|udp dport 53 redirect to :15353|tcp dport 53 redirect to :15353|" \
  "$(grep -E 'return|redirect' <<<"$t" | sed 's/^[[:space:]]*//' | tr '\n' '|')"
dig_sb allowed.example A
check_dig "start over a stale table: interception works" NOERROR 192.0.2.1

# A second sandgate cannot take the ports and must not touch the first's table.
sg_run_fg 10 --rules "$ALLOW_ALLOWED"
check_eq "a second sandgate on the same ports fails with status 1" 1 "$FG_RC"
check "... saying it cannot listen" grep -q "cannot listen on 127.0.0.1:15353" "$FG_ERR"
dig_sb denied.example A
check_dig "... and the first one still intercepts" NXDOMAIN -
sg_stop
check_eq "stops with status 0" 0 "$SG_RC"
check "the table is gone" no_table

# ---- without CAP_NET_ADMIN -------------------------------------------------------

# The unprivileged user can read the policy script, the resolv.conf and the
# test's files; it can bind 15353 but not change the ruleset.
SG_WRAP=(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all)
sg_run_fg 10 --listen 127.0.0.1:15353 --rules "$ALLOW_ALLOWED"
check_eq "without CAP_NET_ADMIN: status 1" 1 "$FG_RC"
check "without CAP_NET_ADMIN: the message names CAP_NET_ADMIN" grep -q CAP_NET_ADMIN "$FG_ERR"
check "without CAP_NET_ADMIN: the message names --no-intercept" grep -q -- --no-intercept "$FG_ERR"
check "without CAP_NET_ADMIN: no table" no_table

sg_start unprivileged --no-intercept --listen 127.0.0.1:15353 --rules "$ALLOW_ALLOWED"
check "without CAP_NET_ADMIN, --no-intercept: starts" proc_running "$SG_PID"
check_eq "... egress.started says intercept false" 1 \
  "$(log_count "$SG_LOG" event=egress.started intercept=False)"
uid=$(awk '/^Uid:/{print $2}' "/proc/$SG_PID/status" 2>/dev/null)
check_eq "... and runs as uid 65534" 65534 "$uid"
dig_sb @127.0.0.1 -p 15353 allowed.example A
check_dig "... answers allowed names from its resolv.conf upstream" NOERROR 192.0.2.1
dig_sb @127.0.0.1 -p 15353 denied.example A
check_dig "... and denies the rest" NXDOMAIN -
check "... and leaves no table" no_table
dig_sb denied.example A
check_dig "... and port 53 is not intercepted" NOERROR 192.0.2.66
sg_stop
check_eq "... SIGTERM: status 0" 0 "$SG_RC"
SG_WRAP=()

e2e_finish
