# Shared by spec/e2e/test_*.sh: network namespaces, servers, checks, cleanup.
#
# A test script does:
#
#   source "$(dirname "$0")/lib.sh" "$@"     # $1 = path to the sandgate binary
#   topo_up                                  # upstream + sandbox namespaces
#   dnsmasq_start main "$UP4" "$UP6" 53 ...  # upstream DNS server(s)
#   sg_start NAME [flags...]                 # sandgate egress in the sandbox
#   check "what" command...                  # one ok/not ok line per check
#   e2e_finish                               # stops everything, sanitizer scan,
#                                            # "N passed, M failed", exit code
#
# Everything created carries the prefix sge2e-<pid of the test script>, so
# parallel and stale runs never collide; namespaces of dead runs are removed
# at start. Nothing outside those namespaces (host network, host ruleset,
# /etc/resolv.conf) is touched. Processes are only ever ended by the PID
# recorded when this script started them.
#
# Environment: E2E_KEEP=1 keeps the temp dir (logs) after the run;
# E2E_VERBOSE=1 prints each sandgate log at the end.

set -u

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3 # Debian's interpreter (see TESTING.md)
DNSCLIENT="$E2E_DIR/dnsclient.py"

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 path/to/sandgate" >&2
  exit 2
fi
BIN=$(readlink -f "$1")

if [ "$(id -u)" != 0 ]; then
  echo "not ok - these end-to-end tests need root (network namespaces, nftables)"
  echo "0 passed, 1 failed"
  exit 1
fi

for tool in ip nft dnsmasq dig setpriv getent "$PY"; do
  if ! command -v "$tool" >/dev/null; then
    echo "not ok - $tool is needed (dnsmasq-base, dnsutils, nftables, util-linux, python3)"
    echo "0 passed, 1 failed"
    exit 1
  fi
done

# The sanitizer build reports leaks at exit (ctest runs it like this) and
# stops at the first error; the log scan in e2e_finish catches the report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

E2E_ID=sge2e-$$
NS_UP=$E2E_ID-up
NS_SB=$E2E_ID-sb
# The namespaces are isolated from the host and from each other's runs, so
# any subnet works; deriving it from the PID only keeps logs of parallel runs
# apart.
X=$(($$ % 200 + 20))
UP4=10.$X.0.1        # main upstream (dnsmasq), the sandbox's resolv.conf
DEAD4=10.$X.0.2      # an upstream address with nothing listening: ICMP unreachable
DROP4A=10.$X.0.3     # upstream addresses whose traffic the upstream netns drops
DROP4B=10.$X.0.5
ALT4=10.$X.0.4       # second upstream (dnsmasq --edns-packet-max=512, ...)
SB4=10.$X.0.10       # the sandbox
UP6=fd5e:e2e:$X::1
ALT6=fd5e:e2e:$X::4
SB6=fd5e:e2e:$X::10

E2E_PASS=0
E2E_FAIL=0
E2E_PIDS=()   # every background process this script started
E2E_LOGS=()   # every sandgate log (scanned for sanitizer reports)
E2E_FINISHED=0
E2E_T0=$(date +%s%N)
TMP=$(mktemp -d "/tmp/$E2E_ID.XXXXXX")
# Readable by the unprivileged user of the no-CAP_NET_ADMIN scenario.
chmod 755 "$TMP"

# ---- reporting --------------------------------------------------------------

ok() {
  E2E_PASS=$((E2E_PASS + 1))
  echo "ok - $*"
}

not_ok() {
  E2E_FAIL=$((E2E_FAIL + 1))
  echo "not ok - $*"
}

