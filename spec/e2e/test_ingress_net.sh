#!/usr/bin/env bash
# sandgate ingress with its backends across a network: the gateway and an HTTP
# backend run in the sandbox namespace (the backend on its loopback), a real
# dnsmasq in the upstream namespace resolves the DNS template
# (--dns-template '{id}.sandboxes.test') through c-ares and the namespace's
# resolv.conf, and one address of the upstream namespace drops everything.
# Checks: a name routes; answers are cached for their TTL (dnsmasq's query
# log counts the lookups) and looked up again after it; a changed record is
# followed; a name that does not exist is 404 "sandbox not found"; a
# resolver that does not answer is 502; a backend whose SYNs vanish is 504
# after the connect timeout; a backend that goes silent mid-body is cut off
# after the idle timeout; a pooled connection the backend closed unanswered
# is retried on a fresh one for a GET, and not for a POST; a name that does
# not exist is remembered for a second; callers asking for the same name at
# once share one lookup (a slow DNS server from dnsclient.py).
#
# usage: test_ingress_net.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

BK=$E2E_DIR/ingress_backend.py
PA=18001 GW=28888 ADMIN=28889 # a fresh namespace: nothing else listens there
TTL=3
ZONE=sandboxes.test

topo_up || { not_ok "topology"; e2e_finish; }

# The zone is local to dnsmasq (NXDOMAIN for the names it does not hold).
# The records: sbx1 on the sandbox's loopback; sbx2 exists only for the
# resolver-down case (asked for the first time then); blackhole is an
# address whose packets the upstream namespace drops.
dns_up() { # ADDRESS-OF-SBX1
  dnsmasq_start main "$UP4" "$UP6" 53 --local-ttl="$TTL" --local="/$ZONE/" \
    --host-record="sbx1.$ZONE,$1" --host-record="sbx2.$ZONE,127.0.0.1" \
    --host-record="blackhole.$ZONE,$DROP4A" --host-record="stall.$ZONE,127.0.0.1"
}
dns_up 127.0.0.1 || { not_ok "dnsmasq started"; e2e_finish; }
DNS_PID=$DNSMASQ_PID

