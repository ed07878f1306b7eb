"""Markdown tables of the metric family's accuracy runs (scripts/metric-omniglot.sh lines).

    python3 scripts/metric_table.py bench/metric-omniglot-2026-12-03.jsonl [RUN_PREFIX...]

One row per run (those whose name starts with a RUN_PREFIX, when given), one column per evaluation setting (accuracy ± 95% CI in percent), then
the paper's numbers under the first run of each learner that has one.
"""
import json
import sys
from collections import OrderedDict

PAPERS = {
    "relation": ("Sung et al. 2018", {"5w1s": 99.6, "5w5s": 99.8, "20w1s": 97.6, "20w5s": 99.1}),
    "matching": ("Vinyals et al. 2016", {"5w1s": 98.1, "5w5s": 98.9, "20w1s": 93.8, "20w5s": 98.5}),
}
SETTINGS = ["5w1s", "5w5s", "20w1s", "20w5s"]

runs = OrderedDict()
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if len(sys.argv) > 2 and not any(r["run"].startswith(p) for p in sys.argv[2:]):
        continue
    runs.setdefault(r["run"], {"train": r["train"], "cells": {}})["cells"][r["setting"]] = r

printed = set()
print("| run | training | " + " | ".join(SETTINGS) + " |")
print("|---|---|" + "---:|" * len(SETTINGS))
for name, run in runs.items():
    cells = []
    for s in SETTINGS:
        r = run["cells"].get(s)
        cells.append(f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}" if r else "")
    print(f"| {name} | `{run['train']}` | " + " | ".join(cells) + " |")
    algorithm = run["train"].split()[0]
    if algorithm in PAPERS and algorithm not in printed:
        printed.add(algorithm)
        paper, numbers = PAPERS[algorithm]
        print(f"| {paper} | (paper) | " + " | ".join(f"{numbers[s]:.1f}" for s in SETTINGS) + " |")
