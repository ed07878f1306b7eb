#!/usr/bin/env bash
# Issue #4's Omniglot class-incremental comparison: each strategy over the 600-class
# stream for a set of seeds (class orders), one JSON line per run on stdout (the run's
# result.json without its matrix and final_own_labels).
#
#   bash scripts/omniglot-classes.sh [SEEDS] [STRATEGIES] >> bench/omniglot-classes-DATE.jsonl
#
# SEEDS default "0 1 2 3 4"; STRATEGIES default "perennial oml lamaml". ENCODER (default
# runs/lake-60w5s-3k) is the ProtoNet representation of perennial and lamaml, OML_ENCODER
# (default runs/oml-lake) OML's; both are meta-trained on the background characters
# (README). EXTRA adds flags to every run. Runs go to runs/omni-STRATEGY-sSEED; a
# finished run is kept, so a killed comparison resumes where it stopped (delete a run
# directory to redo it). One thread per run, JOBS (default 1) runs at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
seeds=${1:-0 1 2 3 4}
strategies=${2:-perennial oml lamaml}
export DATA=${PERENNIAL_DATA:-../shared/data}
export ENCODER=${ENCODER:-runs/lake-60w5s-3k}
export OML_ENCODER=${OML_ENCODER:-runs/oml-lake}
export EXTRA=${EXTRA:-}
cargo build --release --locked -p perennial-cli >&2
export P=${P:-./target/release/perennial}
job() {
  local s=$1 seed=$2 enc=$ENCODER
  [ "$s" = oml ] && enc=$OML_ENCODER
  local out=runs/omni-$s-s$seed
  if [ ! -s "$out/result.json" ]; then
    rm -rf "$out"
    # shellcheck disable=SC2086
    $P -q --threads 1 continual --stream omniglot-classes --strategy "$s" --seed "$seed" \
      --encoder "$enc" --data-dir "$DATA" --out "$out" $EXTRA >&2
  fi
}
export -f job
for s in $strategies; do for seed in $seeds; do echo "$s $seed"; done; done |
  xargs -P "${JOBS:-1}" -L 1 bash -c 'set -e; job "$@"' _
for s in $strategies; do for seed in $seeds; do
  python3 - "runs/omni-$s-s$seed/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.pop("matrix", None)
r.pop("final_own_labels", None)
print(json.dumps(r))
PY
done; done