port_open() { ip netns exec "$NS_SB" bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

ip netns exec "$NS_SB" "$PY" "$BK" http "$PA" A >"$TMP/bk-a.log" 2>&1 &
E2E_PIDS+=($!)
wait_until 10 port_open "$PA" || { not_ok "backend A started"; e2e_finish; }

ing_start gw --listen 127.0.0.1 --port "$GW" --admin-addr "127.0.0.1:$ADMIN" --workers 1 \
  --dns-template "{id}.$ZONE" --connect-timeout 2 --idle-timeout 1 ||
  { not_ok "sandgate ingress started"; e2e_finish; }

# req ROUTE PATH: sets R_STATUS and R_BODY.
req() {
  local out
  out=$(ip netns exec "$NS_SB" curl -s -m 10 -w '\n%{http_code}' \
    -H "OpenSandbox-Ingress-To: $1" "http://127.0.0.1:$GW$2")
  R_STATUS=${out##*$'\n'}
  R_BODY=${out%$'\n'*}
}
# lookups NAME: the A queries dnsmasq has answered for NAME.
lookups() { grep -c "query\[A\] $1 from" "$DNSMASQ_LOG_main" || true; }

# ---- a name routes, and its answer is cached for its TTL --------------------

t_first=$(now_ms)
req "sbx1-$PA" /hello
check_eq "sbx1-$PA: sbx1.$ZONE is resolved and routes to backend A" "200" "$R_STATUS"
check_contains "... the backend answers" "name: A" "$R_BODY"
check_contains "... with Host set to the backend's name and port" "Host: sbx1.$ZONE:$PA" "$R_BODY"
check_eq "... one A lookup" 1 "$(lookups "sbx1.$ZONE")"

# /__close: the backend closes each connection, so each request needs a new
# backend connection and asks the resolver (not the pool) for the address.
n_ok=0
for _ in 1 2 3 4 5; do
  req "sbx1-$PA" /__close
  [ "$R_STATUS" = 200 ] && n_ok=$((n_ok + 1))
done
within=$(($(now_ms) - t_first))
check_eq "five requests on fresh backend connections: all 200" 5 "$n_ok"
if [ "$within" -lt $((TTL * 1000 - 500)) ]; then
  check_eq "... within the TTL (${within} ms): answered from the cache, still one lookup" 1 \
    "$(lookups "sbx1.$ZONE")"
else
  not_ok "the five requests took ${within} ms, longer than the TTL: the cache check cannot tell"
fi

# After the TTL, the next connection asks again.
sleep "$(awk -v t="$TTL" -v w="$within" 'BEGIN { printf "%.1f", t - w / 1000 + 0.5 }')"
req "sbx1-$PA" /__close
check_eq "after the TTL: 200" 200 "$R_STATUS"
check_eq "... after a second lookup" 2 "$(lookups "sbx1.$ZONE")"

# ---- a changed record is followed --------------------------------------------

e2e_kill "$DNS_PID"
dns_up 127.0.0.2 || { not_ok "dnsmasq restarted"; e2e_finish; }
DNS_PID=$DNSMASQ_PID
sleep "$((TTL + 1))"
req "sbx1-$PA" /__close
check_eq "sbx1.$ZONE moved to 127.0.0.2 (nothing listens): 502 after the TTL" 502 "$R_STATUS"
check_contains "... the gateway's own answer" "OpenSandbox Ingress: cannot connect to the sandbox" "$R_BODY"
check_eq "... it asked the new server" 1 "$(lookups "sbx1.$ZONE")"

# ---- timeouts ------------------------------------------------------------------

t0=$(now_ms)
req "blackhole-$PA" /x
el=$(($(now_ms) - t0))
check_eq "a backend whose SYNs are dropped: 504" 504 "$R_STATUS"
check_contains "... timed out connecting" "OpenSandbox Ingress: timed out connecting to the sandbox" "$R_BODY"
check "... after the 2 s connect timeout ($el ms)" test "$el" -ge 1800 -a "$el" -lt 5000

t0=$(now_ms)
out=$(ip netns exec "$NS_SB" curl -s -m 10 -H "OpenSandbox-Ingress-To: stall-$PA" \
  "http://127.0.0.1:$GW/__stall?ms=4000")
rc=$?
el=$(($(now_ms) - t0))
check_eq "a backend silent for 4 s mid-body: the client gets the first bytes" "hello" "$out"
check "... and the connection is cut, not ended as if complete (curl rc $rc)" [ "$rc" -eq 18 ]
check "... after the 1 s idle timeout, not the backend's 4 s ($el ms)" test "$el" -ge 900 -a "$el" -lt 3500

# ---- a pooled connection the backend closed ---------------------------------

metric() { ip netns exec "$NS_SB" curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
r0=$(metric 'sandgate_ingress_upstream_connections_total{kind="retry"}')
req "stall-$PA" /__arm
check_contains "GET /__arm: the backend connection goes back to the pool" "armed" "$R_BODY"
req "stall-$PA" /again
check_eq "the next GET gets the pooled connection, which the backend closes unanswered: retried, 200" \
  200 "$R_STATUS"
check_contains "... answered on a fresh connection" "name: A" "$R_BODY"
check_eq "... one retry counted" 1 "$(($(metric 'sandgate_ingress_upstream_connections_total{kind="retry"}') - r0))"
req "stall-$PA" /__arm
out=$(ip netns exec "$NS_SB" curl -s -m 10 -w '\n%{http_code}' -X POST -d 'once only' \
  -H "OpenSandbox-Ingress-To: stall-$PA" "http://127.0.0.1:$GW/post")
check_eq "a POST on such a connection is not retried (not idempotent): 502" 502 "${out##*$'\n'}"
check_contains "... the sandbox closed the connection" \
  "OpenSandbox Ingress: the sandbox closed the connection" "$out"
check_eq "... and no retry counted" 1 "$(($(metric 'sandgate_ingress_upstream_connections_total{kind="retry"}') - r0))"

# ---- names that do not resolve ---------------------------------------------

req "nope-$PA" /x
check_eq "nope.$ZONE does not exist (NXDOMAIN): 404" 404 "$R_STATUS"
check_contains "... sandbox not found, naming the sandbox and the name" \
  "OpenSandbox Ingress: sandbox not found: nope (nope.$ZONE does not resolve)" "$R_BODY"
t_nope=$(now_ms)
req "nope-$PA" /y
s2=$R_STATUS
req "nope-$PA" /z
within=$(($(now_ms) - t_nope))
check_eq "asked twice more at once: 404 both times" "404 404" "$s2 $R_STATUS"
if [ "$within" -lt 800 ]; then
  check_eq "... answered from the 1 s negative cache: still one lookup (${within} ms)" 1 "$(lookups "nope.$ZONE")"
else
  not_ok "the two requests took ${within} ms, longer than the negative cache: the check cannot tell"
fi
sleep 1.2
req "nope-$PA" /again
check_eq "after a second: asked again" "404 2" "$R_STATUS $(lookups "nope.$ZONE")"

e2e_kill "$DNS_PID"
t0=$(now_ms)
req "sbx2-$PA" /x
el=$(($(now_ms) - t0))
check_eq "the resolver is down, sbx2 never resolved: 502" 502 "$R_STATUS"
check_contains "... cannot resolve, naming the name" \
  "OpenSandbox Ingress: cannot resolve the sandbox address sbx2.$ZONE" "$R_BODY"
check "... within the lookup's 2 x 2 s budget ($el ms)" [ "$el" -lt 6000 ]
req "sbx1-$PA" /status.ok
check_eq "the gateway still answers" 200 "$R_STATUS"

# ---- callers asking for the same name share one lookup ----------------------

# A slow server in the dead dnsmasq's place: every answer 300 ms late, one
# after the other, each A for 127.0.0.1; it logs every question.
SLOW_LOG=$TMP/slowdns.log
ip netns exec "$NS_UP" "$PY" "$DNSCLIENT" serve "$UP4" 53 127.0.0.1 300 "$SLOW_LOG" \
  >"$TMP/slowdns.out" 2>&1 &
E2E_PIDS+=($!)
wait_until 5 grep -q ready "$TMP/slowdns.out" || not_ok "the slow DNS server started"
pids=()
for i in 1 2 3 4 5 6 7 8; do
  ip netns exec "$NS_SB" curl -s -m 10 -o /dev/null -w '%{http_code}\n' \
    -H "OpenSandbox-Ingress-To: burst-$PA" "http://127.0.0.1:$GW/__close" >"$TMP/burst-$i.out" &
  pids+=($!)
  E2E_PIDS+=($!)
done
wait "${pids[@]}"
check_eq "eight requests at once for a name not yet known: all 200" 8 "$(cat "$TMP"/burst-*.out | grep -c '^200$')"
check_eq "... and the slow server was asked once" 1 "$(grep -c "^1 burst.$ZONE\$" "$SLOW_LOG")"

e2e_finish
