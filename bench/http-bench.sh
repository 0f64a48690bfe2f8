#!/usr/bin/env bash
# sandgate ingress vs nginx+Lua and haproxy+Lua: runs the shared HTTP harness
# (../shared/bench/http-bench.sh) RUNS times with `sandgate ingress` in its candidate slot and
# writes the medians, the ratios against nginx-lua and the issue-5 targets (req/s >= 1.2x
# nginx-lua in header and URI modes with one worker, p99 not higher) to
# bench/results/http-<UTC date>.md.
#
# The candidate routes with bench/harness-route.lua, a custom routing script implementing the
# harness' grammar (header X-Sandbox-Route: sb<i>-8080, URI /sandboxes/<id>/port/<port>/<rest>);
# the harness' routes file reaches it through --script-config:
#   sandgate ingress --script bench/harness-route.lua --script-config {ROUTES} --workers 1
#     --admin-addr off --listen {LISTEN_ADDR} --port {LISTEN_PORT}
# The binary is copied first (a rebuild during the bench cannot change it between runs) and runs
# with SANDGATE_HOME=<repo> (its Lua modules and shipped scripts).
#
# Before each run the script waits (up to QUIET_WAIT s) until the host spends under QUIET_MAX % of
# one core over 2 s. During each run a sampler records the CPU that processes outside this bench
# used ("other CPU", kernel threads excluded), so a disturbed run can be told from a slow one.
# Each run rotates the order of the proxies (direct stays first): a disturbance that lasts a
# few rows does not hit the same system every run.
#
# Env (ours):
#   RUNS=3                                  rounds of the shared http-bench.sh (medians)
#   RESULTS_DIR=<repo>/bench/results        the report: http-<UTC date>.md
#   SHARED_BENCH=<repo>/../shared/bench     the shared harness
#   SANDGATE_BIN=<repo>/build/sandgate      (not built here: build it first)
#   SANDGATE_ARGS=''                        extra flags appended to the candidate command
#   ROUTE_SCRIPT=<repo>/bench/harness-route.lua
#   CANDIDATE_HTTP_CMD                      overrides the whole candidate command
#   QUIET_MAX=25 QUIET_WAIT=600             see above
#   ROTATE=1                                0 keeps the harness' order in every run
#   REDO_OTHER=20 REDO_MAX=3                a run during which other processes used more than
#                                           REDO_OTHER % of one core is discarded and done again
#                                           (at most REDO_MAX times in all); the report lists it
#   RSS=1                                   then runs bench/ingress-rss.sh (gateway memory with
#                                           1000 idle keep-alive clients, same binary and script)
#                                           and adds its table to the report; 0 skips it
#   KEEP_WORK=1                             keeps the raw outputs (/tmp/sghttp.*); 0 removes them
# Env (passed through to the harness, see its README):
#   SYSTEMS="direct nginx-lua nginx-map haproxy-lua haproxy-map candidate" MODES="header uri"
#   DURATION=10 CONNS=64 WRK_THREADS=1 BACKENDS=8 N_ROUTES=1000 PIN=1 SUT_CPU=0 LOAD_CPU=1
#   BASE_PORT=29100 (backends 29101.., proxy 29080; the harness default 18100 is shared with
#   anyone running the harness by hand, and ports from 32768 up are ephemeral ports here)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/.." && pwd))
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
SHARED_BENCH=$(cd "$SHARED_BENCH" 2>/dev/null && pwd) || {
  echo "shared harness not found (SHARED_BENCH=${SHARED_BENCH})" >&2; exit 2; }
[[ -x $SHARED_BENCH/http-bench.sh ]] || { echo "no $SHARED_BENCH/http-bench.sh" >&2; exit 2; }

RUNS=${RUNS:-3}
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
SANDGATE_BIN=${SANDGATE_BIN:-$REPO/build/sandgate}
ROUTE_SCRIPT=${ROUTE_SCRIPT:-$HERE/harness-route.lua}
QUIET_MAX=${QUIET_MAX:-25}; QUIET_WAIT=${QUIET_WAIT:-600}
ROTATE=${ROTATE:-1}
RSS=${RSS:-1}
REDO_OTHER=${REDO_OTHER:-20}; REDO_MAX=${REDO_MAX:-3}
KEEP_WORK=${KEEP_WORK:-1}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
export SYSTEMS=${SYSTEMS:-"direct nginx-lua nginx-map haproxy-lua haproxy-map candidate"}
export MODES=${MODES:-"header uri"}
export BASE_PORT=${BASE_PORT:-29100}
export DURATION=${DURATION:-10} CONNS=${CONNS:-64}
# WRK_THREADS BACKENDS N_ROUTES PIN SUT_CPU LOAD_CPU reach the harness as they are.

