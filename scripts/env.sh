# Source this file: it makes sure libtorch is present and exports what tch needs.
#
#   . scripts/env.sh
#
# With LIBTORCH already set (your own libtorch, e.g. a CUDA build) it only adds
# $LIBTORCH/lib to LD_LIBRARY_PATH. Otherwise it installs the pinned PyTorch wheel's
# libtorch once into a per-user cache (about 1.2 GB, ~1 min) and reuses it afterwards:
#   ${PERENNIAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perennial}/libtorch-2.13.0
PERENNIAL_TORCH_VERSION=2.13.0
if [ -z "${LIBTORCH:-}" ]; then
  _pcache="${PERENNIAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perennial}"
  _pdir="$_pcache/libtorch-$PERENNIAL_TORCH_VERSION"
  if [ ! -f "$_pdir/.complete" ]; then
    echo "perennial: installing libtorch $PERENNIAL_TORCH_VERSION into $_pdir (once; about 1.2 GB)" >&2
    mkdir -p "$_pcache"
    rm -rf "$_pdir.partial"
    _ppy="${PYTHON:-$(command -v python3 || command -v python)}"
    if [ -z "$_ppy" ]; then
      echo "perennial: python3 with pip is needed to install libtorch (or set LIBTORCH)" >&2
      return 2 2>/dev/null || exit 2
    fi
    if ! "$_ppy" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$_pdir.partial" "torch==$PERENNIAL_TORCH_VERSION" \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2; then
      echo "perennial: pip could not install torch==$PERENNIAL_TORCH_VERSION (set LIBTORCH to use your own libtorch)" >&2
      rm -rf "$_pdir.partial"
      return 2 2>/dev/null || exit 2
    fi
    rm -rf "$_pdir"
    mv "$_pdir.partial" "$_pdir"
    touch "$_pdir/.complete"
  fi
  export LIBTORCH="$_pdir/torch"
  export LIBTORCH_CXX11_ABI=1
  unset _pcache _pdir _ppy
fi
export LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# perennial_bin: sets P to the CLI binary the scripts run. PERENNIAL_BIN names a built
# binary (a copy outside target/ lets you rebuild during a long run); without it the
# release build is built (or found up to date) first.
perennial_bin() {
  if [ -n "${PERENNIAL_BIN:-}" ]; then
    if [ ! -x "$PERENNIAL_BIN" ] || [ -d "$PERENNIAL_BIN" ]; then
      echo "perennial: PERENNIAL_BIN=$PERENNIAL_BIN is not an executable file" >&2
      return 2
    fi
    P=$PERENNIAL_BIN
  else
    cargo build --release --locked -p perennial-cli >&2 || return
    P=./target/release/perennial
  fi
}
