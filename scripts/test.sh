#!/usr/bin/env bash
# Second of README's two commands, and what CI runs: installs and builds what is missing (scripts/setup.sh
# --no-run), then runs the whole test suite through ctest. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-run
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600 "$@"
