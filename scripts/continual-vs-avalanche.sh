#!/usr/bin/env bash
# Issue #4's side-by-side with Avalanche: the GEM Permuted-MNIST protocol (20 tasks of
# 1000 examples, one pass, batch 10, SGD 0.1, MLP 784-100-100-10, every test image), the
# same strategies and settings in both systems, over a set of seeds.
#
#   PEER_PY=../peer-venv/bin/python AVALANCHE_PATH=../aval-site \
#     bash scripts/continual-vs-avalanche.sh [SEEDS] [STRATEGIES] >> bench/continual-avalanche.jsonl
#
# SEEDS default "0 1 2 3 4"; STRATEGIES default "naive ewc agem er". Prints one JSON line
# per run (ours: "system": "perennial", theirs: "system": "avalanche"), each with ACC, BWT,
# FWT, forgetting, the matrix and wall_s. Every run has one thread, and two runs go at a
# time (JOBS, default 2: one per core): all of ours first, then all of Avalanche's, so
# each run shares the machine with a run of its own system. SYSTEMS (default
# "perennial avalanche") runs one side alone. Each run's line is kept in
# runs/avalanche-cmp/lines/, so a killed comparison resumes where it stopped (delete that
# folder to start over). Summarise with
# scripts/continual_table.py. Our runs go to runs/avalanche-cmp/.
# STREAM (default permuted-mnist) runs ours on another stream (rotated-mnist,
# split-mnist); the peer script runs Permuted-MNIST only, so SYSTEMS must then be
# "perennial". Those runs go to runs/STREAM-cmp/.
# TIMING=1 instead times each strategy once (the first seed) side by side: Avalanche's
# run on one core while ours repeats on the other, so both see the same load; the
# table's time ratio comes from these lines when present.
# Avalanche 0.6.0 goes beside the peer venv without touching it:
#   ../peer-venv/bin/pip install --no-deps --target ../aval-site -r scripts/avalanche-requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
seeds=${1:-0 1 2 3 4}
strategies=${2:-naive ewc agem er}
export PEER_PY=${PEER_PY:-../peer-venv/bin/python}
export DATA=${PERENNIAL_DATA:-../shared/data}
export PYTHONPATH=${AVALANCHE_PATH:-../aval-site}${PYTHONPATH:+:$PYTHONPATH}
cargo build --release --locked -p perennial-cli >&2
export P=${P:-./target/release/perennial}
export STREAM=${STREAM:-permuted-mnist}
export root=runs/avalanche-cmp
systems=${SYSTEMS:-perennial avalanche}
if [ "$STREAM" != permuted-mnist ]; then
  root=runs/$STREAM-cmp
  if [ "$systems" != perennial ]; then
    echo "STREAM=$STREAM: the Avalanche peer runs permuted-mnist only; set SYSTEMS=perennial" >&2
    exit 2
  fi
fi
mkdir -p "$root/lines"
job() {
  local system=$1 s=$2 seed=$3 n=1
  [ "$system" = avalanche ] && n=2
  local line=$root/lines/$n-$s-$seed
  # Finished runs are kept: a killed comparison resumes where it stopped.
  [ -s "$line" ] && return 0
  if [ "$system" = perennial ]; then
    local out=$root/$s-s$seed
    rm -rf "$out"
    $P -q --threads 1 continual --stream "$STREAM" --strategy "$s" --seed "$seed" \
      --data-dir "$DATA" --out "$out" >&2
    python3 - "$out/result.json" > "$line.tmp" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keep = ["strategy", "seed", "acc", "bwt", "fwt", "forgetting", "matrix", "baseline", "wall_s", "peak_rss_mb"]
line = {"system": "perennial", "stream": r["stream"], "threads": 1}
line.update({k: r[k] for k in keep})
print(json.dumps(line))
PY
  else
    "$PEER_PY" scripts/avalanche_peer.py --strategy "$s" --seed "$seed" --threads 1 \
      --data "$DATA" > "$line.tmp"
  fi
  mv "$line.tmp" "$line"
}
export -f job
if [ -n "${TIMING:-}" ]; then
  # Timing pairs: one Avalanche run (first seed) on one core while ours repeats on the
  # other, so both are timed under the same load; ours reports the median of its runs.
  mkdir -p "$root/timing"
  seed=${seeds%% *}
  for s in $strategies; do
    "$PEER_PY" scripts/avalanche_peer.py --strategy "$s" --seed "$seed" --threads 1 \
      --data "$DATA" > "$root/timing/2-$s" &
    pid=$!
    k=0
    while kill -0 $pid 2>/dev/null; do
      k=$((k + 1))
      rm -rf "$root/timing/$s-$k"
      $P -q --threads 1 continual --stream permuted-mnist --strategy "$s" --seed "$seed" \
        --data-dir "$DATA" --out "$root/timing/$s-$k" >&2
    done
    wait $pid
    python3 - "$root/timing" "$s" "$k" <<'PY'
import json, statistics, sys
root, s, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
walls = [json.load(open(f"{root}/{s}-{i}/result.json"))["wall_s"] for i in range(1, k + 1)]
theirs = json.loads(open(f"{root}/2-{s}").read())
theirs.pop("matrix", None)
theirs["timing"] = True
print(json.dumps(theirs))
print(json.dumps({"system": "perennial", "strategy": s, "seed": theirs["seed"], "timing": True,
                  "threads": 1, "wall_s": statistics.median(walls), "runs": walls}))
PY
  done
  exit 0
fi
for system in $systems; do
  for s in $strategies; do for seed in $seeds; do echo "$system $s $seed"; done; done
done | xargs -P "${JOBS:-2}" -L 1 bash -c 'set -e; job "$@"' _
cat "$root"/lines/1-* "$root"/lines/2-* 2>/dev/null || true
