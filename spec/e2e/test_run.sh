#!/usr/bin/env bash
# sandgate run, end to end: the test's sandbox namespace plays the host that
# runs `sandgate run`, the upstream namespace plays the internet (dnsmasq and
# two web servers). Checks the policy (names, IP literals), the exit status,
# the user CMD runs as, its resolv.conf, the policy API on the host, the
# published port, concurrent runs, and that everything is removed after a
# normal end, SIGTERM, a killed CMD, a failed start, and a killed run.
#
# usage: test_run.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 \
  --address=/ok.run.test/"$UP4" --address=/no.run.test/"$ALT4" ||
  { not_ok "upstream dnsmasq started"; e2e_finish; }
for a in "$UP4" "$ALT4"; do
  ip netns exec "$NS_UP" "$PY" -m http.server 80 --bind "$a" >/dev/null 2>&1 &
  E2E_PIDS+=("$!")
done
# Answers to the runs' namespaces go back through the "host".
SUBNET_B=$((X + 20))
ip -n "$NS_UP" route add "10.$SUBNET_B.0.0/16" via "$SB4"
wait_until 5 in_up curl -s -o /dev/null "http://$UP4/" || not_ok "web servers up"

RUNFLAGS=(--upstream "$UP4" --subnet "10.$SUBNET_B.0.0")

# run_sb OUT ERR ARGS...: `sandgate run` in the "host" namespace; its exit
# status in RUN_RC.
run_sb() {
  local out=$1 err=$2
  shift 2
  ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" "$@" >"$out" 2>"$err"
  RUN_RC=$?
}

# The namespace a run reported on stderr ("sandbox sgrun-N: ...").
run_ns() { grep -o 'sandbox sgrun-[0-9]*' "$1" | head -1 | cut -d' ' -f2; }

