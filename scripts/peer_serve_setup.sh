#!/usr/bin/env bash
# Builds the virtualenv of scripts/peer_serve.py, the FastAPI peer of `perennial serve`
# for side-by-side speed comparisons.
#
#   bash scripts/peer_serve_setup.sh [VENV]    (default $HOME/.cache/perennial/peer-serve-venv)
#
# Needs python3.11 (or PYTHON=...) and PyPI. Every package the server imports is pinned.
# torch is PyPI's 2.13.0 wheel, the release whose libtorch the Rust side links (see
# scripts/env.sh); the server runs it on the CPU. Its Python extension links the whole
# CUDA stack, so pip also brings the nvidia-* wheels torch pins (about 3 GB in all).
set -euo pipefail
VENV=${1:-$HOME/.cache/perennial/peer-serve-venv}
PYTHON=${PYTHON:-python3.11}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check \
    torch==2.13.0 numpy==2.4.6 \
    fastapi==0.165.0 uvicorn==0.55.0 python-multipart==0.0.34 \
    pillow==13.0.0 safetensors==0.8.0
"$VENV/bin/python" -c "import torch, fastapi, uvicorn, multipart, PIL, safetensors, numpy
print('torch', torch.__version__, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__,
      'pillow', PIL.__version__, 'safetensors', safetensors.__version__, 'numpy', numpy.__version__)"
echo "peer-serve venv ready: $VENV/bin/python scripts/peer_serve.py --encoder RUN_DIR --port PORT"
