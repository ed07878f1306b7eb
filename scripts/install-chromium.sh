#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver)
# for the browser test (crates/perennial-serve/tests/browser.rs). Idempotent: does
# nothing when both are present. Uses sudo only when not root and sudo exists.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-chromium: need root (or sudo) to install chromium and chromium-driver" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: apt-get not found; install chromium and chromedriver yourself" >&2
  exit 1
fi

echo "install-chromium: installing chromium and chromium-driver (Debian packages)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends chromium chromium-driver >>"$log" 2>&1; then
  cat "$log" >&2
  echo "install-chromium: could not install chromium and chromium-driver with apt-get" >&2
  exit 1
fi

for bin in /usr/bin/chromium /usr/bin/chromedriver; do
  if [ ! -x "$bin" ]; then
    echo "install-chromium: $bin is still missing after installing" >&2
    exit 1
  fi
done
