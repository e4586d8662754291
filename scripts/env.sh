# Sourced by scripts/demo.sh and scripts/test.sh: makes sure the project's virtual
# environment exists and matches the lock files, then activates it.
#
#   . scripts/env.sh [runtime|test]     (default: runtime)
#
#   runtime   requirements-lock.txt: what the package runs on (jax, flax, grain, orbax,
#             libtpu, ...), no PyTorch; then neo_jax itself in editable mode.
#   test      torch 2.13.0 first (where the package index has its CPU wheel, as on the
#             project's machines, pip keeps it: a torch pulled in later, unpinned, would be
#             the CUDA build), then requirements-lock.txt + requirements-test-lock.txt
#             (pytest, the interop's torch / transformers, matplotlib, ...), then neo_jax.
#
#   NEO_JAX_VENV   where the environment lives (default: .venv in the checkout)
#   PYTHON         the interpreter that creates it (default: python3, >= 3.11)
#
# Later runs reuse the environment; when a lock file or pyproject.toml changed since, the
# install is repeated (pip skips what is there). A test environment serves the demo too.
set -euo pipefail
_mode="${1:-runtime}"
if [[ "$_mode" != runtime && "$_mode" != test ]]; then
  echo "scripts/env.sh: mode '$_mode' is neither 'runtime' nor 'test'." >&2
  exit 2
fi
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${NEO_JAX_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"
_stamp="$_venv/.neo_jax_lock"
_hash() { cat "$@" "$_root/pyproject.toml" | sha256sum | cut -d' ' -f1; }
_want_runtime="runtime $(_hash "$_root/requirements-lock.txt")"
_want_test="test $(_hash "$_root/requirements-lock.txt" "$_root/requirements-test-lock.txt")"
_have="$(cat "$_stamp" 2>/dev/null || true)"

if [[ ! -x "$_venv/bin/python" ]]; then
  if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "neo_jax needs Python >= 3.11; '$_python' is $("$_python" --version 2>&1)." \
         "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
  fi
  echo "Creating the virtual environment $_venv ..."
  "$_python" -m venv "$_venv"
fi
if [[ "$_have" != "$_want_test" && ( "$_mode" == test || "$_have" != "$_want_runtime" ) ]]; then
  echo "Installing the pinned $_mode packages into $_venv (first run: a few minutes) ..."
  _t0=$SECONDS
  _pip=("$_venv/bin/python" -m pip install -q --disable-pip-version-check)
  "${_pip[@]}" --upgrade pip
  if [[ "$_mode" == test ]]; then
    "${_pip[@]}" torch==2.13.0
    "${_pip[@]}" -r "$_root/requirements-lock.txt" -r "$_root/requirements-test-lock.txt"
    _want="$_want_test"
  else
    "${_pip[@]}" -r "$_root/requirements-lock.txt"
    _want="$_want_runtime"
  fi
  "${_pip[@]}" --no-deps -e "$_root"
  echo "$_want" > "$_stamp"
  echo "Installing ... done in $((SECONDS - _t0)) s"
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
cd "$_root"