# Prints its arguments (or stdin) as "#" lines: detail after a failure.
diag() {
  if [ $# -gt 0 ]; then
    printf '%s\n' "$*" | sed 's/^/#   /'
  else
    sed 's/^/#   /'
  fi
}

# check WHAT COMMAND...: ok when the command succeeds.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}

# check_eq WHAT EXPECTED ACTUAL
check_eq() {
  if [ "$2" == "$3" ]; then
    ok "$1"
  else
    not_ok "$1"
    diag "expected: $2" "actual:   $3"
  fi
}

# check_contains WHAT NEEDLE HAYSTACK (fixed string)
check_contains() {
  if [[ "$3" == *"$2"* ]]; then
    ok "$1"
  else
    not_ok "$1"
    diag "expected to contain: $2"
    printf '%s\n' "$3" | head -n 20 | diag
  fi
}

# check_not_contains WHAT NEEDLE HAYSTACK
check_not_contains() {
  if [[ "$3" != *"$2"* ]]; then
    ok "$1"
  else
    not_ok "$1"
    diag "expected not to contain: $2"
    printf '%s\n' "$3" | head -n 20 | diag
  fi
}

# ---- time and waiting -------------------------------------------------------

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_until SECONDS COMMAND...: polls every 50 ms; status of the last try.
wait_until() {
  local limit=$(($(now_ms) + $1 * 1000))
  shift
  while true; do
    "$@" && return 0
    [ "$(now_ms)" -ge "$limit" ] && return 1
    sleep 0.05
  done
}

# A child that exited but was not reaped is a zombie: kill -0 still works on
# it, so "running" means present and not in state Z.
proc_running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

proc_gone() { ! proc_running "$1"; }

# wait_exit PID SECONDS: waits for a child of this shell to end and sets
# WAIT_RC to its exit status ("timeout" if it is still running). Not for use
# in $(...): a subshell cannot reap its parent's children.
wait_exit() {
  if wait_until "$2" proc_gone "$1"; then
    WAIT_RC=0
    wait "$1" 2>/dev/null || WAIT_RC=$?
  else
    WAIT_RC=timeout
  fi
}

# ---- namespaces -------------------------------------------------------------

# Removes namespaces (and what ran in them) left by runs whose script is gone.
stale_cleanup() {
  local ns pid p
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^sge2e-[0-9]*-' || true); do
    pid=${ns#sge2e-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
      ip netns del "$ns" 2>/dev/null
      rm -rf "/etc/netns/$ns"
    fi
  done
  for d in /tmp/sge2e-*.*; do
    [ -d "$d" ] || continue
    pid=${d#/tmp/sge2e-}
    pid=${pid%%.*}
    kill -0 "$pid" 2>/dev/null || rm -rf "$d"
  done
}

# in_up / in_sb COMMAND...: run in the upstream / sandbox namespace.
in_up() { ip netns exec "$NS_UP" "$@"; }
in_sb() { ip netns exec "$NS_SB" "$@"; }

link_up() { ip -n "$1" link show "$2" 2>/dev/null | grep -q 'state UP'; }

# Two namespaces joined by a veth pair. The upstream side holds every
# upstream address; the sandbox's resolv.conf names $UP4.
topo_up() {
  stale_cleanup
  ip netns add "$NS_UP" || return 1
  ip netns add "$NS_SB" || return 1
  # Created inside the upstream namespace: no interface ever appears on the
  # host.
  ip -n "$NS_UP" link add veth-up type veth peer name veth-sb netns "$NS_SB" || return 1
  local a
  ip -n "$NS_UP" link set lo up
  ip -n "$NS_SB" link set lo up
  for a in "$UP4" "$DEAD4" "$DROP4A" "$ALT4" "$DROP4B"; do
    ip -n "$NS_UP" addr add "$a/24" dev veth-up
  done
  ip -n "$NS_UP" -6 addr add "$UP6/64" dev veth-up nodad
  ip -n "$NS_UP" -6 addr add "$ALT6/64" dev veth-up nodad
  ip -n "$NS_SB" addr add "$SB4/24" dev veth-sb
  ip -n "$NS_SB" -6 addr add "$SB6/64" dev veth-sb nodad
  ip -n "$NS_UP" link set veth-up up
  ip -n "$NS_SB" link set veth-sb up
  # Silent upstreams: their queries vanish, so only a timeout ends them.
  in_up nft -f - <<EOF || return 1
table inet e2e_blackhole {
  chain input {
    type filter hook input priority 0; policy accept;
    ip daddr { $DROP4A, $DROP4B } drop
  }
}
EOF
  mkdir -p "/etc/netns/$NS_SB"
  printf 'nameserver %s\noptions timeout:2 attempts:1\n' "$UP4" >"/etc/netns/$NS_SB/resolv.conf"
  # The veth pair reports NO-CARRIER for a moment after "up".
  wait_until 5 link_up "$NS_UP" veth-up || return 1
  wait_until 5 link_up "$NS_SB" veth-sb || return 1
  return 0
}

# ---- processes --------------------------------------------------------------

e2e_kill() { # PID: TERM, then KILL after 3 s
  local pid=$1
  proc_running "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  if ! wait_until 3 proc_gone "$pid"; then
    kill -KILL "$pid" 2>/dev/null
    wait_until 2 proc_gone "$pid"
  fi
  wait "$pid" 2>/dev/null
  return 0
}

# dnsmasq_start NAME IPV4 IPV6 PORT [dnsmasq flags...]: runs a dnsmasq in the
# upstream namespace with the test records (spec/e2e/upstream_records.txt)
# plus the given flags; waits until it answers. Sets DNSMASQ_PID, and
# DNSMASQ_LOG_<NAME> to its log (it logs every query).
dnsmasq_start() {
  local name=$1 ip4=$2 ip6=$3 port=$4
  shift 4
  local log=$TMP/dnsmasq-$name.log
  local -a recs=()
  local line
  while IFS= read -r line; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    recs+=("$line")
  done <"$E2E_DIR/upstream_records.txt"
  ip netns exec "$NS_UP" dnsmasq --keep-in-foreground --log-facility=- --pid-file= \
    --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
    --listen-address="$ip4" --listen-address="$ip6" --port="$port" \
    --log-queries "${recs[@]}" "$@" 2>"$log" &
  DNSMASQ_PID=$!
  E2E_PIDS+=("$DNSMASQ_PID")
  printf -v "DNSMASQ_LOG_$name" '%s' "$log"
  if ! wait_until 10 dnsmasq_answers "$ip4" "$port"; then
    echo "# dnsmasq $name did not start:"
    diag <"$log"
    return 1
  fi
}

dnsmasq_answers() {
  in_up dig @"$1" -p "$2" +time=1 +tries=1 +short ready.example 2>/dev/null | grep -q .
}

# sg_start NAME [flags...]: starts `sandgate egress` in the sandbox with its
# stderr in $TMP/NAME.log and waits (bounded) for egress.started. Variables
# set in front of the call (VAR=x sg_start ...) reach sandgate's environment.
# Sets SG_PID and SG_LOG. Fails if the process ends or never gets ready.
# SG_WRAP (an array) may name a command that execs the rest (setpriv).
SG_WRAP=()
sg_start() {
  SG_LOG=$TMP/$1.log
  shift
  # ip (and a wrapper such as setpriv) exec the binary: $! is sandgate's
  # own PID.
  ip netns exec "$NS_SB" "${SG_WRAP[@]}" "$BIN" egress "$@" 2>"$SG_LOG" >>"$TMP/sandgate.stdout" &
  SG_PID=$!
  E2E_PIDS+=("$SG_PID")
  E2E_LOGS+=("$SG_LOG")
  if ! wait_until 20 sg_ready_or_dead "$SG_PID" "$SG_LOG" || ! proc_running "$SG_PID"; then
    echo "# sandgate did not start ($*):"
    diag <"$SG_LOG"
    return 1
  fi
}

# ing_start NAME [flags...]: `sandgate ingress` in the sandbox namespace
# with exactly these flags, its stderr in $TMP/NAME.log; waits (bounded) for
# ingress.started. Sets ING_PID and ING_LOG. Fails, showing the log, if it
# never gets ready.
ing_start() {
  ING_LOG=$TMP/$1.log
  shift
  ip netns exec "$NS_SB" "$BIN" ingress "$@" 2>"$ING_LOG" >>"$TMP/sandgate.stdout" &
  ING_PID=$!
  E2E_PIDS+=("$ING_PID")
  E2E_LOGS+=("$ING_LOG")
  if ! wait_until 10 grep -q '"event":"ingress.started"' "$ING_LOG"; then
    echo "# sandgate ingress did not start ($*):"
    diag <"$ING_LOG"
    return 1
  fi
}

sg_ready_or_dead() {
  grep -q '"event":"egress.started"' "$2" 2>/dev/null || ! proc_running "$1"
}

# sg_stop [PID]: SIGTERM and wait; sets SG_RC to the exit status
# ("timeout", after which it is killed, if it did not end within 15 s).
sg_stop() {
  local pid=${1:-$SG_PID}
  kill -TERM "$pid" 2>/dev/null
  wait_exit "$pid" 15
  SG_RC=$WAIT_RC
  if [ "$SG_RC" == timeout ]; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  # A UDP query that reuses a recent 5-tuple would follow the old NAT
  # mapping (conntrack keeps it 30 s) to the stopped instance's port: start
  # the next instance with a clean table, in the sandbox namespace only.
  in_sb conntrack -F >/dev/null 2>&1 || true
}

# sg_run_fg SECONDS [VAR=value...] [flags...]: runs `sandgate egress` in the
# foreground in the sandbox (a start that must fail); stderr goes to
# $FG_ERR, the exit status to $FG_RC (137: killed, still running after
# SECONDS).
FG_N=0
sg_run_fg() {
  local secs=$1
  shift
  local -a envs=()
  while [ $# -gt 0 ] && [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
    envs+=("$1")
    shift
  done
  FG_N=$((FG_N + 1))
  FG_ERR=$TMP/fg-$FG_N.log
  E2E_LOGS+=("$FG_ERR")
  FG_RC=0
  ip netns exec "$NS_SB" timeout -s KILL "$secs" env "${envs[@]}" "${SG_WRAP[@]}" "$BIN" egress "$@" \
    2>"$FG_ERR" >/dev/null || FG_RC=$?
}

# ---- DNS --------------------------------------------------------------------

# dig_sb [dig args...]: dig inside the sandbox (its resolv.conf names $UP4,
# so a plain query goes to port 53 and is intercepted). Output in $DIG_OUT,
# elapsed milliseconds in $DIG_MS.
dig_sb() {
  local t0
  t0=$(now_ms)
  DIG_OUT=$(in_sb dig +time=3 +tries=1 "$@" 2>&1)
  DIG_MS=$(($(now_ms) - t0))
}

dig_rcode() { sed -n 's/.*opcode: [A-Z]*, status: \([A-Z]*\),.*/\1/p' <<<"$1" | head -n1; }
dig_flags() { sed -n 's/^;; flags: \([a-z ]*\);.*/\1/p' <<<"$1" | head -n1; }
dig_ancount() { sed -n 's/.* ANSWER: \([0-9]*\),.*/\1/p' <<<"$1" | head -n1; }
# The answer section, one record per line.
dig_answers() { awk '/^;; ANSWER SECTION:/{f=1;next} /^$/{f=0} f' <<<"$1"; }
# The question section line (without the leading ";").
dig_question() { awk '/^;; QUESTION SECTION:/{getline; sub(/^;/,""); print; exit}' <<<"$1"; }

# check_dig WHAT RCODE ANSWER: checks $DIG_OUT. ANSWER is "-" (no records),
# "count=N", "*" (at least one) or a string one of the records contains.
check_dig() {
  local what=$1 want_rcode=$2 want=$3
  local rcode an answers good=1
  rcode=$(dig_rcode "$DIG_OUT")
  an=$(dig_ancount "$DIG_OUT")
  answers=$(dig_answers "$DIG_OUT")
  [ "$rcode" == "$want_rcode" ] || good=0
  case $want in
  -) [ "$an" == 0 ] || good=0 ;;
  '*') [ -n "$an" ] && [ "$an" -gt 0 ] || good=0 ;;
  count=*) [ "$an" == "${want#count=}" ] && [ "$(grep -c . <<<"$answers")" == "${want#count=}" ] || good=0 ;;
  *) grep -qF -- "$want" <<<"$answers" || good=0 ;;
  esac
  if [ $good == 1 ]; then
    ok "$what"
  else
    not_ok "$what"
    diag "expected $want_rcode / answer $want, got $rcode with $an answers ($DIG_MS ms):"
    grep -v '^$' <<<"$DIG_OUT" | head -n 25 | diag
  fi
}

