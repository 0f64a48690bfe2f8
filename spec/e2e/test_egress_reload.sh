#!/usr/bin/env bash
# Policy scripts end to end: reload on a change of the script file (mv and
# in-place write) and on SIGHUP, a broken script keeps the old one running
# (reload_broken/*.lua), and a decide call that loops, fails, exhausts memory
# or returns nonsense denies that one query while the rest keeps working.
#
# usage: test_egress_reload.sh path/to/sandgate
source "$(dirname "$0")/lib.sh" "$@"

RULES='{"defaultAction":"deny","egress":[{"action":"allow","target":"always.example"}]}'
POL=$TMP/pol
SCRIPT=$POL/egress.lua
mkdir -p "$POL" "$TMP/real"

# policy_text ALLOW: the script allowing ALLOW (plus the document's names).
policy_text() { sed "s/@ALLOW@/$1/" "$E2E_DIR/reload_policy.lua.in"; }
# install_mv FILE: replaces the script by a rename, as deployment tools do.
install_mv() {
  cp "$1" "$POL/.egress.lua.new"
  mv -f "$POL/.egress.lua.new" "$SCRIPT"
}

# expect_names WHAT ALLOWED DENIED...: one dig each, through interception.
# Allowed names must resolve, denied ones get NXDOMAIN.
expect_names() {
  local what=$1 allowed=$2 name bad=()
  shift 2
  dig_sb "$allowed" A
  [ "$(dig_rcode "$DIG_OUT")" == NOERROR ] && [ "$(dig_ancount "$DIG_OUT")" -ge 1 ] ||
    bad+=("$allowed: $(dig_rcode "$DIG_OUT"), wanted NOERROR")
  for name in "$@"; do
    dig_sb "$name" A
    [ "$(dig_rcode "$DIG_OUT")" == NXDOMAIN ] || bad+=("$name: $(dig_rcode "$DIG_OUT"), wanted NXDOMAIN")
  done
  dig_sb always.example A
  [ "$(dig_rcode "$DIG_OUT")" == NOERROR ] || bad+=("always.example (from the document): $(dig_rcode "$DIG_OUT")")
  if [ ${#bad[@]} -eq 0 ]; then
    ok "$what: $allowed allowed, $* denied, the document still applies"
  else
    not_ok "$what: $allowed allowed, $* denied, the document still applies"
    diag "${bad[@]}"
  fi
}

reloads() { log_count "$SG_LOG" event=policy.reloaded "trigger=$1"; }
failures() { log_count "$SG_LOG" event=policy.reload_failed; }
log_has_more() { [ "$(reloads "$2")" -gt "$1" ]; } # COUNT TRIGGER
failures_more() { [ "$(failures)" -gt "$1" ]; }    # COUNT

topo_up || { not_ok "network namespaces set up"; e2e_finish; }
dnsmasq_start main "$UP4" "$UP6" 53 || { not_ok "upstream dnsmasq started"; e2e_finish; }

policy_text x.example >"$SCRIPT"
SANDGATE_EGRESS_SCRIPT=$SCRIPT SANDGATE_SCRIPT_TIMEOUT_MS=200 OPENSANDBOX_EGRESS_RULES=$RULES \
  sg_start reload --script-memory 32 || { not_ok "sandgate started with a custom script"; e2e_finish; }
check_eq "egress.started names the custom script" 1 "$(log_count "$SG_LOG" event=egress.started "script=$SCRIPT")"
expect_names "custom script" x.example y.example z.example a.example
check_eq "the script's verdict carries its rule into the log" 1 \
  "$(log_count "$SG_LOG" event=dns.query name=x.example verdict=allow "rule=script allows x.example")"

# ---- a file change reloads without a signal ---------------------------------

policy_text y.example >"$TMP/y.lua"
before=$(reloads file-change)
install_mv "$TMP/y.lua"
wait_until 5 log_has_more "$before" file-change
check "mv of a new script over the old one: policy.reloaded (trigger file-change)" log_has_more "$before" file-change
expect_names "after the mv" y.example x.example z.example

before=$(reloads file-change)
policy_text z.example >"$SCRIPT" # in place: same inode
wait_until 5 log_has_more "$before" file-change
check "an in-place rewrite of the script: policy.reloaded (trigger file-change)" log_has_more "$before" file-change
expect_names "after the in-place rewrite" z.example x.example y.example

# Other files in the watched directory do not reload the script.
before=$(reloads file-change)
echo "unrelated" >"$POL/notes.txt"
sleep 0.5
check_eq "a change to another file in the script's directory does not reload" "$before" "$(reloads file-change)"

# ---- broken scripts leave the running one in place -------------------------

for f in "$E2E_DIR"/reload_broken/*.lua; do
  kind=$(basename "$f" .lua)
  wants=()
  while IFS= read -r w; do wants+=("error~=$w"); done < <(sed -n 's/^-- expect: //p' "$f")
  before=$(failures)
  install_mv "$f"
  if wait_until 5 failures_more "$before"; then
    line=$(grep '"event":"policy.reload_failed"' "$SG_LOG" | tail -n1)
    if [ "$(log_count <(echo "$line") trigger=file-change "script=$SCRIPT" "${wants[@]}" "kept=previous script")" == 1 ]; then
      ok "broken script ($kind): policy.reload_failed, error has ${wants[*]#error~=}"
    else
      not_ok "broken script ($kind): policy.reload_failed, error has ${wants[*]#error~=}"
      diag "$line"
    fi
  else
    not_ok "broken script ($kind): policy.reload_failed logged"
    tail -n 3 "$SG_LOG" | diag
  fi
  expect_names "broken script ($kind): the previous script still decides" z.example x.example y.example
done

# A deleted script cannot be reloaded either.
before=$(failures)
rm -f "$SCRIPT"
wait_until 5 failures_more "$before"
check_eq "script deleted: policy.reload_failed (No such file or directory)" 1 \
  "$(log_count <(grep '"event":"policy.reload_failed"' "$SG_LOG" | tail -n1) trigger=file-change 'error~=No such file or directory')"
expect_names "script deleted: the previous script still decides" z.example x.example y.example

# ---- SIGHUP ------------------------------------------------------------------

# The script path becomes a symlink into a directory that is not watched:
# editing the target changes nothing until SIGHUP.
policy_text x.example >"$TMP/real/egress.lua"
before=$(reloads file-change)
ln -sfn "$TMP/real/egress.lua" "$POL/.egress.lua.link"
mv -fT "$POL/.egress.lua.link" "$SCRIPT"
wait_until 5 log_has_more "$before" file-change
expect_names "script replaced by a symlink (file-change reload)" x.example y.example z.example
policy_text y.example >"$TMP/real/egress.lua.new"
mv -f "$TMP/real/egress.lua.new" "$TMP/real/egress.lua"
sleep 0.4 # longer than the 100 ms debounce: no file-change reload expected
if [ "$(reloads file-change)" != "$((before + 1))" ]; then
  echo "# note: a file-change reload saw the symlink target change; the SIGHUP check below proves less"
fi
before=$(reloads SIGHUP)
kill -HUP "$SG_PID"
wait_until 5 log_has_more "$before" SIGHUP
check "SIGHUP: policy.reloaded (trigger SIGHUP)" log_has_more "$before" SIGHUP
expect_names "after SIGHUP" y.example x.example z.example

cp "$E2E_DIR/reload_broken/syntax.lua" "$TMP/real/egress.lua.new"
mv -f "$TMP/real/egress.lua.new" "$TMP/real/egress.lua"
before=$(failures)
kill -HUP "$SG_PID"
wait_until 5 failures_more "$before"
check_eq "SIGHUP with a broken script: policy.reload_failed (trigger SIGHUP)" 1 \
  "$(log_count <(grep '"event":"policy.reload_failed"' "$SG_LOG" | tail -n1) trigger=SIGHUP 'error~=egress.lua:5:')"
expect_names "after SIGHUP with a broken script: the previous script still decides" y.example x.example
check "sandgate is still running after the reloads" proc_running "$SG_PID"

# ---- decide failures deny one query -------------------------------------------

for name in loop.example loop.example; do
  before=$(log_count "$SG_LOG" event=policy.decide_failed name=loop.example)
  dig_sb "$name" A
  check_dig "endless loop in decide: NXDOMAIN" NXDOMAIN -
  if [ "$DIG_MS" -ge 150 ] && [ "$DIG_MS" -lt 1000 ]; then
    ok "endless loop in decide: cut off after the 200 ms budget ($DIG_MS ms)"
  else
    not_ok "endless loop in decide: cut off after the 200 ms budget"
    diag "took $DIG_MS ms"
  fi
  check_eq "endless loop in decide: policy.decide_failed (time budget)" $((before + 1)) \
    "$(log_count "$SG_LOG" event=policy.decide_failed name=loop.example verdict=deny 'error~=time budget of 200 ms')"
  dig_sb y.example A
  check_dig "after the endless loop another name resolves at once ($DIG_MS ms)" NOERROR 192.0.2.22
done

dig_sb boom.example A
check_dig "runtime error in decide: NXDOMAIN" NXDOMAIN -
check_eq "runtime error in decide: policy.decide_failed with file:line" 1 \
  "$(log_count "$SG_LOG" event=policy.decide_failed name=boom.example verdict=deny 'error~=egress.lua:' 'error~=boom in decide')"
dig_sb verdict.example A
check_dig "decide returning 42: NXDOMAIN" NXDOMAIN -
check_eq "decide returning 42: policy.decide_failed" 1 \
  "$(log_count "$SG_LOG" event=policy.decide_failed name=verdict.example 'error~=decide returned 42')"
dig_sb hog.example A
check_dig "decide exhausting memory (--script-memory 32): NXDOMAIN" NXDOMAIN -
check_eq "decide exhausting memory: policy.decide_failed" 1 \
  "$(log_count "$SG_LOG" event=policy.decide_failed name=hog.example verdict=deny)"
dig_sb +tcp boom.example A
check_dig "runtime error in decide over TCP: NXDOMAIN" NXDOMAIN -
expect_names "after the failing decide calls the script still decides" y.example x.example boom.example

# A reload after all that still works.
policy_text z.example >"$TMP/real/egress.lua.new"
mv -f "$TMP/real/egress.lua.new" "$TMP/real/egress.lua"
before=$(reloads SIGHUP)
kill -HUP "$SG_PID"
wait_until 5 log_has_more "$before" SIGHUP
expect_names "SIGHUP after the failures" z.example y.example loop.example

# A burst of signals: each reload replaces the VM whole; nothing breaks.
before=$(reloads SIGHUP)
for i in $(seq 20); do kill -HUP "$SG_PID"; done
wait_until 5 log_has_more "$before" SIGHUP
sleep 0.3
check "20 SIGHUPs in a row: reloaded, still running" log_has_more "$before" SIGHUP
expect_names "after 20 SIGHUPs" z.example y.example

# A burst of writes (the script is a regular file again) is debounced into
# few reloads, and the last content wins.
policy_text x.example >"$TMP/x.lua"
install_mv "$TMP/x.lua"
wait_until 5 log_has_more "$(reloads file-change)" file-change
sleep 0.3
before=$(reloads file-change)
for i in 1 2 3 4 5 6 7 8 9; do policy_text y.example >"$SCRIPT"; policy_text z.example >"$SCRIPT"; done
wait_until 5 log_has_more "$before" file-change
sleep 0.5
after=$(reloads file-change)
if [ "$after" -gt "$before" ] && [ "$after" -le $((before + 5)) ]; then
  ok "18 quick rewrites of the script: $((after - before)) reload(s) (debounced)"
else
  not_ok "18 quick rewrites of the script: a few reloads (debounced)"
  diag "reloads: $before -> $after"
fi
expect_names "after the burst of writes: the last content applies" z.example x.example y.example
check_eq "every log line is one JSON object" 0 "$("$PY" "$DNSCLIENT" json-lines "$SG_LOG")"

sg_stop
check_eq "sandgate stops with status 0" 0 "$SG_RC"
e2e_finish
