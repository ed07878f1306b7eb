#!/usr/bin/env bash
# The whole test suite: bootstraps libtorch (cached after the first run) and Chromium
# for the web page's test, then runs
# every test of the workspace. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# The web page's test drives Debian's headless Chromium (installed once when missing).
bash scripts/install-chromium.sh
# The distributed tests build c10d's Gloo process group against Gloo's headers (once).
bash scripts/install-gloo.sh
cargo test --workspace --locked
