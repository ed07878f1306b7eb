#!/usr/bin/env bash
# `perennial bench serve` side by side with its Python peer (scripts/peer_serve.py:
# FastAPI + uvicorn + PyTorch, the same encoder weights and prototype rule), under the
# same load from the same driver, in one run:
#
#   bash scripts/bench_serve.sh ENCODER_RUN [more `bench serve` flags]
#
# Builds the peer's virtualenv once (scripts/peer_serve_setup.sh) and Perennial in
# release mode; prints the bench's JSON lines (server "perennial", then
# "python-fastapi"), then the peer process's peak resident size.
set -euo pipefail
cd "$(dirname "$0")/.."
ENCODER=${1:?usage: scripts/bench_serve.sh ENCODER_RUN [bench flags]}
shift
VENV=${PEER_SERVE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/perennial/peer-serve-venv}
PEER_THREADS=${PEER_THREADS:-1}
[ -x "$VENV/bin/python" ] || bash scripts/peer_serve_setup.sh "$VENV" >&2
. scripts/env.sh
cargo build --release --locked -q -p perennial-cli
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VENV/bin/python" scripts/peer_serve.py --encoder "$ENCODER" --port "$port" --threads "$PEER_THREADS" &
peer=$!
trap 'kill "$peer" 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/healthz')" 2>/dev/null && break
  sleep 0.2
done
./target/release/perennial -q bench serve --json --encoder "$ENCODER" --peer "http://127.0.0.1:$port" "$@"
rss=$(awk '/VmHWM/ {print $2}' "/proc/$peer/status")
echo "{\"bench\":\"serve_peer_process\",\"server\":\"python-fastapi\",\"peak_rss_mb\":$((rss / 1024)),\"threads\":$PEER_THREADS}"
