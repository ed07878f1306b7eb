#!/usr/bin/env bash
# Does MAML++'s multi-step loss help? Sinusoid regression (Finn et al. 2017, K = 10),
# MAML with 5 inner steps of 0.01, meta-batch 25, trained with and without the
# multi-step loss (annealed over the first MSL meta-iterations), several seeds, each
# evaluated on 1000 test tasks (MSE after 0, 1 and 10 steps, K = 5 and 10).
#
#   bash scripts/mamlpp-sinusoid.sh [ITERATIONS] [SEEDS] [MSL] >> bench/mamlpp-sinusoid.jsonl
#
# Prints one JSON line per run: {"msl_iterations", "seed", "iterations", "train_s",
# "mse": [...]} (eval --json's entries). Runs go to runs/mamlpp-sine-*.
# PERENNIAL_BIN names a built binary to use instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
iters=${1:-10000}; seeds=${2:-3}; msl=${3:-2000}
perennial_bin
for seed in $(seq 0 $((seeds - 1))); do
  for m in 0 "$msl"; do
    run=runs/mamlpp-sine-msl$m-s$seed
    rm -rf "$run"
    t0=$(date +%s.%N)
    $P -q --threads 1 train maml --dataset sinusoid --shots 10 --episodes "$iters" --inner-steps 5 \
      --msl-iterations "$m" --val-every 0 --seed "$seed" --out "$run" >&2
    t1=$(date +%s.%N)
    ev=$($P -q --threads 1 eval "$run" --episodes 1000 --json)
    python3 - "$ev" "$m" "$seed" "$iters" "$t0" "$t1" <<'PY'
import json, sys
ev, m, seed, iters, t0, t1 = sys.argv[1:]
r = {"msl_iterations": int(m), "seed": int(seed), "iterations": int(iters), "inner_steps": 5,
     "train_s": round(float(t1) - float(t0), 1), "mse": json.loads(ev)["mse"]}
print(json.dumps(r))
PY
  done
done
