#!/usr/bin/env bash
# Upstream handling end to end: the upstream list and its sources, failover
# on refused, silent and REFUSED-answering upstreams, SERVFAIL when all fail,
# and the proxy's own TCP retry of answers truncated upstream. One sandgate
# per case of upstream_cases.txt.
#
# usage: test_egress_upstream.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 \
  --host-record=onlymain.example,192.0.2.98 --host-record=nxfirst.example,192.0.2.99 ||
  { not_ok "main upstream dnsmasq started"; e2e_finish; }
MAINLOG=$DNSMASQ_LOG_main
# No records for onlymain.example (and no upstream of its own): REFUSED. On
# port 53 like a real upstream, so that the proxy's own TCP retry would be
# redirected back to itself if its socket lacked the bypass mark.
dnsmasq_start alt "$ALT4" "$ALT6" 53 --edns-packet-max=512 --address=/nxfirst.example/ ||
  { not_ok "second upstream dnsmasq started"; e2e_finish; }

# The test's own view of the upstreams, without sandgate.
out=$(in_sb dig @"$ALT4" +ignore +time=2 +tries=1 big.example A)
check_contains "precondition: the second dnsmasq truncates big.example over UDP" " tc " " $(dig_flags "$out") "
out=$(in_sb dig @"$ALT4" +time=2 +tries=1 onlymain.example A)
check_eq "precondition: the second dnsmasq refuses onlymain.example" REFUSED "$(dig_rcode "$out")"
out=$(in_sb dig @"$DROP4A" +time=1 +tries=1 allowed.example A)
check_contains "precondition: queries to $DROP4A go unanswered" "timed out" "$out"

expand() { # upstream list with placeholders -> addresses
  local s=$1
  s=${s//@MAIN6/$UP6}
  s=${s//@MAIN/$UP4}
  s=${s//@ALT6/[$ALT6]:53}
  s=${s//@ALT/$ALT4:53}
  s=${s//@DEAD/$DEAD4}
  s=${s//@DROPA/$DROP4A}
  s=${s//@DROPB/$DROP4B}
  echo "$s"
}

n=0
while read -r -u 3 label how ups timeout name qtype opts rcode answer tc min_ms max_ms main; do
  [[ -z "$label" || "$label" == \#* ]] && continue
  n=$((n + 1))
  envs=()
  flags=(--rules '{"defaultAction":"allow"}')
  list=$(expand "$ups")
  if [ "$how" == env ]; then
    [ "$ups" != - ] && envs+=("OPENSANDBOX_EGRESS_DNS_UPSTREAM=$list")
    [ "$timeout" != - ] && envs+=("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT=$timeout")
  else
    [ "$ups" != - ] && flags+=(--upstream "$list")
    [ "$timeout" != - ] && flags+=(--upstream-timeout "$timeout")
  fi
  # Environment for this sandgate only.
  for e in "${envs[@]}"; do export "${e?}"; done
  sg_start "up-$n-$label" "${flags[@]}"
  started=$?
  for e in "${envs[@]}"; do unset "${e%%=*}"; done
  if [ $started != 0 ]; then
    not_ok "$label: sandgate starts with upstreams $list"
    continue
  fi
  # How egress.started shows the first upstream: IP:port, [IPv6]:port.
  first=${list%%,*}
  [ "$ups" == - ] && first=$UP4
  case $first in
  \[*) ;;
  *:*:*) first="[$first]:53" ;;
  *:*) ;;
  *) first=$first:53 ;;
  esac
  check_eq "$label: egress.started names the first upstream $first" 1 \
    "$(log_count "$SG_LOG" event=egress.started "upstream=$first")"

  before=$(grep -ciF "query[$qtype] $name from" "$MAINLOG")
  dig_opts=()
  [ "$opts" != - ] && IFS=, read -r -a dig_opts <<<"$opts"
  dig_sb +time=10 "${dig_opts[@]}" "$name" "$qtype"
  check_dig "$label: $name $qtype ${opts//,/ } -> $rcode, answer $answer (upstreams $list)" "$rcode" "$answer"
  has_tc=0
  [[ " $(dig_flags "$DIG_OUT") " == *" tc "* ]] && has_tc=1
  check_eq "$label: TC flag is $tc" "$tc" "$has_tc"
  if [ "$DIG_MS" -ge "$min_ms" ] && [ "$DIG_MS" -le "$max_ms" ]; then
    ok "$label: answered after ${min_ms}-${max_ms} ms ($DIG_MS ms)"
  else
    not_ok "$label: answered after ${min_ms}-${max_ms} ms"
    diag "took $DIG_MS ms"
  fi
  after=$(grep -ciF "query[$qtype] $name from" "$MAINLOG")
  case $main in
  yes) check "$label: the main upstream answered" [ "$after" -gt "$before" ] ;;
  no) check_eq "$label: the main upstream was not asked" "$before" "$after" ;;
  esac
  if [ "$rcode" == SERVFAIL ]; then
    check "$label: dns.upstream_failed logged" log_has "$SG_LOG" event=dns.upstream_failed
  fi
  sg_stop
  check_eq "$label: sandgate stops with status 0" 0 "$SG_RC"
done 3<"$E2E_DIR/upstream_cases.txt"
check "all $n upstream cases ran" [ "$n" -ge 10 ]

# ---- a failing upstream does not hold up other clients ----------------------

# With a silent first upstream, queries wait for their own timeout; queries
# made meanwhile are not serialised behind them.
sg_start concurrent --rules '{"defaultAction":"allow"}' --upstream "$DROP4A,$UP4" --upstream-timeout 2
t0=$(now_ms)
for i in 1 2 3 4 5; do
  ip netns exec "$NS_SB" dig +time=10 +tries=1 +short allowed.example A >"$TMP/conc-$i.out" 2>&1 &
  E2E_PIDS+=($!)
done
for i in 1 2 3 4 5; do wait "${E2E_PIDS[-$i]}"; done
elapsed=$(($(now_ms) - t0))
good=$(cat "$TMP"/conc-*.out | grep -c '^192.0.2.1$')
check_eq "5 concurrent queries behind a silent first upstream all fail over" 5 "$good"
check "... in about one timeout, not five (took $elapsed ms)" [ "$elapsed" -lt 5000 ]
sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"

e2e_finish
