#!/usr/bin/env bash
# Issue #20's accuracy runs: trains metric learners on Omniglot (Vinyals train split,
# rotations as classes) and evaluates each on 1000 test episodes per setting, one JSON
# line per (run, setting) on stdout:
#
#   bash scripts/metric-omniglot.sh NAME SETTINGS -- TRAIN_ARGS... >> bench/metric-omniglot-DATE.jsonl
#
#   bash scripts/metric-omniglot.sh relation-5w1s "5w1s 5w5s 20w1s 20w5s" -- relation --ways 5 --shots 1 --episodes 20000
#
# SETTINGS is a list of NwKs evaluation settings (15 queries per class). The run goes to
# runs/metric-NAME; a finished run is kept (delete it to retrain), so a killed script
# resumes where it stopped (an unfinished run continues with --resume). THREADS
# (default 2) sets libtorch's threads; P names a built binary (default: build one).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
name=$1
settings=$2
shift 2
[ "${1:-}" = "--" ] && shift
DATA=${PERENNIAL_DATA:-../shared/data}
T=${THREADS:-2}
out=runs/metric-$name
if [ -z "${P:-}" ]; then
  cargo build --release --locked -p perennial-cli >&2
  P=./target/release/perennial
fi
if [ -f "$out/state.json" ]; then
  $P -q --threads "$T" train "$1" --resume --out "$out" >&2
else
  $P -q --threads "$T" train "$@" --val-every 0 --data-dir "$DATA" --out "$out" >&2
fi
train_s=$(tail -n 1 "$out/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsed_s"])')
for s in $settings; do
  ways=${s%%w*}
  shots=${s#*w}
  shots=${shots%s}
  t0=$(date +%s.%N)
  r=$($P -q --threads "$T" eval "$out" --ways "$ways" --shots "$shots" --episodes 1000 --json --data-dir "$DATA")
  t1=$(date +%s.%N)
  python3 - "$name" "$s" "$r" "$train_s" "$t0" "$t1" "$*" <<'PY'
import json, sys
name, setting, r, train_s, t0, t1, args = sys.argv[1:]
r = json.loads(r)
print(json.dumps({"run": name, "setting": setting, "accuracy": r["accuracy"], "ci95": r["ci95"],
                  "episodes": r["episodes"], "train_s": float(train_s),
                  "eval_s": float(t1) - float(t0), "train": args}))
PY
done
