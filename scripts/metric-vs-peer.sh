#!/usr/bin/env bash
# Issue #20's reduced-budget rows: Perennial's Relation Network and Matching Network
# against the same models in plain PyTorch (scripts/peer_train_metric.py), the same
# budget and hyperparameters on the same data, trained at the same time (one thread
# each, so both sides share the machine's load), then evaluated on 1000 test episodes.
#
#   PEER_PY=~/.cache/perennial/peer-serve-venv/bin/python bash scripts/metric-vs-peer.sh [EPISODES] > bench/metric-vs-peer-DATE.jsonl
#
# One JSON line per (implementation, algorithm) on stdout ("episodes": training
# episodes, as the peer's lines). Runs go to runs/vs-peer-*.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
episodes=${1:-2000}
PEER_PY=${PEER_PY:-../peer-venv/bin/python}
DATA=${PERENNIAL_DATA:-../shared/data}
if [ -z "${P:-}" ]; then
  cargo build --release --locked -p perennial-cli >&2
  P=./target/release/perennial
fi
ours() {
  local alg=$1 out=runs/vs-peer-$1-$episodes
  shift
  rm -rf "$out"
  $P -q --threads 1 train "$alg" --ways 5 --shots 1 --queries 15 --episodes "$episodes" \
    --val-every 0 --seed 0 --data-dir "$DATA" --out "$out" "$@" >&2
  local r
  r=$($P -q --threads 1 eval "$out" --ways 5 --shots 1 --episodes 1000 --json --data-dir "$DATA")
  # train_s: the training loop's own clock (metrics.jsonl), data loading excluded as
  # the peer's is.
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); m=json.loads(open(sys.argv[4]).read().splitlines()[-1]); r.update(impl="perennial", algorithm=sys.argv[2], eval_episodes=r["episodes"], episodes=int(sys.argv[3]), train_s=m["elapsed_s"], threads=1); print(json.dumps(r))' \
    "$r" "$alg" "$episodes" "$out/metrics.jsonl"
}
for alg in relation matching; do
  ours "$alg" > /tmp/metric-vs-peer-ours.$$ &
  pid=$!
  PERENNIAL_DATA=$DATA "$PEER_PY" scripts/peer_train_metric.py --algorithm "$alg" --ways 5 --shots 1 \
    --queries 15 --episodes "$episodes" --eval-episodes 1000 --threads 1 --seed 0
  wait $pid
  cat /tmp/metric-vs-peer-ours.$$
done
rm -f /tmp/metric-vs-peer-ours.$$
