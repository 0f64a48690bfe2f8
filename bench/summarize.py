#!/usr/bin/python3
"""Summarize the markdown tables printed by the shared dns-bench.sh (and the table helpers the
HTTP reports share: table_cells, system_mode_rows, num, med).

usage: summarize.py run1.md [run2.md ...]

Prints, per system, the median (over the runs) of QPS, p50, p99, SUT CPU % and QPS per SUT
core, then candidate / dnsdist-lua ratios and the targets (QPS >= 1.3x, p99 not higher).
"""
import statistics
import sys

CANDIDATE, PEER = "candidate", "dnsdist-lua"
QPS_TARGET = 1.3


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def table_cells(line):
    """The cells of a markdown table row; None for any other line and for the |---| rule."""
    line = line.strip()
    if not line.startswith("|") or line.startswith("|-"):
        return None
    return [c.strip() for c in line.strip("|").split("|")]


def system_mode_rows(lines):
    """-> {(system, mode): {column: value}} from the markdown table among lines (the per-run
    tables of the shared http-bench.sh, used by http-bench.sh's report and pool-http.py)."""
    rows, hdr = {}, None
    for line in lines:
        cells = table_cells(line)
        if cells is None:
            continue
        if cells[0] == "system":
            hdr = cells
        elif hdr:
            rows[(cells[0], cells[1])] = dict(zip(hdr, cells))
    return rows


def parse(path):
    """-> {system: {column: value}} for the DNS table in one file."""
    rows, hdr = {}, None
    with open(path, errors="replace") as f:
        for line in f:
            cells = table_cells(line)
            if cells is None:
                continue
            if cells and cells[0] == "system":
                hdr = cells
                continue
            if hdr:
                rows[cells[0]] = dict(zip(hdr, cells))
    return rows


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}"


def main(paths):
    runs = [parse(p) for p in paths]
    systems = []
    for r in runs:
        for s in r:
            if s not in systems:
                systems.append(s)
    cols = [("QPS", 0), ("avg ms", 3), ("p50 ms", 3), ("p99 ms", 3), ("lost", 0),
            ("SUT CPU %", 0), ("QPS per SUT core", 0)]
    summary = {}
    out = []
    hdr = ["system", "runs"] + [f"median {c}" for c, _ in cols] + \
          ["NXDOMAIN %", "policy probes", "QPS per run"]
    table = []
    for s in systems:
        rs = [r[s] for r in runs if s in r]
        ok = [x for x in rs if num(x.get("QPS")) is not None]
        m = {c: med([num(x.get(c)) for x in ok]) for c, _ in cols}
        summary[s] = m
        summary[s]["_qps_runs"] = [num(x.get("QPS")) for x in ok]
        summary[s]["_p99_runs"] = [num(x.get("p99 ms")) for x in ok]
        if not ok:
            note = rs[0].get("QPS", "") if rs else ""
            table.append([s, "0"] + ["n/a"] * len(cols) + ["", "", note])
            continue
        nx = sorted({x.get("NXDOMAIN %", "") for x in ok})
        probes = sorted({x.get("policy probes", "") for x in ok})
        table.append([s, str(len(ok))] + [fmt(m[c], nd) for c, nd in cols] +
                     ["/".join(nx), "/".join(probes),
                      " / ".join(x.get("QPS", "") for x in ok)])
    w = [max(len(hdr[i]), *(len(r[i]) for r in table)) for i in range(len(hdr))]
    out.append("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)) + " |")
    out.append("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in table:
        out.append("| " + " | ".join(r[i].ljust(w[i]) for i in range(len(hdr))) + " |")

    c, p = summary.get(CANDIDATE), summary.get(PEER)
    if c and p and c["QPS"] and p["QPS"]:
        qr = c["QPS"] / p["QPS"]
        er = (c["QPS per SUT core"] / p["QPS per SUT core"]
              if c["QPS per SUT core"] and p["QPS per SUT core"] else None)
        out.append("")
        out.append(f"{CANDIDATE} / {PEER} (ratio of medians):")
        out.append(f"  QPS           {qr:.2f}x   (target >= {QPS_TARGET}x: "
                   f"{'MET' if qr >= QPS_TARGET else 'NOT MET'})")
        out.append(f"  QPS per core  {fmt(er, 2)}x")
        if c["p99 ms"] is not None and p["p99 ms"] is not None:
            out.append(f"  p99           {c['p99 ms']:.3f} ms vs {p['p99 ms']:.3f} ms "
                       f"(target: not higher: {'MET' if c['p99 ms'] <= p['p99 ms'] else 'NOT MET'})")
        per_run = [f"{a / b:.2f}" for a, b in zip(c["_qps_runs"], p["_qps_runs"]) if a and b]
        if per_run:
            out.append(f"  QPS ratio per run: {' / '.join(per_run)}")
        d = summary.get(next((s for s in systems if s.startswith("upstream-direct")), ""), None)
        if d and d.get("QPS"):
            out.append(f"  ceiling (direct) {d['QPS']:.0f} QPS: candidate at "
                       f"{100 * c['QPS'] / d['QPS']:.0f} %, {PEER} at {100 * p['QPS'] / d['QPS']:.0f} %")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1:])