# No trace of namespace NS (sgrun-N) is left: netns, NAT table, run dir.
gone() {
  local ns=$1 n=${1#sgrun-}
  [ -n "$ns" ] && [ ! -e "/run/netns/$ns" ] && [ ! -e "/run/sandgate/$ns" ] &&
    ! in_sb nft list table inet "sandgate_run_$n" >/dev/null 2>&1
}

# ---- the policy ----------------------------------------------------------------

run_sb "$TMP/r1.out" "$TMP/r1.err" --allow ok.run.test -- sh -c '
  curl -s -m 3 -o /dev/null -w "allowed %{http_code}\n" http://ok.run.test/
  dig +time=2 +tries=1 no.run.test | grep -o "status: [A-Z]*"
  curl -s -m 3 -o /dev/null -w "literal %{exitcode} %{time_total}\n" http://'"$ALT4"'/
  tail -1 /etc/resolv.conf
  exit 7'
NS1=$(run_ns "$TMP/r1.err")
check_contains "an allowed name is reachable" "allowed 200" "$(cat "$TMP/r1.out")"
check_contains "a denied name gets NXDOMAIN" "status: NXDOMAIN" "$(cat "$TMP/r1.out")"
lit=$(grep literal "$TMP/r1.out")
check "an IP literal is blocked at once in dns+nft ($lit)" \
  awk '{ exit !($2 == 7 && $3 < 1.0) }' <<<"$lit"
check_contains "CMD's resolv.conf names the run's host-side address" \
  "nameserver 10.$SUBNET_B." "$(cat "$TMP/r1.out")"
check_eq "the run returns CMD's exit status" 7 "$RUN_RC"
check "the run said which namespace it made ($NS1)" [ -n "$NS1" ]
check "after the run: namespace, NAT table and run directory are gone" gone "$NS1"
check_not_contains "the host's own resolv.conf is untouched" "10.$SUBNET_B." \
  "$(in_sb cat /etc/resolv.conf)"

run_sb "$TMP/r2.out" "$TMP/r2.err" --mode dns --allow ok.run.test -- \
  curl -s -m 3 -o /dev/null -w "%{http_code}" "http://$ALT4/"
check_eq "--mode dns: IP literals are not filtered" 200 "$(cat "$TMP/r2.out")"

# ---- the user -------------------------------------------------------------------

SUDO_UID=65534 SUDO_GID=65534 run_sb "$TMP/u.out" "$TMP/u.err" -- id -u
check_eq "under sudo, CMD runs as the invoking user (SUDO_UID)" 65534 "$(cat "$TMP/u.out")"
ip netns exec "$NS_SB" setpriv --reuid=65534 --regid=65534 --clear-groups \
  "$BIN" run -- true 2>"$TMP/nr.err"
check_eq "without root: status 2" 2 "$?"
check_contains "... and the message says it needs root" "needs root" "$(cat "$TMP/nr.err")"

# ---- the policy API and a published port ------------------------------------------

API=127.0.0.1:$((X + 18000))
ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" --allow ok.run.test --policy-api "$API" \
  --publish 8000 -- sh -c '
  "'"$PY"'" -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &
  for i in $(seq 40); do
    [ -e '"$TMP"'/patched ] && break; sleep 0.1
  done
  curl -s -m 3 -o /dev/null -w "after patch %{http_code}\n" http://no.run.test/
  kill %1' >"$TMP/api.out" 2>"$TMP/api.err" &
RUNPID=$!
wait_until 10 grep -q "policy API" "$TMP/api.err"
NS2=$(run_ns "$TMP/api.err")
SBIP=$(grep -o 'sandbox sgrun-[0-9]*: [0-9.]*' "$TMP/api.err" | awk '{print $3}')
# Until CMD's server listens, the port proxy answers 502.
published() { [ "$(in_sb curl -s -o /dev/null -w '%{http_code}' "http://$SBIP:44772/proxy/8000/")" == 200 ]; }
wait_until 10 published
check_eq "--publish: the host reaches CMD's port through the port proxy" 200 \
  "$(in_sb curl -s -o /dev/null -w '%{http_code}' "http://$SBIP:44772/proxy/8000/")"
check_eq "the sandbox side of the API wants the token (the run keeps it)" 401 \
  "$(in_sb curl -s -o /dev/null -w '%{http_code}' -X PATCH -d '[]' "http://$SBIP:18080/policy")"
check_eq "--policy-api: a PATCH on the host address is accepted" 200 \
  "$(in_sb curl -s -o /dev/null -w '%{http_code}' -X PATCH \
    -d '[{"action":"allow","target":"no.run.test"}]' "http://$API/policy")"
touch "$TMP/patched"
wait "$RUNPID"
check_contains "... and the denied name works right after" "after patch 200" "$(cat "$TMP/api.out")"
check "the API run leaves nothing behind" gone "$NS2"

# ---- ends that are not a normal exit ----------------------------------------------

ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" -- sleep 30 >/dev/null 2>"$TMP/t.err" &
RUNPID=$!
wait_until 10 grep -q "sandbox sgrun" "$TMP/t.err"
NS3=$(run_ns "$TMP/t.err")
kill -TERM "$RUNPID"
wait_exit "$RUNPID" 10
check_eq "SIGTERM to the run ends CMD: status 128+15" 143 "$WAIT_RC"
check "... and leaves nothing behind" gone "$NS3"

# Ctrl-C: the terminal sends SIGINT to the whole foreground process group,
# the run and CMD alike. setsid gives the run a group of its own to play that.
setsid ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" -- sleep 30 >/dev/null 2>"$TMP/i.err" &
RUNPID=$!
wait_until 10 grep -q "sandbox sgrun" "$TMP/i.err"
NSI=$(run_ns "$TMP/i.err")
PGID=$(ps -o pgid= -p "$RUNPID" | tr -d ' ')
check "the Ctrl-C run leads its own process group ($PGID)" [ "$PGID" = "$RUNPID" ]
[ "$PGID" = "$RUNPID" ] && kill -INT -- "-$PGID"
wait_exit "$RUNPID" 10
check_eq "Ctrl-C (SIGINT to the process group): status 128+2" 130 "$WAIT_RC"
check "... and leaves nothing behind" gone "$NSI"

ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" -- sleep 30 >/dev/null 2>"$TMP/k.err" &
RUNPID=$!
wait_until 10 grep -q "sandbox sgrun" "$TMP/k.err"
NS4=$(run_ns "$TMP/k.err")
CMDPID=$(pgrep -P "$RUNPID" -x sleep | head -1)
check "CMD runs as a child of the run ($CMDPID)" [ -n "$CMDPID" ]
[ -n "$CMDPID" ] && kill -KILL "$CMDPID"
wait_exit "$RUNPID" 10
check_eq "a killed CMD: the run returns 128+9" 137 "$WAIT_RC"
check "... and leaves nothing behind" gone "$NS4"

run_sb "$TMP/bad.out" "$TMP/bad.err" --allow 'not a name' -- true
check "a bad policy fails the run (status $RUN_RC)" [ "$RUN_RC" -ne 0 ]
check_contains "... naming the bad target" "not a domain name" "$(cat "$TMP/bad.err")"
check_eq "... and leaves no namespace" "" \
  "$(ls /run/netns 2>/dev/null | grep -x "$(run_ns "$TMP/bad.err")" || true)"

# Two at once.
ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" --allow ok.run.test -- sh -c \
  'sleep 1; curl -s -m 3 -o /dev/null -w "%{http_code}" http://ok.run.test/' \
  >"$TMP/c1.out" 2>"$TMP/c1.err" &
C1=$!
ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" --allow ok.run.test -- sh -c \
  'sleep 1; curl -s -m 3 -o /dev/null -w "%{http_code}" http://ok.run.test/' \
  >"$TMP/c2.out" 2>"$TMP/c2.err" &
C2=$!
wait "$C1" "$C2"
check "two concurrent runs get different namespaces ($(run_ns "$TMP/c1.err"), $(run_ns "$TMP/c2.err"))" \
  [ "$(run_ns "$TMP/c1.err")" != "$(run_ns "$TMP/c2.err")" ]
check_eq "... and both reach the allowed name" "200 200" "$(cat "$TMP/c1.out") $(cat "$TMP/c2.out")"
check "... and both leave nothing behind" gone "$(run_ns "$TMP/c1.err")"
check "..." gone "$(run_ns "$TMP/c2.err")"

# A run killed with SIGKILL cannot clean up; the next run does.
ip netns exec "$NS_SB" "$BIN" run "${RUNFLAGS[@]}" -- sleep 30 >/dev/null 2>"$TMP/s.err" &
RUNPID=$!
wait_until 10 grep -q "sandbox sgrun" "$TMP/s.err"
NS5=$(run_ns "$TMP/s.err")
SLEEPPID=$(pgrep -P "$RUNPID" -x sleep | head -1)
kill -KILL "$RUNPID"
wait "$RUNPID" 2>/dev/null
check "a run killed with SIGKILL leaves its namespace" [ -e "/run/netns/$NS5" ]
run_sb "$TMP/s2.out" "$TMP/s2.err" -- true
check_contains "the next run removes it and says so" "removed $NS5" "$(cat "$TMP/s2.err")"
check "... the stale namespace is gone" gone "$NS5"
check "... and the processes it left in it (CMD $SLEEPPID) are ended" \
  wait_until 3 eval '! proc_running '"${SLEEPPID:-0}"

e2e_finish
