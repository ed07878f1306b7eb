#!/usr/bin/env bash
# The whole test suite: bootstraps libtorch (cached after the first run), then runs
# every test of the workspace. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo test --workspace --locked
