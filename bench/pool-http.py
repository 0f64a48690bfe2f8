#!/usr/bin/python3
"""Pools the rounds of several bench/http-bench.sh reports.

usage: pool-http.py bench/results/http-A.md [http-B.md ...]

Reads the per-run tables ("Run N:" sections) of each report and prints, per mode, the median
over every round of all reports of the candidate's and nginx-lua's req/s and p99, the median of
the per-round ratios, and issue 5's targets (req/s >= 1.2x nginx-lua, p99 not higher). One run
of the harness measures the systems one after the other, so a disturbance of the box hits one
system of a round and not the other; with many rounds, the medians are what holds up.
"""
import statistics
import sys

CANDIDATE, PEER, TARGET = "candidate", "nginx-lua", 1.2


def rounds(path):
    """-> [{(system, mode): {column: value}}] for each "Run N:" table of one report."""
    out, cur, hdr = [], None, None
    with open(path, errors="replace") as f:
        for line in f:
            s = line.strip()
            if s.startswith("Run ") and s.endswith(":"):
                cur, hdr = {}, None
                out.append(cur)
                continue
            if s.startswith("## ") and cur is not None and cur:
                cur = None
            if cur is None or not s.startswith("|") or s.startswith("|-"):
                continue
            cells = [c.strip() for c in s.strip("|").split("|")]
            if cells[0] == "system":
                hdr = cells
            elif hdr:
                cur[(cells[0], cells[1])] = dict(zip(hdr, cells))
    return out


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    all_rounds = [r for p in paths for r in rounds(p)]
    modes = sorted({m for r in all_rounds for (_, m) in r}, key=lambda m: (m != "header", m))
    print(f"{len(all_rounds)} rounds from {len(paths)} report(s)\n")
    print("| mode | rounds | candidate req/s | nginx-lua req/s | ratio of medians | median of per-round ratios "
          "| rounds >= 1.2x | candidate p99 ms | nginx-lua p99 ms | result |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    met_all = True
    for m in modes:
        pairs = [(r[(CANDIDATE, m)], r[(PEER, m)]) for r in all_rounds
                 if (CANDIDATE, m) in r and (PEER, m) in r]
        if not pairs:
            continue
        c_rps = [num(c["req/s"]) for c, _ in pairs]
        p_rps = [num(p["req/s"]) for _, p in pairs]
        c_p99 = [num(c["p99 ms"]) for c, _ in pairs]
        p_p99 = [num(p["p99 ms"]) for _, p in pairs]
        ratios = [a / b for a, b in zip(c_rps, p_rps)]
        mc, mp = statistics.median(c_rps), statistics.median(p_rps)
        ok = mc / mp >= TARGET and statistics.median(c_p99) <= statistics.median(p_p99)
        met_all &= ok
        print(f"| {m} | {len(pairs)} | {mc:.0f} | {mp:.0f} | **{mc / mp:.2f}x** | {statistics.median(ratios):.2f}x "
              f"| {sum(x >= TARGET for x in ratios)}/{len(ratios)} | {statistics.median(c_p99):.3f} "
              f"| {statistics.median(p_p99):.3f} | {'MET' if ok else 'NOT MET'} |")
    print("\nper-round ratios:")
    for m in modes:
        rs = [r[(CANDIDATE, m)] and num(r[(CANDIDATE, m)]["req/s"]) / num(r[(PEER, m)]["req/s"])
              for r in all_rounds if (CANDIDATE, m) in r and (PEER, m) in r]
        print(f"  {m}: " + " / ".join(f"{x:.2f}" for x in rs))
    return 0 if met_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
