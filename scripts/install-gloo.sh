#!/usr/bin/env bash
# Installs Debian's Gloo headers (libgloo-dev), which the distributed binding
# (crates/perennial-dist) compiles c10d's ProcessGroupGloo against. Idempotent: does
# nothing when the headers are present. Uses sudo only when not root and sudo exists.
# Without them the workspace still builds: the binding is then built without a backend
# and `perennial launch` / distributed training say so.
set -euo pipefail

if [ -f /usr/include/gloo/config.h ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-gloo: need root (or sudo) to install libgloo-dev" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-gloo: apt-get not found; install Gloo's headers yourself" >&2
  exit 1
fi

echo "install-gloo: installing libgloo-dev (Debian package)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends libgloo-dev >>"$log" 2>&1; then
  cat "$log" >&2
  echo "install-gloo: could not install libgloo-dev with apt-get" >&2
  exit 1
fi

if [ ! -f /usr/include/gloo/config.h ]; then
  echo "install-gloo: /usr/include/gloo/config.h is still missing after installing" >&2
  exit 1
fi
