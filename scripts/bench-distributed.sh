#!/usr/bin/env bash
# Issue #22's speed rows on one machine: the same meta-steps on 1 process x 2 threads
# and on 2 ranks x 1 thread (data-parallel, Gloo on loopback), one after the other,
# plus the all-reduce's time and bytes per step (in the ranked lines'
# `data_parallel`). Run it on an otherwise idle machine.
#
#   bash scripts/bench-distributed.sh > bench/distributed-DATE.jsonl
#
# Lines: maml2_5w1s15q_mb32 (32 tasks a step, 16 a rank) and protonet_20w5s15q with
# two episodes a step (one a rank; `--tasks 2` on both sides, so the work is the same).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/install-gloo.sh
DATA=${PERENNIAL_DATA:-../shared/data}
if [ -z "${P:-}" ]; then
  cargo build --release --locked -p perennial-cli >&2
  P=./target/release/perennial
fi
for spec in "maml maml2_5w1s15q_mb32 32" "protonet protonet_20w5s15q 2"; do
  set -- $spec
  PERENNIAL_BENCH_THREADS=2 $P -q bench "$1" --bench "$2" --tasks "$3" --data-dir "$DATA"
  PERENNIAL_BENCH_THREADS=1 $P -q bench "$1" --bench "$2" --tasks "$3" --ranks 2 --data-dir "$DATA"
done
