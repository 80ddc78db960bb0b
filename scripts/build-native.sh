#!/usr/bin/env bash
# Builds the optional native parse decoder (native/, Rust via maturin) into the venv.
# Without cargo, or if the build fails, ingestion takes the pure-Python parse path: the same
# results, about 2x slower parsing. `pipeline-project health` says which path runs.
set -uo pipefail
python="$1"
export PATH="$PATH:$HOME/.cargo/bin"  # rustup's default place, often missing from PATH
if ! command -v cargo >/dev/null 2>&1; then
  echo "warning: cargo not found: the parse stage runs in pure Python (same results, slower);" \
       "install Rust (https://rustup.rs) and run make install again for the native decoder"
  exit 0
fi
echo "building the native parse decoder (native/, $(cargo --version))"
if ! "$python" -m pip install -q ./native; then
  echo "warning: the native decoder did not build: the parse stage runs in pure Python (same results, slower)"
fi
exit 0
