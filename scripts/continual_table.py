#!/usr/bin/env python3
"""Summarise scripts/continual-vs-avalanche.sh output: mean ± std (sample, over seeds) of
ACC, BWT (percent) and wall time per (strategy, system), and the wall-time ratio.

    python3 scripts/continual_table.py bench/continual-avalanche-DATE.jsonl
"""
import json
import statistics
import sys


def ms(values, scale=100.0, digits=2):
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        rows.setdefault((r["strategy"], r["system"]), []).append(r)
    order = ["naive", "ewc", "agem", "er", "joint"]
    strategies = sorted({k[0] for k in rows}, key=lambda s: order.index(s) if s in order else 99)
    print("| strategy | system | seeds | ACC % | BWT % | wall s | time ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in strategies:
        ours = rows.get((s, "perennial"), [])
        theirs = rows.get((s, "avalanche"), [])
        ratio = ""
        if ours and theirs:
            ratio = f"{statistics.mean(r['wall_s'] for r in theirs) / statistics.mean(r['wall_s'] for r in ours):.1f}x"
        for system, rs in (("perennial", ours), ("avalanche", theirs)):
            if not rs:
                continue
            print(
                f"| {s} | {system} | {len(rs)} | {ms([r['acc'] for r in rs])} | "
                f"{ms([r['bwt'] for r in rs])} | {ms([r['wall_s'] for r in rs], 1.0, 1)} | "
                f"{ratio if system == 'perennial' else ''} |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: continual_table.py FILE.jsonl")
    main(sys.argv[1])
