#!/usr/bin/env bash
# Builds the virtualenv of scripts/peer_store_bench.py, the FAISS peer of the
# perennial-store benchmark (store_insert_*, store_query_*; see docs/store.md).
#
#   bash scripts/peer_store_setup.sh [VENV]
#       (default ${PERENNIAL_CACHE:-$HOME/.cache/perennial}/peer-faiss-venv)
#
# Needs python3.11 (or PYTHON=...) and PyPI. faiss-cpu is PyPI's CPU wheel (OpenMP,
# AVX2/AVX-512 kernels chosen at run time); both packages are pinned.
set -euo pipefail
VENV=${1:-${PERENNIAL_CACHE:-$HOME/.cache/perennial}/peer-faiss-venv}
PYTHON=${PYTHON:-python3.11}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    faiss-cpu==1.15.1 numpy==2.4.6
"$VENV/bin/python" -c "import faiss, numpy
print('faiss', faiss.__version__, 'numpy', numpy.__version__)"
echo "peer-faiss venv ready: $VENV/bin/python scripts/peer_store_bench.py --n 1000000"
