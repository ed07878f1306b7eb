#!/usr/bin/env bash
# Does MAML++'s per-step batch norm help on Omniglot? Second-order MAML, 5-way 1-shot,
# the given inner steps in training (three at test), meta-batch MB, ITERATIONS
# meta-iterations, learn2learn's Conv4 initialisation; trained with and without
# --per-step-bn at the same time (one thread each), each evaluated on 1000 test
# episodes (Vinyals test split).
#
#   bash scripts/mamlpp-omniglot.sh [ITERATIONS] [INNER_STEPS] [MB] [SEED] >> bench/mamlpp-omniglot.jsonl
#
# Prints one JSON line per run (eval --json's, with the settings and train_s added).
# Runs go to runs/mamlpp-omni-*. PERENNIAL_BIN names a built binary to use.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
iters=${1:-200}; steps=${2:-2}; mb=${3:-8}; seed=${4:-0}
DATA=${PERENNIAL_DATA:-../shared/data}
perennial_bin
one() {
  local bn=$1 flag=""
  [ "$bn" = 1 ] && flag=--per-step-bn
  local run=runs/mamlpp-omni-bn$bn-$iters-s$steps-mb$mb-seed$seed
  rm -rf "$run"
  local t0 t1 ev
  t0=$(date +%s.%N)
  $P -q --threads 1 train maml --ways 5 --shots 1 --queries 15 --episodes "$iters" --meta-batch "$mb" \
    --inner-steps "$steps" --eval-steps 3 --val-every 0 --init maml --seed "$seed" $flag \
    --data-dir "$DATA" --out "$run" >&2
  t1=$(date +%s.%N)
  ev=$($P -q --threads 1 eval "$run" --ways 5 --shots 1 --queries 15 --episodes 1000 --json)
  python3 - "$ev" "$bn" "$iters" "$steps" "$mb" "$seed" "$t0" "$t1" <<'PY'
import json, sys
ev, bn, iters, steps, mb, seed, t0, t1 = sys.argv[1:]
r = json.loads(ev)
r.update(per_step_bn=bn == "1", iterations=int(iters), inner_steps=int(steps), meta_batch=int(mb),
         seed=int(seed), train_s=round(float(t1) - float(t0), 1))
print(json.dumps(r))
PY
}
tmp=$(mktemp -d)
one 0 >"$tmp/a" & a=$!
one 1 >"$tmp/b" & b=$!
wait $a; wait $b
cat "$tmp/a" "$tmp/b"
rm -rf "$tmp"
