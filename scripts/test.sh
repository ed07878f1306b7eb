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
# The harness runs one test per core, and many tests run libtorch in the test process
# or in a `perennial` child. libtorch's default of one thread per core in each would
# oversubscribe the cores (on 2 cores the CLI tests took 590 s instead of 262 s), so
# each process gets one intra-op thread unless the caller chose otherwise.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cargo test --workspace --locked
