#!/usr/bin/env bash
# Runs every test: the unit, golden (vs transformers), multi-rank (mpirun) and server tests through ctest, then
# the Arm (NEON) kernel tests built with Debian's cross compiler and run under qemu-user.
#
# Before that it installs what only the tests need, none of which can stop the run:
#   - Node.js and npm, from Debian's packages (apt-get), when missing;
#   - the official openai npm client for the server tests, from the npm registry (npm ci --prefix tests/server,
#     versions pinned in tests/server/package-lock.json).
# Where one of these cannot be had (no npm registry, a proxy npm refuses), the server tests are skipped, and the
# end of the run says which tests were skipped, why, and how to retry. MOEP_REQUIRE_ALL_TESTS=1 (CI sets it)
# turns a skip for want of a package into a failure (a kernel test may still skip on a CPU without its
# instructions). The Arm tests install their cross compiler and qemu with apt-get (test_arm.sh).
#
# With CI=true or MOEP_FUZZ=1 it then runs each fuzz target for 60 s (scripts/fuzz.sh; MOEP_FUZZ_SECONDS changes it).
#
# Usage: scripts/test.sh [--no-arm] [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
arm=1
if [ "${1:-}" = "--no-arm" ]; then arm=0; shift; fi
[ -x build/moep ] || { echo "test.sh: build/ is missing; run scripts/setup.sh first" >&2; exit 2; }
require_all="${MOEP_REQUIRE_ALL_TESTS:-0}"
skipped_why=()

# Node.js and npm for the server tests.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test.sh: installing nodejs npm from Debian's packages (for the server tests)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      nodejs npm >/dev/null; } || echo "test.sh: warning: could not install nodejs and npm with apt-get"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  skipped_why+=("server tests: Node.js/npm are not installed (retry: apt-get install nodejs npm; scripts/test.sh)")
elif [ ! -d tests/server/node_modules/openai ] || ! npm ls --prefix tests/server --depth=0 >/dev/null 2>&1; then
  echo "test.sh: installing the server tests' npm packages (npm ci --prefix tests/server)"
  if ! npm ci --prefix tests/server --no-audit --no-fund --loglevel=error; then
    echo "test.sh: warning: npm ci failed (is the npm registry reachable? a TLS proxy needs npm's cafile setting);" \
         "the server tests will be skipped"
    skipped_why+=("server tests: the openai npm package could not be installed: npm ci failed (retry: npm ci --prefix tests/server; scripts/test.sh)")
  fi
fi

cmake --build build -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
log="build/ctest-output.log"
set +e
ctest --test-dir build --output-on-failure "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# What ctest skipped (exit 77, and GTEST_SKIP for hardware a kernel needs), with the reasons the tests printed.
skipped=$(sed -nE 's/^[[:space:]]*[0-9]+ - (.*) \(Skipped\)$/\1/p' "$log" | sort -u)
if [ -n "$skipped" ]; then
  echo
  echo "test.sh: skipped tests:"
  echo "$skipped" | sed 's/^/  /'
  echo "test.sh: why:"
  { for why in "${skipped_why[@]}"; do echo "$why"; done
    if [ -f build/Testing/Temporary/LastTest.log ]; then
      grep -h -A1 -E ': Skipped$' build/Testing/Temporary/LastTest.log | grep -vE ': Skipped$|^--$' || true
      grep -h '^tests/server: skipped:' build/Testing/Temporary/LastTest.log || true
    fi
  } | sort -u | sed 's/^/  /'
fi
# CI (MOEP_REQUIRE_ALL_TESTS=1) must run the server tests: a CPU without an instruction set may skip a
# kernel test, but nothing may be skipped for want of a package.
if [ "$require_all" = 1 ] && { [ ${#skipped_why[@]} -gt 0 ] || echo "$skipped" | grep -q '^server\.'; }; then
  echo "test.sh: MOEP_REQUIRE_ALL_TESTS=1: the server tests were skipped for want of a package; that fails the run" >&2
  rc=1
fi
[ "$rc" -eq 0 ] || exit "$rc"

if [ "$arm" = 1 ] && [ -f scripts/test_arm.sh ]; then
  bash scripts/test_arm.sh
fi

# The fuzz targets (tests/fuzz), 60 s each, in CI (CI=true) or when asked (MOEP_FUZZ=1): scripts/fuzz.sh installs
# clang and its libFuzzer runtime from Debian's packages and builds them apart, in build-fuzz/. A finding fails
# the run.
if [ "${CI:-}" = true ] || [ "${MOEP_FUZZ:-0}" = 1 ]; then
  bash scripts/fuzz.sh "${MOEP_FUZZ_SECONDS:-60}"
fi
