#!/usr/bin/env python3
"""Summarise scripts/continual-vs-avalanche.sh output: mean ± std (sample, over seeds) of
ACC, BWT (percent) and wall time per (strategy, system), and the wall-time ratio; with
--svg FILE, also plot the mean accuracy on the tasks seen so far along the stream for
every (strategy, system), averaged over seeds.

    python3 scripts/continual_table.py bench/continual-avalanche-DATE.jsonl [--svg FILE]
"""
import json
import statistics
import sys


def ms(values, scale=100.0, digits=2):
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


COLOURS = {"naive": "#777777", "ewc": "#1f77b4", "agem": "#2ca02c", "er": "#d62728", "joint": "#9467bd",
           "mer": "#ff7f0e", "lamaml": "#17becf"}
STREAM_NAMES = {"permuted-mnist": "Permuted-MNIST", "rotated-mnist": "Rotated-MNIST", "split-mnist": "Split-MNIST"}


def seen_curve(matrix):
    """Mean accuracy on tasks 0..=i after task i, for every i."""
    return [statistics.mean(row[: i + 1]) for i, row in enumerate(matrix)]


def svg_plot(rows, path):
    streams = {r.get("stream", "permuted-mnist") for rs in rows.values() for r in rs}
    title = " / ".join(STREAM_NAMES.get(t, t) for t in sorted(streams))
    w, h, left, right, top, bottom = 760, 460, 60, 190, 40, 50
    curves = []
    for (strategy, system), rs in sorted(rows.items()):
        cs = [seen_curve(r["matrix"]) for r in rs]
        n = min(len(c) for c in cs)
        curves.append((strategy, system, [statistics.mean(c[i] for c in cs) for i in range(n)]))
    tmax = max(len(c) for _, _, c in curves)
    x = lambda t: left + (t - 1) / max(tmax - 1, 1) * (w - left - right)
    y = lambda v: top + (1 - v) * (h - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{title}, GEM protocol: accuracy on tasks seen (mean over seeds)</text>']
    for v in [0, 0.2, 0.4, 0.6, 0.8, 1.0]:
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4}" text-anchor="end">{v:.1f}</text>')
    for t in range(1, tmax + 1, max(1, tmax // 10)):
        out.append(f'<text x="{x(t)}" y="{h - bottom + 18}" text-anchor="middle">{t}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">tasks learnt</text>')
    for k, (strategy, system, c) in enumerate(curves):
        colour = COLOURS.get(strategy, "#000")
        dash = "" if system == "perennial" else ' stroke-dasharray="6,4"'
        pts = " ".join(f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(c))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        ly = top + 14 + 18 * k
        out.append(f'<line x1="{w - right + 12}" x2="{w - right + 40}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{w - right + 46}" y="{ly + 4}">{strategy} ({system})</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(path, svg=None):
    rows, timing = {}, {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("timing"):
            timing[(r["strategy"], r["system"])] = r["wall_s"]
            continue
        rows.setdefault((r["strategy"], r["system"]), []).append(r)
    order = ["naive", "ewc", "agem", "er", "joint"]
    strategies = sorted({k[0] for k in rows}, key=lambda s: order.index(s) if s in order else 99)
    print("| strategy | system | seeds | ACC % | BWT % | wall s | paired wall s | time ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in strategies:
        ours = rows.get((s, "perennial"), [])
        theirs = rows.get((s, "avalanche"), [])
        ratio = ""
        if (s, "perennial") in timing and (s, "avalanche") in timing:
            ratio = f"{timing[(s, 'avalanche')] / timing[(s, 'perennial')]:.1f}x (paired)"
        elif ours and theirs:
            ratio = f"{statistics.mean(r['wall_s'] for r in theirs) / statistics.mean(r['wall_s'] for r in ours):.1f}x"
        for system, rs in (("perennial", ours), ("avalanche", theirs)):
            if not rs:
                continue
            paired = f"{timing[(s, system)]:.1f}" if (s, system) in timing else "-"
            cells = [
                s,
                system,
                str(len(rs)),
                ms([r["acc"] for r in rs]),
                ms([r["bwt"] for r in rs]),
                ms([r["wall_s"] for r in rs], 1.0, 1),
                paired,
                ratio if system == "perennial" else "",
            ]
            print("| " + " | ".join(cells) + " |")
    if svg:
        svg_plot(rows, svg)


if __name__ == "__main__":
    args = sys.argv[1:]
    svg = None
    if "--svg" in args:
        i = args.index("--svg")
        if i + 1 >= len(args):
            sys.exit("usage: continual_table.py FILE.jsonl [--svg FILE]")
        svg = args[i + 1]
        del args[i : i + 2]
    if len(args) != 1:
        sys.exit("usage: continual_table.py FILE.jsonl [--svg FILE]")
    main(args[0], svg)
