#!/usr/bin/env bash
# The dns+nft enforcement mode, end to end: besides the DNS redirect, table
# inet sandgate gets a filter output chain `egress` that lets the sandbox
# reach only what the policy allows: addresses learned from allowed DNS
# answers (timeout sets dyn_v4/dyn_v6, filled before the answer is
# released), the policy's IP/CIDR rules (allow_*/deny_*), nothing on port 853,
# no DoH on 443 where configured. Backends are TCP servers (tcpserver.py) on
# extra addresses of the upstream namespace, named by dnsmasq records.
#
# usage: test_egress_nft.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

TCPS=$E2E_DIR/tcpserver.py

# ---- addresses (all on the upstream side of the veth pair) ------------------

N=10.$X.0
V=fd5e:e2e:$X:
OK4=$N.21 OK6=$V:21       # ok.nft.test: allowed name (A and AAAA, TTL 0)
DEN4=$N.22                # denied.nft.test: dnsmasq answers, the policy denies
UN4=$N.23 UN6=$V:23       # never resolved, never allowed
CN4=$N.24                 # alias.nft.test (allowed) is a CNAME of cn-target.nft.test
LONG4=$N.25               # long.nft.test: TTL 1000 (clamped to dyn-max)
KEEP4=$N.26               # keep.nft.test
IPR4=$N.27                # allowed by an IP rule
PAT4=$N.28                # allowed later by a PATCH
SLOW4=$N.29               # slow.nft.test: TTL 100
C4=$N.33 C4B=$N.34 C4C=$N.35 # in the allowed CIDR $N.32/29
C6=$V:33 C6B=$V:39        # in the allowed CIDR $V:30/124 (C6B also in the DoH list $V:38/125)
TRAP4=$N.41 TRAP6=$V:41   # trap.nft.test: allowed name inside the denied CIDRs
SHORT4=$N.51              # short.nft.test: TTL 1; short3.nft.test: the same address, TTL 3
DAL4=$N.61                # dal.nft.test: allowed name, its address in deny.always
AAL4=$N.62                # in allow.always
FAR4=203.0.113.7 FAR6=2001:db8::53 # no such hosts: DNS to them must still be intercepted

RECS=(
  "--host-record=ok.nft.test,$OK4,$OK6"
  "--host-record=denied.nft.test,$DEN4"
  "--host-record=cn-target.nft.test,$CN4"
  "--cname=alias.nft.test,cn-target.nft.test"
  "--host-record=long.nft.test,$LONG4,1000"
  "--host-record=keep.nft.test,$KEEP4"
  "--host-record=slow.nft.test,$SLOW4,100"
  "--host-record=trap.nft.test,$TRAP4,$TRAP6"
  "--host-record=short.nft.test,$SHORT4,1"
  "--host-record=short3.nft.test,$SHORT4,3"
  "--host-record=dal.nft.test,$DAL4"
)

RULES_JSON='{"action":"allow","target":"ok.nft.test"},
 {"action":"allow","target":"alias.nft.test"},
 {"action":"allow","target":"long.nft.test"},
 {"action":"allow","target":"keep.nft.test"},
 {"action":"allow","target":"slow.nft.test"},
 {"action":"allow","target":"trap.nft.test"},
 {"action":"allow","target":"short.nft.test"},
 {"action":"allow","target":"short3.nft.test"},
 {"action":"allow","target":"dal.nft.test"},
 {"action":"allow","target":"big.example"},
 {"action":"allow","target":"'$IPR4'"},
 {"action":"allow","target":"'$N'.32/29"},
 {"action":"allow","target":"'$V':30/124"},
 {"action":"deny","target":"'$N'.40/29"},
 {"action":"deny","target":"'$V':40/124"}'
POLICY='{"defaultAction":"deny","egress":['$RULES_JSON']}'
POLICY_ALLOW='{"defaultAction":"allow","egress":['$RULES_JSON']}'

# ---- helpers -------------------------------------------------------------------

# conn HOST PORT [TIMEOUT]: one TCP connect from the sandbox; CONN_OUT is
# "ok hello ADDR PORT MS", "refused MS", "timeout MS" or "error ERRNO MS".
conn() { CONN_OUT=$(in_sb "$PY" "$TCPS" connect "$1" "$2" "${3:-3}" 2>&1); }
conn_ms() { awk '{print $NF}' <<<"$CONN_OUT"; }
reachable() { conn "$1" "$2" 2 && [[ "$CONN_OUT" == "ok hello $1 $2 "* ]]; }
blocked() { conn "$1" "$2" 2; [[ "$CONN_OUT" != ok* ]]; }

