#!/usr/bin/env bash
# Builds the NEON kernels and their unit test (tests/unit/test_kernels.cpp) for aarch64 with Debian's cross
# compiler and runs the test under qemu-user. Only the kernels and the core files they need are built (see
# tests/arm/CMakeLists.txt): MPI, HTTP, JSON and PCRE have no arm64 libraries installed here.
#
# Usage: scripts/test_arm.sh [gtest flags...]      e.g. scripts/test_arm.sh --gtest_filter='Kernels.*'
# Environment: MOEP_ARM_BUILD_DIR (default build-arm). Installs missing packages with apt-get (as root, or
# through sudo). Exits non-zero if the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${MOEP_ARM_BUILD_DIR:-build-arm}"

packages=(g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user googletest cmake ninja-build)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test_arm: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S tests/arm -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/tests/arm/aarch64.cmake" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" --target kernel_tests

binary="$build_dir/kernel_tests"
if command -v file >/dev/null; then
  file "$binary" | grep -q "ARM aarch64" || { echo "test_arm: $binary is not an aarch64 binary" >&2; exit 1; }
fi
echo "test_arm: running $binary under qemu-aarch64"
exec qemu-aarch64 -L /usr/aarch64-linux-gnu "$binary" "$@"