# log_count FILE key=value...: number of JSON log lines with all these fields.
log_count() { "$PY" "$DNSCLIENT" log-count "$@"; }

# wait_log FILE SECONDS key=value...: waits for a matching line.
wait_log() {
  local f=$1 s=$2
  shift 2
  wait_until "$s" log_has "$f" "$@"
}
log_has() { [ "$(log_count "$@")" -gt 0 ]; }

# ---- end --------------------------------------------------------------------

# Sanitizer reports in any sandgate log are failures: ASan/LSan/UBSan errors,
# and LSan failing to run at all.
SANITIZER_RE='ERROR: [A-Za-z]*Sanitizer|Sanitizer has encountered a fatal error|Sanitizer:DEADLYSIGNAL|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'
sanitizer_scan() {
  local f bad=()
  for f in "${E2E_LOGS[@]}"; do
    [ -f "$f" ] || continue
    if grep -qE "$SANITIZER_RE" "$f"; then
      bad+=("$f")
    fi
  done
  if [ ${#bad[@]} -eq 0 ]; then
    ok "no sanitizer report in ${#E2E_LOGS[@]} sandgate logs"
  else
    not_ok "sanitizer reports in ${#bad[@]} sandgate logs"
    for f in "${bad[@]}"; do
      diag "$f:"
      grep -E -A 30 "$SANITIZER_RE" "$f" | head -n 60 | diag
    done
    E2E_KEEP=1
  fi
}

# Stops every process (sandgate first, gracefully, so a leak report is
# written), scans the logs, prints the summary and exits.
# Processes still running in this test's namespaces once every recorded PID
# is stopped: a server started through a shell function (whose $! is a
# subshell, TESTING.md) would live on after the run. Each is a failed check,
# and is stopped by the PID the namespace reports.
leak_check() {
  local ns p left=()
  for ns in "$NS_SB" "$NS_UP"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do
      left+=("$p:$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)")
      kill -KILL "$p" 2>/dev/null
    done
  done
  if [ ${#left[@]} -eq 0 ]; then
    ok "no process is left in the test's namespaces"
  else
    not_ok "no process is left in the test's namespaces"
    diag "left running (stopped now): ${left[*]}"
  fi
}

e2e_finish() {
  local p
  for p in "${E2E_PIDS[@]}"; do e2e_kill "$p"; done
  leak_check
  sanitizer_scan
  if [ "${E2E_VERBOSE:-0}" == 1 ]; then
    for p in "${E2E_LOGS[@]}"; do echo "# --- $p"; diag <"$p"; done
  fi
  local ms=$((($(date +%s%N) - E2E_T0) / 1000000))
  echo "# $(basename "$0") took $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
  echo "$E2E_PASS passed, $E2E_FAIL failed"
  E2E_FINISHED=1
  [ "$E2E_FAIL" -eq 0 ]
  exit $?
}

e2e_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${E2E_PIDS[@]}"; do e2e_kill "$p"; done
  if [ "$E2E_FINISHED" != 1 ]; then
    not_ok "$(basename "$0") ended before its last check (status $rc)"
    sanitizer_scan
    echo "$E2E_PASS passed, $E2E_FAIL failed"
    rc=1
  fi
  ip netns del "$NS_SB" 2>/dev/null
  ip netns del "$NS_UP" 2>/dev/null
  rm -rf "/etc/netns/$NS_SB" "/etc/netns/$NS_UP"
  if [ "${E2E_KEEP:-0}" == 1 ]; then
    echo "# logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}

trap e2e_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
