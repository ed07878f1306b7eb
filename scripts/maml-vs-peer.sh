#!/usr/bin/env bash
# The reduced-budget accuracy protocol of issue #3: one optimisation-based algorithm
# trained with the same network, hyperparameters and budget by Perennial and by the
# Python peer (learn2learn; plain PyTorch for Reptile), each evaluated on 1000 test
# episodes (Vinyals test split), in one session on the same threads.
#
#   PEER_PY=../peer-venv/bin/python bash scripts/maml-vs-peer.sh ALGORITHM WAYS ITERATIONS [META_BATCH] [INNER_LR] >> bench/maml-accuracy.jsonl
#
# ALGORITHM: maml, fomaml, anil, metasgd or reptile. Prints two JSON lines (ours, then
# the peer's) with accuracy, ci95 and train_s. Runs go to runs/protocol-*.
# INIT (default maml) is our Conv4 initialisation: maml matches learn2learn's CNN4
# (Xavier-uniform convolutions, zero biases, batch-norm scales U(0, 1)), which the peer uses.
# PARALLEL=1 runs the two sides at the same time (give each THREADS=1 on a 2-core
# machine): both then see the same machine load, so their times stay comparable even
# when something else runs beside them. PERENNIAL_BIN names a built binary to use
# instead of building one (a copy outside target/ lets you rebuild during a long run).
# SEED (default 0) seeds both sides' training; a non-zero one adds -seedN to the run's name.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
alg=$1; ways=$2; iters=$3; mb=${4:-32}; lr=${5:-0.4}
threads=${THREADS:-2}
seed=${SEED:-0}
PEER_PY=${PEER_PY:-../peer-venv/bin/python}
DATA=${PERENNIAL_DATA:-../shared/data}
steps=1; eval_steps=3
[ "$alg" = metasgd ] && eval_steps=1
[ "$alg" = reptile ] && { steps=5; eval_steps=10; }
perennial_bin
run=runs/protocol-$alg-${ways}w1s-$iters-mb$mb
[ "$seed" != 0 ] && run=$run-seed$seed
rm -rf "$run"
ours() {
t0=$(date +%s.%N)
$P -q --threads "$threads" train "$alg" --ways "$ways" --shots 1 --queries 15 --episodes "$iters" \
  --meta-batch "$mb" --inner-lr "$lr" --inner-steps $steps --eval-steps $eval_steps \
  --val-every 0 --init "${INIT:-maml}" --seed "$seed" --data-dir "$DATA" --out "$run" >&2
t1=$(date +%s.%N)
ours=$($P -q --threads "$threads" eval "$run" --ways "$ways" --shots 1 --queries 15 --episodes 1000 --json)
python3 - "$ours" "$alg" "$ways" "$iters" "$mb" "$lr" "$threads" "$seed" "$t0" "$t1" <<'PY'
import json, os, sys
r = json.loads(sys.argv[1])
alg, ways, iters, mb, lr, threads, seed, t0, t1 = sys.argv[2:]
r.update(impl="perennial", init=os.environ.get("INIT", "maml"), algorithm=alg, ways=int(ways), shots=1, iterations=int(iters),
         meta_batch=int(mb), inner_lr=float(lr), threads=int(threads), seed=int(seed), train_s=float(t1) - float(t0))
print(json.dumps(r))
PY
}
peer() {
"$PEER_PY" scripts/peer_train_maml.py --algorithm "$alg" --ways "$ways" --shots 1 --queries 15 \
  --iterations "$iters" --meta-batch "$mb" --inner-lr "$lr" --inner-steps $steps --eval-steps $eval_steps \
  --eval-episodes 1000 --threads "$threads" --seed "$seed" --data-dir "$DATA"
}
if [ "${PARALLEL:-0}" = 1 ]; then
  tmp=$(mktemp -d)
  ours >"$tmp/ours" & a=$!
  peer >"$tmp/peer" & b=$!
  wait $a; wait $b
  cat "$tmp/ours" "$tmp/peer"
  rm -rf "$tmp"
else
  ours
  peer
fi
