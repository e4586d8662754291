# Sourced by scripts/test.sh and scripts/demo.sh: makes sure the project's virtual
# environment exists and matches the lock file, then activates it.
#
#   NEO_JAX_VENV   where the environment lives (default: .venv in the checkout)
#   PYTHON         the interpreter that creates it (default: python3, >= 3.11)
#
# First run: creates the environment from requirements-lock.txt (torch 2.13.0, the
# CPU wheel, first: an unpinned torch would pull the CUDA build), then installs
# neo_jax itself in editable mode. Later runs reuse it; when the lock file or
# pyproject.toml changed since, the install is repeated (pip skips what is there).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${NEO_JAX_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"
_stamp="$_venv/.neo_jax_lock"
_want="$(cat "$_root/requirements-lock.txt" "$_root/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$_venv/bin/python" ]]; then
  if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "neo_jax needs Python >= 3.11; '$_python' is $("$_python" --version 2>&1)." \
         "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
  fi
  echo "Creating the virtual environment $_venv ..."
  "$_python" -m venv "$_venv"
fi
if [[ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]]; then
  echo "Installing the pinned packages into $_venv (first run: a few minutes) ..."
  _t0=$SECONDS
  "$_venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$_venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$_venv/bin/python" -m pip install -q --disable-pip-version-check -r "$_root/requirements-lock.txt"
  "$_venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$_root"
  echo "$_want" > "$_stamp"
  echo "Installing ... done in $((SECONDS - _t0)) s"
fi
# shellcheck disable=SC1091
. "$_venv/bin/activate"
cd "$_root"
