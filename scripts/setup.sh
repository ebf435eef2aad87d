#!/usr/bin/env bash
# Installs what building and running moep need, from Debian 12's packages (apt-get), and builds it (Release,
# into build/). Nothing else is fetched: no npm, no pip, no model weights. The tests' extra packages (Node.js
# and the openai npm client for the server tests, an Arm cross compiler and qemu) are installed by
# scripts/test.sh, where a failure cannot stop the build.
# Usage: scripts/setup.sh [--no-build]
# The GPU backend needs Vulkan's headers and loader (libvulkan-dev) and glslc to compile its shaders; Mesa's
# lavapipe (mesa-vulkan-drivers) is a Vulkan device on the CPU, on which the GPU tests run where there is no GPU.
# Environment: MOEP_WERROR=1 builds with -Werror on moep's own sources (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  libvulkan-dev glslc mesa-vulkan-drivers
  python3 jq curl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing from Debian's packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" != "--no-build" ]; then
  werror=OFF
  [ "${MOEP_WERROR:-0}" = 1 ] && werror=ON
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEP_WERROR="$werror" >/dev/null
  echo "setup: building into build/ ($(nproc) jobs)"
  cmake --build build -j"$(nproc)"
  echo "setup: built build/moep ($(build/moep --version)); \`cmake --install build\` puts it on the PATH"
fi
