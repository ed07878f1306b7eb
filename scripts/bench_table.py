"""Markdown table of Perennial vs peer benchmark lines (JSON lines), with ratios.

    python3 scripts/bench_table.py results.jsonl

For each bench: the median of each implementation's per-round medians, and the ratio
of Perennial's speed to the faster of the peer implementations.
"""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(lambda: defaultdict(list))
rss = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if "bench" not in r or "median_s" not in r:
        continue
    rows[r["bench"]][r["impl"]].append(r["median_s"])
    rss[r["bench"]][r["impl"]].append(r.get("peak_rss_mb") or float("nan"))

print("| bench | perennial | pytorch | learn2learn | speed-up vs faster peer | peak RSS MB (perennial / pytorch / l2l) |")
print("|---|---:|---:|---:|---:|---:|")
for bench, impls in rows.items():
    med = {k: statistics.median(v) for k, v in impls.items()}
    mem = {k: max(v) for k, v in rss[bench].items()}
    peers = [med[k] for k in ("pytorch", "learn2learn") if k in med]
    ratio = f"{min(peers) / med['perennial']:.2f}x" if peers and "perennial" in med else ""
    fmt = lambda k: (f"{med[k] * 1e3:.2f} ms" if k in med else "")
    fm = lambda k: (f"{mem[k]:.0f}" if k in mem else "-")
    print(f"| {bench} | {fmt('perennial')} | {fmt('pytorch')} | {fmt('learn2learn')} | {ratio} | {fm('perennial')} / {fm('pytorch')} / {fm('learn2learn')} |")