((RUNS >= 1 && RUNS <= 20)) || { echo "RUNS must be 1..20" >&2; exit 2; }
for t in nginx haproxy wrk curl taskset setsid "$PY"; do
  command -v "$t" >/dev/null || { echo "http-bench: $t is needed (run $SHARED_BENCH/setup.sh)" >&2; exit 2; }
done
[[ -x $SANDGATE_BIN ]] || { echo "http-bench: no $SANDGATE_BIN (build it first)" >&2; exit 2; }
[[ -r $ROUTE_SCRIPT ]] || { echo "http-bench: no $ROUTE_SCRIPT" >&2; exit 2; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

WORK=$(mktemp -d /tmp/sghttp.XXXXXX)
SAMPLER_PID=
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n $SAMPLER_PID ]]; then kill -TERM "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  if [[ $KEEP_WORK == 0 ]]; then rm -rf "$WORK"; else log "raw outputs in $WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$SANDGATE_BIN" "$WORK/sandgate"
cp "$ROUTE_SCRIPT" "$WORK/harness-route.lua"
export SANDGATE_HOME=${SANDGATE_HOME:-$REPO}
export CANDIDATE_HTTP_CMD=${CANDIDATE_HTTP_CMD:-"$WORK/sandgate ingress --script $WORK/harness-route.lua \
--script-config {ROUTES} --workers 1 --admin-addr off --listen {LISTEN_ADDR} --port {LISTEN_PORT}${SANDGATE_ARGS:+ $SANDGATE_ARGS}"}

# ---------- quiet host, other CPU ----------
host_ticks() { # busy (user+nice+system+irq+softirq) and total, all CPUs, clock ticks
  local _ u n sy idle iow irq sirq st
  read -r _ u n sy idle iow irq sirq st _ </proc/stat
  echo "$((u + n + sy + irq + sirq)) $((u + n + sy + idle + iow + irq + sirq + st))"
}
NCPU=$(nproc)
wait_quiet() {
  local waited=0 a b busy
  while :; do
    read -ra a <<<"$(host_ticks)"; sleep 2; read -ra b <<<"$(host_ticks)"
    busy=$(( (b[0] - a[0]) * 100 * NCPU / (b[1] - a[1] > 0 ? b[1] - a[1] : 1) ))
    if ((busy <= QUIET_MAX)); then ((waited)) && log "host quiet after ${waited}s (${busy} % of a core)"; return 0; fi
    if ((waited >= QUIET_WAIT)); then log "host still busy (${busy} % of a core), going on"; return 0; fi
    ((waited == 0)) && log "host busy (${busy} % of a core > QUIET_MAX=$QUIET_MAX): waiting up to ${QUIET_WAIT}s"
    sleep 8; waited=$((waited + 10))
  done
}

# The sampler: every second, the CPU ticks of every process that is not a descendant of this
# script (nor a kernel thread), with the time of their reaped children (so short-lived
# processes count too, once their parent has reaped them); on TERM it writes "<other % of one core> <steal % of one core> <top consumers>".
cat >"$WORK/other_cpu.py" <<'EOF'
import os, signal, sys, time
root, out = int(sys.argv[1]), sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
def snap():
    """pid -> (ppid, own ticks, ticks of its reaped children, comm)"""
    ps = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            s = open("/proc/%s/stat" % d).read()
        except OSError:
            continue
        r = s.rfind(")")
        f = s[r + 2:].split()
        ps[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), s[s.find("(") + 1:r])
    return ps
def foreign(ps, pid):
    q, n = pid, 0
    while q > 2 and n < 64:
        if q == root:
            return False
        q, n = ps.get(q, (0,))[0], n + 1
    return q != 2 and pid != 2      # kernel threads are children of kthreadd (2)
def steal():
    f = open("/proc/stat").readline().split()
    return int(f[8]), sum(int(x) for x in f[1:9])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