# check_reach WHAT HOST PORT
check_reach() {
  if reachable "$2" "$3"; then ok "$1"; else not_ok "$1"; diag "connect $2 $3: $CONN_OUT"; fi
}
# check_reject WHAT HOST PORT: refused at once (reject), not a timeout.
check_reject() {
  conn "$2" "$3" 3
  local ms
  ms=$(conn_ms)
  if [[ "$CONN_OUT" != ok* && "$CONN_OUT" != timeout* ]] && [ "$ms" -lt 1000 ]; then
    ok "$1 ($CONN_OUT)"
  else
    not_ok "$1"
    diag "connect $2 $3: $CONN_OUT (wanted refused/unreachable within 1000 ms)"
  fi
}
# check_drop WHAT HOST PORT: silently dropped: the connect times out.
check_drop() {
  conn "$2" "$3" 1.5
  if [[ "$CONN_OUT" == timeout* ]]; then
    ok "$1 ($CONN_OUT)"
  else
    not_ok "$1"
    diag "connect $2 $3: $CONN_OUT (wanted a timeout)"
  fi
}

table() { in_sb nft list table inet sandgate 2>&1; }
has_table() { in_sb nft list tables 2>/dev/null | grep -q '^table inet sandgate$'; }
no_table() { ! has_table; }
chain_egress() { in_sb nft list chain inet sandgate egress 2>&1; }
nftset() { in_sb nft list set inet sandgate "$1" 2>&1; }
# The elements of a set, one token per word.
set_words() { nftset "$1" | sed -n '/elements = {/,/}/p' | sed 's/elements = //' | tr -s '{},\t' '    '; }
set_has() { set_words "$1" | grep -qwF -- "$2"; }
# The set exists and does not hold the element.
set_lacks() { nftset "$1" >/dev/null && ! set_has "$@"; }
# set_expires_ms SET IP: milliseconds until the element expires ("-" if none).
set_expires_ms() {
  set_words "$1" | "$PY" -c '
import re, sys
toks = sys.stdin.read().split()
ip = sys.argv[1]
def ms(v):
    return sum(int(n) * {"d": 86400000, "h": 3600000, "m": 60000, "s": 1000, "ms": 1}[u]
               for n, u in re.findall(r"(\d+)(ms|d|h|m|s)", v))
out = "-"
for i, t in enumerate(toks):
    if t == ip:
        j = i + 1
        while j + 1 < len(toks) and toks[j] in ("timeout", "expires"):
            if toks[j] == "expires":
                out = str(ms(toks[j + 1]))
            j += 2
        break
print(out)' "$2"
}
# check_expires WHAT SET IP LOW HIGH: LOW < expires-ms <= HIGH.
check_expires() {
  local e
  e=$(set_expires_ms "$2" "$3")
  if [ "$e" != - ] && [ "$e" -gt "$4" ] && [ "$e" -le "$5" ]; then
    ok "$1 (expires in $e ms)"
  else
    not_ok "$1"
    diag "expires: $e ms, wanted ($4, $5]"
    nftset "$2" | diag
  fi
}

