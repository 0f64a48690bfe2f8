#!/usr/bin/python3
"""Pools the rounds of several bench/http-bench.sh reports.

usage: pool-http.py bench/results/http-A.md [http-B.md ...]

Reads the per-run tables ("Run N:" sections) of each report and prints, per mode, the median
over every round of all reports of the candidate's and nginx-lua's req/s and p99, the median of
the per-round ratios, and issue 5's targets (req/s >= 1.2x nginx-lua, p99 not higher). One run
of the harness measures the systems one after the other, so a disturbance of the box hits one
system of a round and not the other; with many rounds, the medians are what holds up.
Exit status 0 when both targets are met in every mode.
"""
import statistics
import sys

from summarize import num, system_mode_rows

CANDIDATE, PEER, TARGET = "candidate", "nginx-lua", 1.2


def rounds(path):
    """-> [{(system, mode): {column: value}}], one per "Run N:" table of one report."""
    sections = []
    with open(path, errors="replace") as f:
        for line in f:
            s = line.strip()
            if s.startswith("Run ") and s.endswith(":"):
                sections.append([])
            elif s.startswith("## ") and sections:
                break  # the per-run tables are over
            elif sections:
                sections[-1].append(s)
    return [system_mode_rows(lines) for lines in sections]


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
    met_all, per_round = True, {}
    for m in modes:
        pairs = [(r[(CANDIDATE, m)], r[(PEER, m)]) for r in all_rounds
                 if (CANDIDATE, m) in r and (PEER, m) in r]
        if not pairs:
            continue
        mc = statistics.median(num(c["req/s"]) for c, _ in pairs)
        mp = statistics.median(num(p["req/s"]) for _, p in pairs)
        c99 = statistics.median(num(c["p99 ms"]) for c, _ in pairs)
        p99 = statistics.median(num(p["p99 ms"]) for _, p in pairs)
        ratios = per_round[m] = [num(c["req/s"]) / num(p["req/s"]) for c, p in pairs]
        ok = mc / mp >= TARGET and c99 <= p99
        met_all &= ok
        print(f"| {m} | {len(pairs)} | {mc:.0f} | {mp:.0f} | **{mc / mp:.2f}x** | {statistics.median(ratios):.2f}x "
              f"| {sum(x >= TARGET for x in ratios)}/{len(ratios)} | {c99:.3f} | {p99:.3f} "
              f"| {'MET' if ok else 'NOT MET'} |")
    print("\nper-round ratios:")
    for m, ratios in per_round.items():
        print(f"  {m}: " + " / ".join(f"{x:.2f}" for x in ratios))
    return 0 if met_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
