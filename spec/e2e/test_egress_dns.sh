#!/usr/bin/env bash
# DNS interception and policy, end to end: an application in the sandbox asks
# its resolv.conf nameserver (port 53 on the upstream host); nftables in the
# sandbox namespace redirects the query to sandgate, which answers denied
# names with NXDOMAIN itself and forwards allowed ones. The cases are in
# dns_cases.txt, the policy in dns_policy.json.
#
# usage: test_egress_dns.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }
UPLOG=$DNSMASQ_LOG_main

sg_start egress --rules "@$E2E_DIR/dns_policy.json"
check "sandgate egress starts with the resolv.conf upstream and a policy" proc_running "$SG_PID"
check_eq "egress.started names the resolv.conf upstream" 1 \
  "$(log_count "$SG_LOG" event=egress.started "upstream=$UP4:53" intercept=True)"

# ---- the kernel part ---------------------------------------------------------

table=$(in_sb nft list table inet sandgate 2>&1)
check_contains "nft table inet sandgate has the dns_intercept chain" "chain dns_intercept {" "$table"
check_contains "dns_intercept is a nat output chain" "type nat hook output priority -100;" "$table"
# The proxy's own upstream queries (mark 0x1) leave before the redirects.
order=$(grep -oE 'meta mark 0x0*1 return|udp dport 53 redirect to :15353|tcp dport 53 redirect to :15353' <<<"$table" | tr '\n' '|')
check_eq "marked packets return first, then udp and tcp port 53 are redirected to 15353" \
  "meta mark 0x00000001 return|udp dport 53 redirect to :15353|tcp dport 53 redirect to :15353|" "$order"
check_eq "the table holds only the dns_intercept chain" 1 "$(grep -c 'chain ' <<<"$table")"

# ---- the cases ---------------------------------------------------------------

dig_args() { # VIA -> dig arguments
  case $1 in
  udp4) ;;
  tcp4) echo +tcp ;;
  udp6) echo "@$UP6" ;;
  tcp6) echo "@$UP6 +tcp" ;;
  direct4) echo "@127.0.0.1 -p 15353" ;;
  direct6) echo "@::1 -p 15353" ;;
  esac
}
client_of() { # VIA -> the client address sandgate sees
  case $1 in
  udp4 | tcp4) echo "$SB4" ;;
  udp6 | tcp6) echo "$SB6" ;;
  direct4) echo 127.0.0.1 ;;
  direct6) echo ::1 ;;
  esac
}
upstream_saw() { # NAME QTYPE: queries dnsmasq logged for it
  grep -ciF "query[$2] $1 from" "$UPLOG"
}

while read -r -u 3 name qtype via rcode answer verdict rule; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  what="$name $qtype over $via"
  lname=${name,,}
  lname=${lname%.}
  transport=udp
  [[ "$via" == tcp* ]] && transport=tcp
  [[ "$via" == direct* ]] && transport=udp
  before_log=$(log_count "$SG_LOG" event=dns.query "name=$lname" "qtype=$qtype" \
    "client=$(client_of "$via")" "transport=$transport" "verdict=$verdict" "rule=$rule")
  before_up=$(upstream_saw "$lname" "$qtype")

  # shellcheck disable=SC2046
  dig_sb $(dig_args "$via") "$name" "$qtype"
  check_dig "$what: $rcode, answer $answer" "$rcode" "$answer"
  # The question comes back as sent, case included (0x20-randomising
  # resolvers compare it); the root is "." either way.
  q=$(dig_question "$DIG_OUT")
  qname=${name%.}.
  if [[ "$q" == "$qname"[[:space:]]*IN[[:space:]]*"$qtype" ]] && grep -q ' qr ' <<<" $(dig_flags "$DIG_OUT") "; then
    ok "$what: the reply is a response echoing the question as sent"
  else
    not_ok "$what: the reply is a response echoing the question as sent"
    diag "question section: $q" "flags: $(dig_flags "$DIG_OUT")"
  fi
  after_log=$(log_count "$SG_LOG" event=dns.query "name=$lname" "qtype=$qtype" \
    "client=$(client_of "$via")" "transport=$transport" "verdict=$verdict" "rule=$rule")
  if [ "$after_log" -eq $((before_log + 1)) ]; then
    ok "$what: dns.query logged (client, transport $transport, verdict $verdict, rule $rule)"
  else
    not_ok "$what: dns.query logged (client, transport $transport, verdict $verdict, rule $rule)"
    grep '"dns.query"' "$SG_LOG" | tail -n 3 | diag
  fi
  after_up=$(upstream_saw "$lname" "$qtype")
  if [ "$verdict" == deny ]; then
    check_eq "$what: the upstream never saw the denied query" "$before_up" "$after_up"
  else
    check "$what: the upstream answered the allowed query" [ "$after_up" -gt "$before_up" ]
  fi
done 3<"$E2E_DIR/dns_cases.txt"

# ---- interception is invisible to the application ---------------------------

# The answer comes back from the address the application asked (the redirect
# is undone on the way back), so a plain resolver accepts it.
dig_sb allowed.example A
check_contains "the reply comes from the nameserver the application asked" "SERVER: $UP4#53($UP4) (UDP)" "$DIG_OUT"
out=$(in_sb getent ahostsv4 allowed.example 2>&1 | head -n1)
check_contains "libc's resolver (getent) gets the allowed name" "192.0.2.1" "$out"
in_sb getent ahostsv4 denied.example >/dev/null 2>&1
check_eq "libc's resolver (getent) gets nothing for the denied name" 2 "$?"

check "sandgate is still running after every case" proc_running "$SG_PID"
sg_stop
check_eq "SIGTERM stops sandgate with status 0" 0 "$SG_RC"
e2e_finish