t0, prev, by, st0 = time.monotonic(), snap(), {}, steal()
ncpu = os.cpu_count() or 1
while not stop:
    time.sleep(1)
    cur = snap()
    for pid, (pp, own, kids, comm) in cur.items():
        if not foreign(cur, pid):
            continue
        # own and reaped children's time: a short-lived process run by a long-lived one (a
        # test runner, make) shows up in its parent's children ticks once reaped
        d = own + kids - (prev[pid][1] + prev[pid][2] if pid in prev else 0)
        if d > 0:
            by[comm] = by.get(comm, 0) + d
    for pid, (pp, own, kids, comm) in prev.items():
        # seen last time and reaped since: its whole time just went into its parent's
        # children ticks, of which the part up to the last sample was counted already
        if pid not in cur and pp in cur and pp in prev and foreign(prev, pid):
            c = cur[pp][3]
            by[c] = by.get(c, 0) - (own + kids)
    prev = cur
wall = max(time.monotonic() - t0, 1e-3)
st1 = steal()
stp = (st1[0] - st0[0]) * 100.0 * ncpu / max(st1[1] - st0[1], 1)
tot = max(sum(by.values()), 0) * 100.0 / hz / wall
top = sorted(by.items(), key=lambda kv: -kv[1])[:3]
with open(out, "w") as f:
    f.write("%.0f %.0f %s\n" % (tot, stp, ",".join("%s:%.0f" % (c, v * 100.0 / hz / wall) for c, v in top) or "-"))
EOF

