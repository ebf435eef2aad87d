#!/usr/bin/env bash
# Runs every test: the unit, golden (vs transformers) and multi-rank (mpirun) tests through ctest, then the
# Arm (NEON) kernel tests built with Debian's cross compiler and run under qemu-user.
# Usage: scripts/test.sh [--no-arm] [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
arm=1
if [ "${1:-}" = "--no-arm" ]; then arm=0; shift; fi
[ -x build/moep ] || { echo "test.sh: build/ is missing; run scripts/setup.sh first" >&2; exit 2; }
cmake --build build -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure "$@"
if [ "$arm" = 1 ] && [ -f scripts/test_arm.sh ]; then
  bash scripts/test_arm.sh
fi
