#!/usr/bin/env bash
# The main job on a fresh clone: installs libtorch if needed (cached), builds Perennial,
# meta-trains a Prototypical Network on Omniglot 5-way 1-shot for a few minutes, then
# prints its test accuracy (1000 episodes, 95% CI).
#
#   bash scripts/quickstart.sh            # data from $PERENNIAL_DATA, else ../shared/data
#   EPISODES=4000 bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [ -z "${PERENNIAL_DATA:-}" ] && [ -d ../shared/data/omniglot ]; then
  export PERENNIAL_DATA="$(cd ../shared/data && pwd)"
fi
cargo build --release --locked -p perennial-cli
run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
./target/release/perennial train protonet --ways 5 --shots 1 --queries 15 \
  --episodes "${EPISODES:-1500}" --val-every 500 --lr-step 500 --out "$run"
./target/release/perennial eval "$run" --ways 5 --shots 1 --episodes 1000
