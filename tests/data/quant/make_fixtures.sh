#!/bin/sh
# Regenerates the fixtures in this folder from ggml itself (llama.cpp's ggml-base library: its reference
# quantizers and dequantizers). Neither the build nor the tests run this; the files it writes are committed.
#
# How they were made (2026-12-04, x86-64, gcc 12, Debian 12): llama.cpp's source from the npm package
# node-llama-cpp@3.21.1, which carries it as a git bundle (ggml commit 80fb11a):
#   cd /tmp && npm pack node-llama-cpp@3.21.1 && tar xzf node-llama-cpp-3.21.1.tgz \
#     && git clone package/llama/gitRelease.bundle llama.cpp
#   tests/data/quant/make_fixtures.sh /tmp/llama.cpp
# ggml-base is built without -march flags (GGML_NATIVE=OFF), so no fused multiply-add changes its arithmetic.
# mxfp4.* and mxfp4_edge.* were added later (2026-12-06) by the same program built against the shared ggml-base of
# a GGML_NATIVE=ON build of the same source; every file made before came out byte for byte the same (MXFP4's
# arithmetic is exact products of powers of two, which a fused multiply-add cannot change).
set -eu
LLAMA=${1:?usage: make_fixtures.sh LLAMA_CPP_SOURCE_DIR [BUILD_DIR]}
BUILD=${2:-/tmp/ggml-build}
HERE=$(cd "$(dirname "$0")" && pwd)
cmake -S "$LLAMA" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF >/dev/null
nice -n 10 ninja -C "$BUILD" -j1 ggml-base
cc -O2 -std=c11 -I "$LLAMA/ggml/include" -c "$HERE/make_fixtures.c" -o "$BUILD/make_fixtures.o"
c++ "$BUILD/make_fixtures.o" "$(find "$BUILD" -name libggml-base.a | head -n1)" -fopenmp -lm -lpthread -o "$BUILD/make_fixtures"
"$BUILD/make_fixtures" "$HERE"
ls -l "$HERE"
