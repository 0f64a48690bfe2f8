#!/usr/bin/env bash
# DNS over TCP and hostile input, end to end: pipelined queries on one
# connection, framing split across segments, backpressure, the idle timeout
# and the client limit; malformed packets (malformed_cases.txt) and random
# garbage never crash sandgate, and it keeps answering.
#
# usage: test_egress_tcp.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

POLICY='{"defaultAction":"deny","egress":[{"action":"allow","target":"allowed.example"},{"action":"allow","target":"big.example"},{"action":"allow","target":"*.wild.example"}]}'

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

client() { in_sb "$PY" "$DNSCLIENT" "$@"; }

# sandgate answers and is alive: WHAT
check_alive() {
  local out
  out=$(client query udp "$UP4" 53 allowed.example A 2>&1)
  if proc_running "$SG_PID" && [ "$out" == "NOERROR 1 idmatch" ]; then
    ok "$1"
  else
    not_ok "$1"
    diag "process running: $(proc_running "$SG_PID" && echo yes || echo no); query: $out"
    tail -n 5 "$SG_LOG" | diag
  fi
}

sg_start tcp --rules "$POLICY" || { not_ok "sandgate started"; e2e_finish; }

# ---- pipelining ------------------------------------------------------------

out=$(client pipeline "$UP4" 53 allowed.example denied.example a.wild.example big.example wild.example)
check_eq "5 queries pipelined on one TCP connection (allowed and denied mixed) are all answered" \
  "allowed.example NOERROR 1|denied.example NXDOMAIN 0|a.wild.example NOERROR 1|big.example NOERROR 40|wild.example NXDOMAIN 0|" \
  "$(tr '\n' '|' <<<"$out")"
out=$(client pipeline "$UP6" 53 allowed.example denied.example x.wild.example)
check_eq "3 queries pipelined over IPv6 TCP are all answered" \
  "allowed.example NOERROR 1|denied.example NXDOMAIN 0|x.wild.example NOERROR 1|" \
  "$(tr '\n' '|' <<<"$out")"
check_eq "the pipelined queries are logged with transport tcp" 8 \
  "$(log_count "$SG_LOG" event=dns.query transport=tcp)"
out=$(client split "$UP4" 53 allowed.example)
check_eq "a query written one byte at a time (length prefix split too) is answered" \
  "allowed.example NOERROR 1" "$out"
out=$(client pipeline-n "$UP4" 53 denied.example 300)
check_eq "300 pipelined denied queries are all answered" "answered 300 of 300" "$out"

# ---- malformed input -------------------------------------------------------