# api METHOD PATH [BODY]: API_STATUS, API_BODY (no token is configured).
api() {
  local -a data=()
  [ $# -ge 3 ] && data=(--data-binary "$3")
  API_STATUS=$(in_sb curl -sS -m 5 -X "$1" -o "$TMP/api.body" -w '%{http_code}' "${data[@]}" \
    "http://127.0.0.1:18080$2" 2>&1)
  API_BODY=$(cat "$TMP/api.body" 2>/dev/null)
}
metric() { grep -E "^$1 " <<<"$API_BODY" | awk '{print $2}'; }

# dig_addr NAME [QTYPE]: the first address of the answer ("" if none).
dig_addr() {
  dig_sb "$1" "${2:-A}"
  dig_answers "$DIG_OUT" | awk '$4 == "A" || $4 == "AAAA" {print $5}' | tail -n 1
}

# hold_start NAME HOST PORT: a long-lived connection from the sandbox
# (tcpserver.py hold); waits for it to connect. HOLD_PID, HOLD_OUT, HOLD_GO.
hold_start() {
  HOLD_OUT=$TMP/hold-$1.out
  HOLD_GO=$TMP/hold-$1.go
  rm -f "$HOLD_OUT" "$HOLD_GO"
  ip netns exec "$NS_SB" "$PY" "$TCPS" hold "$2" "$3" "$HOLD_GO" "$HOLD_OUT" 2>>"$TMP/hold.err" &
  HOLD_PID=$!
  E2E_PIDS+=("$HOLD_PID")
  wait_until 5 grep -q 'connect' "$HOLD_OUT" 2>/dev/null
}
# hold_finish: lets the held connection send its line; HOLD_RESULT.
hold_finish() {
  touch "$HOLD_GO"
  wait_exit "$HOLD_PID" 10
  HOLD_RESULT=$(tr '\n' ' ' <"$HOLD_OUT" 2>/dev/null)
}

# ---- topology ------------------------------------------------------------------

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
for a in "$OK4" "$DEN4" "$UN4" "$CN4" "$LONG4" "$KEEP4" "$IPR4" "$PAT4" "$SLOW4" "$C4" "$C4B" "$C4C" "$TRAP4" "$SHORT4" "$DAL4" "$AAL4"; do
  ip -n "$NS_UP" addr add "$a/24" dev veth-up
done
for a in "$OK6" "$UN6" "$C6" "$C6B" "$TRAP6"; do
  ip -n "$NS_UP" -6 addr add "$a/64" dev veth-up nodad
done
# Default routes, so that a query to a nameserver that does not exist leaves
# the routing step and meets the interception.
ip -n "$NS_SB" route add default via "$UP4"
ip -n "$NS_SB" -6 route add default via "$UP6"

dnsmasq_start main "$UP4" "$UP6" 53 "${RECS[@]}" || { not_ok "upstream dnsmasq started"; e2e_finish; }
UPLOG=$DNSMASQ_LOG_main
dnsmasq_start alt "$ALT4" "$ALT6" 53 "${RECS[@]}" || { not_ok "second dnsmasq started"; e2e_finish; }
ALTLOG=$DNSMASQ_LOG_alt

ip netns exec "$NS_UP" "$PY" "$TCPS" serve 80 443 853 >"$TMP/tcpserver.log" 2>&1 &
E2E_PIDS+=("$!")
wait_until 5 grep -q listening "$TMP/tcpserver.log" || { not_ok "tcp backends started"; diag <"$TMP/tcpserver.log"; e2e_finish; }
check "before sandgate: the sandbox reaches the never-resolved address" reachable "$UN4" 80

# ---- main instance: default deny, reject, a DoH blocklist ---------------------

# The operator's always-lists: IP lines go into the static sets.
RULES_DIR=$TMP/rules
mkdir -p "$RULES_DIR"
printf '# addresses no policy opens\n%s\n' "$DAL4" >"$RULES_DIR/deny.always"
printf '%s\n' "$AAL4" >"$RULES_DIR/allow.always"

OPENSANDBOX_EGRESS_DOH_BLOCKLIST="$C4B,$V:38/125" \
  sg_start main --mode dns+nft --rules "$POLICY" --rules-dir "$RULES_DIR" || { not_ok "sandgate egress --mode dns+nft starts"; e2e_finish; }
ok "sandgate egress --mode dns+nft starts"
api GET /policy
check_contains "GET /policy reports enforcementMode dns+nft" '"enforcementMode":"dns+nft"' "$API_BODY"

t=$(table)
check_contains "the table keeps the dns_intercept chain" "chain dns_intercept {" "$t"
eg=$(chain_egress)
if grep -qE 'type filter hook output priority (filter|0); policy drop;' <<<"$eg"; then
  ok "chain egress: filter output priority 0, policy drop (defaultAction deny)"
else
  not_ok "chain egress: filter output priority 0, policy drop (defaultAction deny)"
  diag <<<"$eg"
fi
for s in allow_v4 allow_v6 deny_v4 deny_v6 dyn_v4 dyn_v6 doh_v4 doh_v6; do
  check_contains "the table declares set $s" "set $s {" "$t"
done
check_contains "dyn_v4 is a timeout set" "flags timeout" "$(nftset dyn_v4)"
# The order that matters: established first, deny before the dynamic and the
# static allows.
first_line() { grep -nF -- "$1" <<<"$eg" | head -n1 | cut -d: -f1; }
l_ct=$(first_line "ct state established,related accept")
l_deny=$(first_line "@deny_v4")
l_dyn=$(first_line "@dyn_v4")
l_allow=$(first_line "@allow_v4")
if [ -n "$l_ct" ] && [ -n "$l_deny" ] && [ -n "$l_dyn" ] && [ -n "$l_allow" ] &&
  [ "$l_ct" -lt "$l_deny" ] && [ "$l_deny" -lt "$l_dyn" ] && [ "$l_dyn" -lt "$l_allow" ]; then
  ok "chain egress order: ct established, then @deny_v4, @dyn_v4, @allow_v4"
else
  not_ok "chain egress order: ct established, then @deny_v4, @dyn_v4, @allow_v4"
  diag "lines: ct=$l_ct deny=$l_deny dyn=$l_dyn allow=$l_allow"
  diag <<<"$eg"
fi
check_contains "chain egress accepts the proxy's mark 0x1" "meta mark 0x00000001 accept" "$eg"
check_contains "the table blocks with reject by default" "reject" "$t"
check_contains "chain egress names port 853" "853" "$eg"
check "allow_v4 holds the IP rule" set_has allow_v4 "$IPR4"
check "allow_v4 holds the allowed CIDR" set_has allow_v4 "$N.32/29"
check "allow_v6 holds the allowed v6 CIDR" set_has allow_v6 "$V:30/124"
check "deny_v4 holds the denied CIDR" set_has deny_v4 "$N.40/29"
check "deny_v6 holds the denied v6 CIDR" set_has deny_v6 "$V:40/124"
check "doh_v4 holds the DoH blocklist address" set_has doh_v4 "$C4B"
check "doh_v6 holds the DoH blocklist CIDR" set_has doh_v6 "$V:38/125"
check "dyn_v4 starts empty (ok.nft.test not there)" set_lacks dyn_v4 "$OK4"

# -- names, IPs, CIDRs (IPv4)
a=$(dig_addr ok.nft.test)
check_eq "allowed name: ok.nft.test resolves" "$OK4" "$a"
# The address must be in the set before the answer is released: connect at once.
check_reach "allowed name: connect right after the answer succeeds" "$OK4" 80
check "allowed name: the address is in dyn_v4" set_has dyn_v4 "$OK4"
check_expires "TTL 0 + grace 60, clamped to [60,360]: dyn_v4 timeout about 60 s" dyn_v4 "$OK4" 55000 60000
dig_sb denied.nft.test A
check_dig "denied name: NXDOMAIN" NXDOMAIN -
check_reject "denied name: its address (never learned) is blocked" "$DEN4" 80
check_reject "an address never resolved is blocked fast (reject)" "$UN4" 80
check_reach "allowed CIDR: reachable without DNS" "$C4" 80
check_reach "allowed IP rule: reachable without DNS" "$IPR4" 80
a=$(dig_addr trap.nft.test)
check_eq "allowed name inside a denied CIDR resolves (policy allows the name)" "$TRAP4" "$a"
check_reject "deny CIDR beats the allowed name: its address is blocked" "$TRAP4" 80
a=$(dig_addr alias.nft.test)
check_eq "CNAME chain: alias.nft.test resolves to the target's address" "$CN4" "$a"
check "CNAME chain: the target's address is in dyn_v4" set_has dyn_v4 "$CN4"
check_reach "CNAME chain: the target's address is reachable" "$CN4" 80
a=$(dig_addr long.nft.test)
check_expires "TTL 1000: dyn_v4 timeout clamped to 360 s" dyn_v4 "$LONG4" 355000 360000
a=$(dig_addr slow.nft.test)
check_expires "TTL 100: dyn_v4 timeout TTL + 60 = 160 s" dyn_v4 "$SLOW4" 155000 160000

# -- always-lists
check "deny.always: its IP is in deny_v4" set_has deny_v4 "$DAL4"
check "allow.always: its IP is in allow_v4" set_has allow_v4 "$AAL4"
check_reach "allow.always: its IP is reachable without DNS" "$AAL4" 80
a=$(dig_addr dal.nft.test)
check_eq "dal.nft.test (allowed name) resolves" "$DAL4" "$a"
check_reject "deny.always beats the allowed name: its address is blocked" "$DAL4" 80

# An edit of deny.always reaches the kernel (inotify, within a second or so).
check_reach "before the deny.always edit: $C4C (allowed CIDR) is reachable" "$C4C" 80
printf '%s\n%s\n' "$DAL4" "$C4C" >"$RULES_DIR/deny.always.new"
mv "$RULES_DIR/deny.always.new" "$RULES_DIR/deny.always"
if wait_until 3 blocked "$C4C" 80; then
  ok "after adding it to deny.always $C4C is blocked"
else
  not_ok "after adding it to deny.always $C4C is blocked"
  diag "connect: $CONN_OUT"
  nftset deny_v4 | diag
fi
check "... and deny_v4 holds it" set_has deny_v4 "$C4C"

# -- a big answer over TCP (40 A records): every address goes in
dig_sb +tcp big.example A
check_dig "big.example over TCP: 40 addresses" NOERROR count=40
check_eq "all 40 addresses of big.example are in dyn_v4" 40 "$(set_words dyn_v4 | tr ' ' '\n' | grep -c '^198\.51\.100\.')"

# -- ports 853 and 443
check_reject "port 853 to an allowed (resolved) address is blocked" "$OK4" 853
check_reject "port 853 to an allowed CIDR address is blocked" "$C4" 853

# The upstream nameserver is reachable for DNS only (the proxy's marked
# sockets): the app's port 53 goes through the redirect, other ports are
# blocked like any address the policy does not allow.
check_contains "control: a server listens on the upstream's port 80 ($UP4)" ok \
  "$(in_up "$PY" "$TCPS" connect "$UP4" 80 2 2>&1)"
check_reject "the upstream nameserver on port 80: blocked" "$UP4" 80
check_reject "the upstream nameserver's v6 address on port 80: blocked" "$UP6" 80
check_reach "port 443 to an allowed address not in the DoH list works" "$OK4" 443
check_reach "port 443 to an allowed CIDR address not in the DoH list works" "$C4" 443
check_reject "DoH blocklist: tcp/443 to a listed address is blocked" "$C4B" 443
check_reach "DoH blocklist: port 80 on the same address works" "$C4B" 80
check_reject "DoH blocklist: tcp/443 to an address in a listed v6 CIDR is blocked" "$C6B" 443
check_reach "DoH blocklist: tcp/443 to a v6 address outside the list works" "$C6" 443

# -- DNS to any address is the policy's
dig_sb @"$FAR4" denied.nft.test A
check_dig "a query to $FAR4:53 (no such server) for a denied name: NXDOMAIN from the policy" NXDOMAIN -
dig_sb @"$FAR4" ok.nft.test A
check_dig "a query to $FAR4:53 for an allowed name: answered" NOERROR "$OK4"
dig_sb @"$FAR4" +tcp denied.nft.test A
check_dig "the same over TCP: NXDOMAIN" NXDOMAIN -
dig_sb @"$FAR6" denied.nft.test A
check_dig "a query to [$FAR6]:53 for a denied name: NXDOMAIN" NXDOMAIN -
check_eq "the upstream never saw denied.nft.test" 0 "$(grep -ci 'query\[A\] denied.nft.test' "$UPLOG")"

# -- IPv6
a=$(dig_addr ok.nft.test AAAA)
check_eq "IPv6: ok.nft.test AAAA resolves" "$OK6" "$a"
check_reach "IPv6: the allowed AAAA address is reachable" "$OK6" 80
check "IPv6: the address is in dyn_v6" set_has dyn_v6 "$OK6"
check_reject "IPv6: an address never resolved is blocked fast" "$UN6" 80
check_reach "IPv6: allowed v6 CIDR reachable without DNS" "$C6" 80
a=$(dig_addr trap.nft.test AAAA)
check_eq "IPv6: trap.nft.test AAAA resolves" "$TRAP6" "$a"
check_reject "IPv6: deny v6 CIDR beats the allowed name" "$TRAP6" 80
check_reject "IPv6: port 853 to the allowed address is blocked" "$OK6" 853

# -- metrics
api GET /metrics
v=$(metric 'sandgate_nft_adds_total\{result="ok"\}')
check "metrics: sandgate_nft_adds_total{result=\"ok\"} counts batches (${v:-absent})" test "${v:-0}" -ge 5
v=$(metric 'sandgate_nft_adds_total\{result="refused"\}')
check_eq "metrics: no refused batch" 0 "${v:-0}"
v=$(metric 'sandgate_nft_adds_total\{result="timeout"\}')
check_eq "metrics: no timed-out batch" 0 "${v:-0}"
check_eq "metrics: sandgate_nft_servfail_total is 0" 0 "$(metric sandgate_nft_servfail_total)"
v=$(metric sandgate_nft_elements_total)
check "metrics: sandgate_nft_elements_total counts the IPs sent (${v:-absent})" test "${v:-0}" -ge 6

# -- an unrelated PATCH keeps learned addresses
a=$(dig_addr keep.nft.test)
check_reach "keep.nft.test resolved and reachable" "$KEEP4" 80
check_reject "before the PATCH: $PAT4 is blocked" "$PAT4" 80
api PATCH /policy '[{"action":"allow","target":"'"$PAT4"'"},{"action":"allow","target":"other.nft.test"}]'
check_eq "PATCH adding an IP rule: 200" 200 "$API_STATUS"
check_contains "the PATCH reply names enforcementMode dns+nft" '"enforcementMode":"dns+nft"' "$API_BODY"
check "after the PATCH: allow_v4 holds the new IP" set_has allow_v4 "$PAT4"
check_reach "after the PATCH: the new IP is reachable at once" "$PAT4" 80
check "after the PATCH: keep.nft.test's address is still in dyn_v4" set_has dyn_v4 "$KEEP4"
check_reach "after the PATCH: keep.nft.test's address is still reachable" "$KEEP4" 80
check "after the PATCH: the allowed CIDR is still in allow_v4" set_has allow_v4 "$N.32/29"

# A deny rule added later beats an address already learned.
api PATCH /policy '[{"action":"deny","target":"'"$KEEP4"'/32"}]'
check_eq "PATCH denying keep.nft.test's learned address: 200" 200 "$API_STATUS"
check_reject "... the learned address is blocked (deny before dyn)" "$KEEP4" 80
# Overlapping and contained prefixes are merged, never refused by the kernel.
api PATCH /policy '[{"action":"allow","target":"'"$C4"'"},{"action":"allow","target":"'"$N"'.32/30"},{"action":"allow","target":"'"$N"'.36/30"}]'
check_eq "PATCH with prefixes inside and overlapping the allowed CIDR: 200" 200 "$API_STATUS"
check_reach "... the CIDR's addresses stay reachable" "$C4" 80
check "... allow_v4 still holds $N.32/29" set_has allow_v4 "$N.32/29"
before=$(nftset allow_v4)
api PATCH /policy '[{"action":"allow","target":"10.0.0.0/33"}]'
check_eq "PATCH with an invalid CIDR: 400" 400 "$API_STATUS"
check_eq "... and allow_v4 is unchanged" "$before" "$(nftset allow_v4)"

# -- established connections survive policy changes
hold_start ipr "$IPR4" 80
check_contains "a long-lived connection to the IP rule's address is up" "connected hello $IPR4 80" "$(cat "$HOLD_OUT" 2>/dev/null)"
api DELETE /policy '["'"$IPR4"'"]'
check_eq "DELETE the IP rule: 200" 200 "$API_STATUS"
check "after the DELETE: allow_v4 no longer holds it" set_lacks allow_v4 "$IPR4"
check_reject "after the DELETE: a new connection to it is blocked" "$IPR4" 80
hold_finish
check_eq "after the DELETE: the established connection still echoes" "connected hello $IPR4 80 echo ok " "$HOLD_RESULT"

hold_start long "$LONG4" 80
check_contains "a long-lived connection to long.nft.test is up" "connected hello $LONG4 80" "$(cat "$HOLD_OUT" 2>/dev/null)"
api PATCH /policy '[{"action":"deny","target":"long.nft.test"}]'
check_eq "PATCH denying long.nft.test: 200" 200 "$API_STATUS"
dig_sb long.nft.test A
check_dig "after the PATCH long.nft.test is NXDOMAIN" NXDOMAIN -
hold_finish
check_eq "the established connection to long.nft.test survives the PATCH" "connected hello $LONG4 80 echo ok " "$HOLD_RESULT"

# -- defaultAction flips the chain policy
api POST /policy "$POLICY_ALLOW"
check_eq "POST defaultAction allow: 200" 200 "$API_STATUS"
check_contains "defaultAction allow: chain egress policy accept" "policy accept;" "$(chain_egress)"
check_reach "defaultAction allow: the never-resolved address is reachable" "$UN4" 80
check_reject "defaultAction allow: the deny CIDR still blocks" "$TRAP4" 80
check_reject "defaultAction allow: port 853 still blocked" "$UN4" 853
hold_start flip "$UN4" 80
check_contains "a long-lived connection under defaultAction allow is up" "connected hello $UN4 80" "$(cat "$HOLD_OUT" 2>/dev/null)"
api POST /policy "$POLICY"
check_eq "POST defaultAction deny: 200" 200 "$API_STATUS"
check_contains "defaultAction deny: chain egress policy drop" "policy drop;" "$(chain_egress)"
check_reject "defaultAction deny: the never-resolved address is blocked again" "$UN4" 80
hold_finish
check_eq "the established connection survives defaultAction allow -> deny" "connected hello $UN4 80 echo ok " "$HOLD_RESULT"
check "after the POSTs: ok.nft.test's address is still in dyn_v4" set_has dyn_v4 "$OK4"
check_reach "after the POSTs: ok.nft.test's address is still reachable" "$OK4" 80
check "after the POSTs: the IP rule is back in allow_v4 (the new document's)" set_has allow_v4 "$IPR4"
check "after the POSTs: the PATCHed IP is gone from allow_v4" set_lacks allow_v4 "$PAT4"
check "after the POSTs: allow.always's IP is still in allow_v4" set_has allow_v4 "$AAL4"
check "after the POSTs: deny.always's IP is still in deny_v4" set_has deny_v4 "$DAL4"

check "sandgate is still running" proc_running "$SG_PID"
sg_stop
check_eq "SIGTERM: status 0" 0 "$SG_RC"
check "SIGTERM keeps the table by default (fail closed)" has_table
check "... nft.kept logged" log_has "$SG_LOG" event=nft.kept
check_contains "... with chain egress" "chain egress {" "$(table)"
check_reject "... and the never-resolved address stays blocked" "$UN4" 80

# ---- a restart carries the learned addresses over ----------------------------

sg_start carry --mode dns+nft --rules "$POLICY"
check "after a restart: ok.nft.test's address is still in dyn_v4 (carried over)" set_has dyn_v4 "$OK4"
check_reach "after a restart: ok.nft.test's address is reachable without resolving again" "$OK4" 80
check "... nft.learned_carried logged" log_has "$SG_LOG" event=nft.learned_carried
check_reject "after a restart: the never-resolved address is still blocked" "$UN4" 80
sg_stop

# ---- restarts under traffic never open the sandbox ----------------------------

rm -f "$TMP/loop.stop"
ip netns exec "$NS_SB" "$PY" "$TCPS" loop "$UN4" 80 "$TMP/loop.stop" "$TMP/loop4.out" &
LOOP4=$!
E2E_PIDS+=("$LOOP4")
ip netns exec "$NS_SB" "$PY" "$TCPS" loop "$UN6" 80 "$TMP/loop.stop" "$TMP/loop6.out" &
LOOP6=$!
E2E_PIDS+=("$LOOP6")
sleep 0.3
restarts_ok=1
for i in 1 2 3; do
  sg_start "restart-$i" --mode dns+nft --rules "$POLICY" || restarts_ok=0
  sleep 0.3
  reachable "$C4" 80 || restarts_ok=0
  sg_stop
  [ "$SG_RC" == 0 ] || restarts_ok=0
  sleep 0.2
done
sg_start restart-4 --mode dns+nft --rules "$POLICY" || restarts_ok=0
sleep 0.3
touch "$TMP/loop.stop"
wait_exit "$LOOP4" 5
wait_exit "$LOOP6" 5
check "4 starts over the kept table, 3 SIGTERMs, all clean, allowed CIDR reachable each time" [ $restarts_ok == 1 ]
l4=$(cat "$TMP/loop4.out" 2>/dev/null)
l6=$(cat "$TMP/loop6.out" 2>/dev/null)
check "restarts under traffic: the IPv4 loop ran ($l4)" [ "$(awk '{print $2}' <<<"$l4")" -ge 20 ]
check_eq "restarts under traffic: zero IPv4 connects to the never-resolved address" 0 "$(awk '{print $4}' <<<"$l4")"
check "restarts under traffic: the IPv6 loop ran ($l6)" [ "$(awk '{print $2}' <<<"$l6")" -ge 20 ]
check_eq "restarts under traffic: zero IPv6 connects to the never-resolved address" 0 "$(awk '{print $4}' <<<"$l6")"
check_eq "the restarted table has one egress chain" 1 "$(table | grep -c 'chain egress {')"
check_eq "... and one dns_intercept chain" 1 "$(table | grep -c 'chain dns_intercept {')"
a=$(dig_addr ok.nft.test)
check_reach "the restarted sidecar learns addresses again" "$OK4" 80
sg_stop

# ---- --block drop, --cleanup ----------------------------------------------------

sg_start drop --mode dns+nft --rules "$POLICY" --block drop --cleanup
check_not_contains "--block drop: no reject anywhere in the table" "reject" "$(table)"
check_drop "--block drop: the never-resolved address times out" "$UN4" 80
check_drop "--block drop: port 853 times out" "$C4" 853
check_drop "--block drop: an IPv6 address never resolved times out" "$UN6" 80
check_reach "--block drop: the allowed CIDR is reachable" "$C4" 80
sg_stop
check_eq "--cleanup: SIGTERM status 0" 0 "$SG_RC"
check "--cleanup: the table is gone" no_table
check_reach "--cleanup: nothing filters the sandbox any more" "$UN4" 80

SANDGATE_EGRESS_BLOCK=drop SANDGATE_EGRESS_ON_EXIT=remove \
  sg_start drop-env --mode DNS+NFT --rules "$POLICY"
check_drop "SANDGATE_EGRESS_BLOCK=drop: the never-resolved address times out" "$UN4" 80
sg_stop
check "SANDGATE_EGRESS_ON_EXIT=remove: the table is gone" no_table

# ---- DoH: all of tcp/443 --------------------------------------------------------

OPENSANDBOX_EGRESS_BLOCK_DOH_443=true sg_start doh443 --mode dns+nft --rules "$POLICY" --cleanup
check_reject "BLOCK_DOH_443 without a blocklist: tcp/443 to an allowed CIDR address is blocked" "$C4" 443
check_reach "BLOCK_DOH_443: port 80 to the same address works" "$C4" 80
check_reject "BLOCK_DOH_443: tcp/443 to an allowed v6 address is blocked" "$C6" 443
a=$(dig_addr ok.nft.test)
check_reject "BLOCK_DOH_443: tcp/443 to a resolved allowed name is blocked" "$OK4" 443
sg_stop
check "BLOCK_DOH_443 instance, --cleanup: the table is gone" no_table

# ---- exempt nameserver ----------------------------------------------------------

NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT=$ALT4,$ALT6 \
  sg_start exempt --mode dns+nft --rules "$POLICY" --upstream "$ALT4" --cleanup
check "exempt_v4 holds the exempt nameserver" set_has exempt_v4 "$ALT4"
check "exempt_v6 holds the exempt v6 nameserver" set_has exempt_v6 "$ALT6"
check_contains "chain egress limits the exemption to the sidecar's uid (0)" "meta skuid 0 accept" "$(chain_egress)"
alt_before=$(grep -ci 'query\[A\] ok.nft.test' "$ALTLOG")
a=$(dig_addr ok.nft.test)
check_eq "through the exempt upstream: ok.nft.test resolves" "$OK4" "$a"
check "... and the exempt upstream answered it" [ "$(grep -ci 'query\[A\] ok.nft.test' "$ALTLOG")" -gt "$alt_before" ]
check_reach "... and the learned address is reachable" "$OK4" 80
DIG_OUT=$(in_sb "${NOBODY[@]}" dig +time=3 +tries=1 @"$ALT4" denied.nft.test A 2>&1)
check_dig "uid 65534 asking the exempt IP directly for a denied name: NXDOMAIN (redirected)" NXDOMAIN -
DIG_OUT=$(in_sb "${NOBODY[@]}" dig +time=3 +tries=1 +tcp @"$ALT4" denied.nft.test A 2>&1)
check_dig "... over TCP too" NXDOMAIN -
DIG_OUT=$(in_sb "${NOBODY[@]}" dig +time=3 +tries=1 @"$ALT6" denied.nft.test A 2>&1)
check_dig "... and over IPv6 to the exempt v6 IP" NXDOMAIN -
DIG_OUT=$(in_sb "${NOBODY[@]}" dig +time=3 +tries=1 @"$ALT4" ok.nft.test A 2>&1)
check_dig "uid 65534 asking the exempt IP for an allowed name: the policy's answer" NOERROR "$OK4"
check_eq "the exempt upstream never saw denied.nft.test" 0 "$(grep -ci 'query\[A\] denied.nft.test' "$ALTLOG")"
out=$(in_sb "${NOBODY[@]}" "$PY" "$TCPS" connect "$ALT4" 80 2 2>&1)
if [[ "$out" != ok* && "$out" != timeout* ]]; then
  ok "uid 65534 cannot reach the exempt IP on port 80 ($out)"
else
  not_ok "uid 65534 cannot reach the exempt IP on port 80"
  diag "$out"
fi
check_reject "root (not the exempt port) cannot reach the exempt IP on port 80 either" "$ALT4" 80
sg_stop
check "exempt instance, --cleanup: the table is gone" no_table

# The uid is what the exemption hangs on: exempting uid 65534 instead lets
# that user past the proxy (and only on port 53).
SANDGATE_EGRESS_EXEMPT_UID=65534 \
  sg_start exempt-uid --mode dns+nft --rules "$POLICY" --nameserver-exempt "$ALT4" --upstream "$ALT4" --cleanup
check_contains "SANDGATE_EGRESS_EXEMPT_UID=65534: the rule names uid 65534" "meta skuid 65534 accept" "$(chain_egress)"
DIG_OUT=$(in_sb "${NOBODY[@]}" dig +time=3 +tries=1 @"$ALT4" denied.nft.test A 2>&1)
check_dig "... then uid 65534 reaches the exempt upstream itself (its unfiltered answer)" NOERROR "$DEN4"
out=$(in_sb "${NOBODY[@]}" "$PY" "$TCPS" connect "$ALT4" 80 2 2>&1)
check "... but still not on port 80 ($out)" test "${out%% *}" != ok
sg_stop

# ---- TTL expiry; the mode from the environment ----------------------------------

OPENSANDBOX_EGRESS_MODE=Nft+DNS sg_start ttl --rules "$POLICY" --dyn-grace 0 --dyn-min 1 --dyn-max 4 --cleanup
api GET /policy
check_contains "OPENSANDBOX_EGRESS_MODE=Nft+DNS: enforcementMode dns+nft" '"enforcementMode":"dns+nft"' "$API_BODY"
a=$(dig_addr short.nft.test)
t_answer=$(now_ms)
check_eq "short.nft.test (TTL 1) resolves" "$SHORT4" "$a"
check_reach "short.nft.test's address is reachable right after the answer" "$SHORT4" 80
check_expires "TTL 1 + grace 0: dyn_v4 timeout 1 s" dyn_v4 "$SHORT4" 0 1000
a=$(dig_addr slow.nft.test)
check_expires "TTL 100 with --dyn-max 4: dyn_v4 timeout 4 s" dyn_v4 "$SLOW4" 3000 4000
if wait_until 5 blocked "$SHORT4" 80; then
  ok "after the TTL expires the address is blocked again ($(($(now_ms) - t_answer)) ms after the answer)"
else
  not_ok "after the TTL expires the address is blocked again"
  diag "connect: $CONN_OUT"
  nftset dyn_v4 | diag
fi
check "... and gone from dyn_v4" set_lacks dyn_v4 "$SHORT4"
a=$(dig_addr short.nft.test)
check_reach "a new answer opens it again" "$SHORT4" 80
# A second answer with the same address and a longer TTL must extend the
# element: the application may use that answer for its whole TTL.
a=$(dig_addr short3.nft.test)
t_answer=$(now_ms)
check_eq "short3.nft.test (same address, TTL 3) resolves" "$SHORT4" "$a"
check_expires "the longer TTL extends the element: dyn_v4 timeout 3 s" dyn_v4 "$SHORT4" 2000 3000
sleep "$("$PY" -c "print(max(0, 1.8 - ($(now_ms) - $t_answer) / 1000))")"
check_reach "1.8 s after the TTL-3 answer (past the TTL-1 one) the address is still reachable" "$SHORT4" 80

# The answer waits for the kernel: with the table gone (deleted behind
# sandgate's back) the add is refused and the answer becomes SERVFAIL.
in_sb nft delete table inet sandgate
dig_sb @127.0.0.1 -p 15353 dal.nft.test A
check_dig "the kernel refuses the add (table deleted): the allowed answer is SERVFAIL" SERVFAIL -
api GET /metrics
check "... sandgate_nft_servfail_total counts it" test "$(metric sandgate_nft_servfail_total)" -ge 1
check "... sandgate_nft_adds_total{result=\"refused\"} counts it" \
  test "$(metric 'sandgate_nft_adds_total\{result="refused"\}')" -ge 1
check "... nft.add_refused logged" log_has "$SG_LOG" event=nft.add_refused
sg_stop
check_eq "... and sandgate still stops cleanly: status 0" 0 "$SG_RC"
check "ttl instance, --cleanup: the table is gone" no_table

# ---- an unknown mode falls back to dns ------------------------------------------

# Left behind by a dns+nft run; a dns-mode start must not inherit its filter.
sg_start kept --mode dns+nft --rules "$POLICY"
sg_stop
check_contains "precondition: a kept dns+nft table with chain egress" "chain egress {" "$(table)"
sg_start badmode --mode dns+bogus --rules "$POLICY"
check "--mode dns+bogus: starts" proc_running "$SG_PID"
check "--mode dns+bogus: a warning names the value" grep -q 'dns+bogus' "$SG_LOG"
api GET /policy
check_contains "--mode dns+bogus: enforcementMode dns" '"enforcementMode":"dns"' "$API_BODY"
check_not_contains "--mode dns+bogus over the kept dns+nft table: no chain egress" "chain egress" "$(table)"
check_reach "--mode dns+bogus: nothing filters connections" "$UN4" 80
sg_stop

e2e_finish