# ---------- runs ----------
ts=$(date -u +%Y-%m-%dT%H%M%SZ)
git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
git_dirty=$(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true)
HEADER=$WORK/header.md
{
  echo "# sandgate ingress vs nginx+Lua / haproxy+Lua ($ts)"
  echo
  echo "* binary: \`$SANDGATE_BIN\` ($(stat -c '%y' "$SANDGATE_BIN" | cut -d. -f1), sha256 $(sha256sum "$SANDGATE_BIN" | cut -c1-12), run from a copy), git $git_rev, $git_dirty changed file(s); SANDGATE_HOME=$SANDGATE_HOME"
  echo "* host: $NCPU cores, $(uname -r); load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "* harness: \`$SHARED_BENCH/http-bench.sh\`, RUNS=$RUNS, DURATION=${DURATION}s, CONNS=$CONNS, WRK_THREADS=${WRK_THREADS:-1}," \
       "BACKENDS=${BACKENDS:-8}, N_ROUTES=${N_ROUTES:-1000}, PIN=${PIN:-1} (SUT on CPU${SUT_CPU:-0}; wrk + backends on CPU${LOAD_CPU:-1}), BASE_PORT=$BASE_PORT"
  echo "* candidate: \`${CANDIDATE_HTTP_CMD//$WORK/<work>}\` (<work>/harness-route.lua = \`${ROUTE_SCRIPT#"$REPO"/}\`)"
} >"$HEADER"
cat "$HEADER" >&2

proxies=()
for s in $SYSTEMS; do [[ $s == direct ]] || proxies+=("$s"); done
RUNLOG=$WORK/runs.tsv   # run  order  load-before  other-cpu  steal  other-top  used|discarded  harness-workdir
: >"$RUNLOG"
files=()
used=0 redone=0 i=0
while ((used < RUNS)); do
  i=$((i + 1))
  order=("${proxies[@]}")
  if [[ $ROTATE == 1 ]] && ((${#order[@]} > 1)); then
    k=$(( used % ${#order[@]} ))
    order=("${order[@]:k}" "${order[@]:0:k}")
  fi
  sys_order=${order[*]}
  [[ " $SYSTEMS " == *" direct "* ]] && sys_order="direct $sys_order"
  wait_quiet
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  out=$WORK/run$i.md
  log "run $i ($((used + 1))/$RUNS): $sys_order (load avg $load_before) -> $out"
  "$PY" "$WORK/other_cpu.py" "$$" "$WORK/other$i.txt" &
  SAMPLER_PID=$!
  SYSTEMS=$sys_order "$SHARED_BENCH/http-bench.sh" >"$out" 2>"$WORK/run$i.log" || log "run $i: the harness failed (see $WORK/run$i.log)"
  kill -TERM "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
  cat "$out"
  hw=$(sed -n 's/^(raw outputs in \(.*\))$/\1/p' "$out")
  read -r other steal top <"$WORK/other$i.txt" || { other=?; steal=?; top=-; }
  verdict=used
  if [[ $other =~ ^[0-9]+$ ]] && ((other > REDO_OTHER && redone < REDO_MAX)); then
    verdict="discarded (other CPU > $REDO_OTHER %)"; redone=$((redone + 1))
  else
    used=$((used + 1)); files+=("$out")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$sys_order" "$load_before" "$other" "$steal" "$top" "$verdict" "${hw:--}" >>"$RUNLOG"
  log "run $i: other CPU ${other} % of a core ($top), steal ${steal} %: $verdict"
  # The candidate's log and wrk outputs, kept with ours (the harness leaves its workdir behind).
  if [[ -n $hw && -d $hw ]]; then
    for f in "$hw"/candidate.log "$hw"/candidate.*.wrk; do
      [[ -e $f ]] && cp "$f" "$WORK/run$i-$(basename "$f")"
    done
    if [[ $KEEP_WORK == 0 ]]; then rm -rf "$hw"; fi
  fi
done

# ---------- memory ----------
if [[ $RSS == 1 ]]; then
  wait_quiet
  log "memory: bench/ingress-rss.sh"
  SANDGATE_BIN=$WORK/sandgate ROUTE_SCRIPT=$WORK/harness-route.lua RESULTS_DIR=$WORK \
    "$HERE/ingress-rss.sh" >"$WORK/rss.md" 2>"$WORK/rss.log" || log "ingress-rss.sh failed (see $WORK/rss.log)"
  cat "$WORK/rss.md"
fi

# ---------- report ----------
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/http-$ts.md
{
  cat "$HEADER"
  echo
  "$PY" - "$HERE" "$RUNLOG" "$WORK" "${files[@]}" <<'EOF'
import glob, os, re, statistics, sys
sys.path.insert(0, sys.argv[1])
from summarize import med, num, system_mode_rows
runlog, work, paths = sys.argv[2], sys.argv[3], sys.argv[4:]
PEER, CAND, TARGET = "nginx-lua", "candidate", 1.2
COLS = ["req/s", "avg ms", "p50 ms", "p99 ms", "non-2xx", "socket errors", "routing probes",
        "SUT CPU %", "req/s per SUT core"]

runs = [system_mode_rows(open(p, errors="replace")) for p in paths]
keys = []
for r in runs:
    for k in r:
        if k not in keys:
            keys.append(k)
order = ["direct-backend", "nginx-lua", "nginx-map", "haproxy-lua", "haproxy-map", "candidate"]
modes = []
for _, m in keys:
    if m not in modes:
        modes.append(m)
keys.sort(key=lambda k: (modes.index(k[1]), order.index(k[0]) if k[0] in order else 99, k[0]))

def f(x, nd=0):
    return "n/a" if x is None else "%.*f" % (nd, x)

S = {}
print(f"## Medians of {len(runs)} run(s)")
print()
print("| system | mode | req/s | avg ms | p50 ms | p99 ms | non-2xx | socket errors | routing probes | SUT CPU % | req/s per SUT core | req/s vs nginx-lua | req/s per run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in keys:
    rs = [r[k] for r in runs if k in r]
    ok = [x for x in rs if num(x.get("req/s")) is not None]
    if not ok:
        print(f"| {k[0]} | {k[1]} | {rs[0].get('req/s', 'n/a') if rs else 'n/a'} |" + " |" * 10)
        continue
    m = {c: med([num(x.get(c)) for x in ok]) for c in COLS if c != "routing probes"}
    m["runs"] = [num(x["req/s"]) for x in ok]
    m["p99s"] = [num(x["p99 ms"]) for x in ok]
    m["non2xx"] = sum(int(num(x.get("non-2xx")) or 0) for x in ok)
    m["sockerr"] = sum(int(num(x.get("socket errors")) or 0) for x in ok)
    m["probes"] = "/".join(sorted({x.get("routing probes", "") for x in ok}))
    S[k] = m
for k in keys:
    if k not in S:
        continue
    m, p = S[k], S.get((PEER, k[1]))
    ratio = f"{m['req/s'] / p['req/s']:.2f}x" if p and k[0] not in ("direct-backend",) else ""
    print(f"| {k[0]} | {k[1]} | {f(m['req/s'])} | {f(m['avg ms'], 3)} | {f(m['p50 ms'], 3)} | {f(m['p99 ms'], 3)} | "
          f"{m['non2xx']} | {m['sockerr']} | {m['probes']} | {f(m['SUT CPU %'])} | {f(m['req/s per SUT core'])} | {ratio} | "
          f"{' / '.join(f(x) for x in m['runs'])} |")
print()
print("non-2xx and socket errors are sums over the runs; every other column is the median of that column "
      "over the runs (so SUT CPU % and req/s per SUT core may come from different runs).")
print()
print(f"## Targets (issue 5): req/s >= {TARGET}x nginx-lua, p99 not higher, one worker")
print()
print("| mode | req/s candidate / nginx-lua (medians) | per run | per SUT core | p99 candidate vs nginx-lua (ms) | p99 per run (candidate / nginx-lua) | errors | result |")
print("|---|---|---|---|---|---|---|---|")
verdicts = []
for mode in modes:
    c, p = S.get((CAND, mode)), S.get((PEER, mode))
    if not c or not p:
        print(f"| {mode} | n/a | | | | | | not measured |")
        verdicts.append(False)
        continue
    qr = c["req/s"] / p["req/s"]
    per = " / ".join(f"{a / b:.2f}" for a, b in zip(c["runs"], p["runs"]) if a and b)
    er = (c["req/s per SUT core"] / p["req/s per SUT core"]
          if c["req/s per SUT core"] and p["req/s per SUT core"] else None)
    p99ok = c["p99 ms"] is not None and p["p99 ms"] is not None and c["p99 ms"] <= p["p99 ms"]
    clean = c["non2xx"] == 0 and c["sockerr"] == 0 and c["probes"] == "ok"
    met = qr >= TARGET and p99ok and clean
    verdicts.append(met)
    p99r = " / ".join(f"{f(a, 3)}/{f(b, 3)}" for a, b in zip(c["p99s"], p["p99s"]))
    print(f"| {mode} | **{qr:.2f}x** ({'met' if qr >= TARGET else 'NOT met'}) | {per} | {f(er, 2)}x | "
          f"{f(c['p99 ms'], 3)} vs {f(p['p99 ms'], 3)} ({'met' if p99ok else 'NOT met'}) | {p99r} | "
          f"{'none' if clean else 'non-2xx %d, socket %d, probes %s' % (c['non2xx'], c['sockerr'], c['probes'])} | "
          f"{'MET' if met else 'NOT MET'} |")
d = {m: S.get(("direct-backend", m)) for m in modes}
ceil = [f"{m} {f(d[m]['req/s'])} req/s (candidate at {100 * S[(CAND, m)]['req/s'] / d[m]['req/s']:.0f} %)"
        for m in modes if d.get(m) and S.get((CAND, m))]
if ceil:
    print()
    print("Ceiling (wrk straight to a backend, same CPU1 work): " + "; ".join(ceil) + ".")
print()
print("## Runs")
print()
print("Other CPU: what processes outside this bench used during the run (kernel threads excluded; "
      "short-lived processes are counted once their parent reaps them), in % of one core, and the top three by name; "
      "steal: the hypervisor's, in % of one core. The SUT CPU % column shows when the proxy could not "
      "get its core: at saturation it reads 95-99.")
print()
print("| run | order | load avg before | other CPU % | steal % | top other | in the medians |")
print("|---|---|---|---|---|---|---|")
for line in open(runlog):
    i, order, load, other, steal, top, verdict, hw = line.rstrip("\n").split("\t")
    print(f"| {i} | {order} | {load} | {other} | {steal} | {top} | {verdict} |")
# What the candidate logged above info level (errors under load would show here).
notes = []
for p in sorted(glob.glob(os.path.join(work, "run*-candidate.log"))):
    bad = [l.strip() for l in open(p, errors="replace")
           if '"level":"warn"' in l or '"level":"error"' in l or "fatal" in l.lower()]
    if bad:
        notes.append(f"* {os.path.basename(p)}: {len(bad)} warn/error line(s), first: `{bad[0][:300]}`")
print()
print("Candidate log lines at warn or error: " + ("none." if not notes else ""))
if notes:
    print()
    print("\n".join(notes))
print()
print("## Per-run tables (as the harness printed them)")
for p in paths:
    print()
    n = re.search(r"run(\d+)\.md$", p).group(1)
    print(f"Run {n}:")
    print()
    for line in open(p, errors="replace"):
        if line.startswith("|"):
            print(line.rstrip("\n"))
EOF
  if [[ $RSS == 1 ]]; then
    echo
    echo "## Memory with idle keep-alive clients (bench/ingress-rss.sh)"
    if grep -q '^|' "$WORK/rss.md" 2>/dev/null; then sed '1d' "$WORK/rss.md"; else echo; echo "failed: see $WORK/rss.log"; fi
  fi
  echo
  echo "Raw outputs: $WORK (per-run tables and harness logs, candidate logs and wrk outputs)"
} | tee "$REPORT"
log "report: $REPORT"