declare -A RC=([0]=NOERROR [1]=FORMERR [2]=SERVFAIL [3]=NXDOMAIN [4]=NOTIMP [5]=REFUSED)
while IFS='|' read -r -u 3 what transport expect hex; do
  what=$(echo "$what" | sed 's/^ *//; s/ *$//')
  [[ -z "$what" || "$what" == \#* ]] && continue
  transport=${transport// /}
  expect=${expect// /}
  hex=${hex// /}
  [ -z "$hex" ] && hex=""
  wait_s=2
  [ "$expect" == noreply ] || [ "$expect" == any ] && wait_s=1
  out=$(client raw "$transport" "$UP4" 53 "$hex" "$wait_s" 2>&1)
  case $expect in
  noreply | closed) check_eq "$what: $expect" "$expect" "$out" ;;
  any) ok "$what: sent ($out)" ;;
  *)
    reply=${out#reply }
    id_sent=${hex:0:4}
    id_got=${reply:0:4}
    flags=$((16#${reply:4:4}))
    rcode=${RC[$((flags & 15))]:-$((flags & 15))}
    if [[ "$out" == reply* ]] && [ "$id_got" == "$id_sent" ] && [ $((flags & 0x8000)) -ne 0 ] &&
      [ "$rcode" == "$expect" ]; then
      ok "$what: $expect with the same ID"
    else
      not_ok "$what: $expect with the same ID"
      diag "sent $hex" "got  $out"
    fi
    ;;
  esac
  check_alive "$what: sandgate still answers"
done 3<"$E2E_DIR/malformed_cases.txt"

crafted=$(log_count "$SG_LOG" event=dns.query 'name=allowed\046example' verdict=deny)
check "a label holding a dot reaches the policy (and the log) as allowed\\046example" [ "$crafted" -ge 2 ]

out=$(client fuzz "$UP4" 53 20240601 1500)
check_contains "1500 random packets sent over UDP" "sent 1500" "$out"
check_alive "sandgate survives the random packets and still answers"
for seed in 1 2 3; do
  client fuzz "$UP6" 53 "$seed" 300 >/dev/null
done
check_alive "sandgate survives random packets over IPv6 and still answers"
check_eq "every log line is one JSON object, whatever the packets held" 0 \
  "$("$PY" "$DNSCLIENT" json-lines "$SG_LOG")"
sg_stop
check_eq "sandgate stops with status 0 after the malformed input" 0 "$SG_RC"

# ---- a burst of pipelined queries -----------------------------------------

# sandgate keeps up to 128 queries of one connection waiting upstream at
# once: their answers must all get through (none lost, none turned into a
# SERVFAIL after the timeout). The upstream is a minimal server with a 4 MiB
# socket buffer, so that the test's side drops nothing.
ip netns exec "$NS_UP" "$PY" "$DNSCLIENT" serve "$ALT4" 5300 192.0.2.250 >"$TMP/serve.out" 2>&1 &
E2E_PIDS+=($!)
wait_until 5 grep -q ready "$TMP/serve.out"
sg_start burst --rules '{"defaultAction":"allow"}' --upstream "$ALT4:5300" --no-query-log ||
  { not_ok "sandgate started for the burst"; e2e_finish; }
rcvbuf_errors() { # NETNS: UDP receive-buffer drops in that namespace
  ip netns exec "$1" awk '/^Udp:/ { if (h) print $6; h = 1 }' /proc/net/snmp
}
for run in 1 2 3; do
  sb_drops=$(rcvbuf_errors "$NS_SB") up_drops=$(rcvbuf_errors "$NS_UP")
  out=$(client pipeline-n "$UP4" 53 burst.example 300)
  check_eq "300 pipelined allowed queries (past the in-flight limit) are all answered (run $run)" \
    "answered 300 of 300" "$out"
  if [ "$out" != "answered 300 of 300" ]; then
    diag "UDP receive-buffer drops during the run: sandbox (sandgate's upstream socket)" \
      "$((sb_drops)) -> $(rcvbuf_errors "$NS_SB"), upstream $((up_drops)) -> $(rcvbuf_errors "$NS_UP")"
  fi
done
sg_stop
check_eq "sandgate stops with status 0 after the bursts" 0 "$SG_RC"

# ---- idle timeout and client limit -----------------------------------------

SANDGATE_DNS_TCP_IDLE_TIMEOUT=1 sg_start limits --rules "$POLICY" --tcp-max-clients 2 ||
  { not_ok "sandgate started with --tcp-max-clients 2"; e2e_finish; }
out=$(client maxclients "$UP4" 53 allowed.example)
check_contains "--tcp-max-clients 2: first connection answered" "c1 NOERROR" "$out"
check_contains "--tcp-max-clients 2: second connection answered" "c2 NOERROR" "$out"
c3=$(sed -n 's/^c3 //p' <<<"$out")
if [[ "$c3" == closed* ]] && [ "${c3#closed }" -lt 1000 ]; then
  ok "--tcp-max-clients 2: a third concurrent connection is closed at once ($c3 ms)"
else
  not_ok "--tcp-max-clients 2: a third concurrent connection is closed at once"
  diag "$out"
fi
check_contains "--tcp-max-clients 2: the first connection still works" "c1-again NOERROR" "$out"
check_contains "--tcp-max-clients 2: the second connection still works" "c2-again NOERROR" "$out"
check_contains "--tcp-max-clients 2: a slot freed by a close is usable again" "c4 NOERROR" "$out"

out=$(client idle "$UP4" 53 5)
ms=${out#closed }
if [[ "$out" == closed* ]] && [ "$ms" -ge 500 ] && [ "$ms" -le 3000 ]; then
  ok "SANDGATE_DNS_TCP_IDLE_TIMEOUT=1: an idle connection is closed after about 1 s ($ms ms)"
else
  not_ok "SANDGATE_DNS_TCP_IDLE_TIMEOUT=1: an idle connection is closed after about 1 s"
  diag "$out"
fi
out=$(client idle "$UP6" 53 5)
check_contains "an idle IPv6 connection is closed too" "closed" "$out"
out=$(client keepalive "$UP4" 53 allowed.example 0.4 7)
check_eq "a connection that keeps asking (every 0.4 s for 2.4 s) is not idle" "answered 7 of 7" "$out"
check_alive "sandgate still answers over UDP"
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"

# A query still waiting upstream keeps its idle connection open: the answer
# (after the 2 s failover from a silent first upstream) still arrives.
sg_start slow-upstream --rules "$POLICY" --tcp-idle-timeout 1 --upstream "$DROP4A,$UP4" --upstream-timeout 2 ||
  { not_ok "sandgate started with a silent first upstream"; e2e_finish; }
t0=$(now_ms)
out=$(client query tcp "$UP4" 53 allowed.example A)
ms=$(($(now_ms) - t0))
check_eq "a TCP query waiting upstream longer than the idle timeout is answered ($ms ms)" "NOERROR 1 idmatch" "$out"
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"

e2e_finish
