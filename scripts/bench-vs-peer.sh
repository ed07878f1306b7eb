#!/usr/bin/env bash
# Perennial's benchmarks and the Python peer's, interleaved in one session on the same
# machine and threads, then a table of the ratios.
#
#   bash ../shared/peers/setup_venv.sh ../peer-venv      # once: the peer's venv
#   PEER_PY=../peer-venv/bin/python bash scripts/bench-vs-peer.sh protonet|maml|metric|memory [ROUNDS] > bench/results/FILE.jsonl
#
# (metric's and memory's peer is plain PyTorch alone: any venv with torch 2.13 serves.)
#
# Prints JSON lines on stdout (ours with "impl": "perennial", the peer's as it writes
# them) and the table on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
family=${1:-protonet}
rounds=${2:-2}
PEER_PY=${PEER_PY:-../peer-venv/bin/python}
PEER=${PEER_BENCH:-../shared/peers/peer_bench.py}
DATA=${PERENNIAL_DATA:-../shared/data}
case "$family" in
  protonet) names="protonet_5w1s15q protonet_20w5s15q data_5w1s15q data_20w5s15q" ;;
  maml) names="maml2_5w1s15q_mb32 fomaml_5w1s15q_mb32 maml_sine_10shot_mb25 data_maml_5w1s15q_mb32" ;;
  metric) names="relation_5w1s15q matching_5w1s15q matching_fce_5w1s15q triplet_semihard_p32k4" ;;
  memory) names="mann_lrua_5c10i_b16 kvmem_5w1s15q" ;;
  *) echo "unknown family $family" >&2; exit 2 ;;
esac
cargo build --release --locked -p perennial-cli >&2
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  echo "round $r: perennial" >&2
  ./target/release/perennial -q --threads 2 bench "$family" --json --data-dir "$DATA" | tee -a "$out"
  echo "round $r: peer" >&2
  "$PEER_PY" "$PEER" --bench $names --impl all --threads 2 --data-dir "$DATA" --no-wait 2>/dev/null | tee -a "$out"
done
python3 scripts/bench_table.py "$out" >&2
rm -f "$out"
