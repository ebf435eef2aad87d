#!/usr/bin/env bash
# moep and llama.cpp on the same GGUF files (issue 17). Needs a llama.cpp source tree (LLAMA_SRC; nothing is
# downloaded), python3 with torch, transformers and numpy (for llama.cpp's converter and the comparison), and a
# moep binary. Builds llama.cpp's CPU libraries, llama-quantize and llama-bench, and probe.cpp beside this script.
#
# LLAMA_BUILD=DIR in the environment uses an existing llama.cpp build instead of building one in WORK.
#
# Usage: scripts/llamacpp/side_by_side.sh interop LLAMA_SRC MOEP WORK OUT
#   For each family (mixtral, dbrx, qwen2_moe, qwen3_moe, olmoe): a 256-wide random model (moep synth, GPT-2
#   tokenizer), converted to f32 GGUF by llama.cpp's convert_hf_to_gguf.py, quantized by llama-quantize to Q8_0
#   and Q4_K_M; moep and llama.cpp compute the logits of the same ids on each file (argmax at every position
#   and the relative error are printed); `moep quantize --type q4_k_m` of the same model is run by llama.cpp
#   and compared the same way. Then ggml's own decoding of one tensor quantized by llama-quantize --pure to each
#   block type is written to OUT/dq/ (the fixtures of tests/unit/test_ggml_dequant.cpp).
#        scripts/llamacpp/side_by_side.sh speed LLAMA_SRC MOEP WORK OUT [THREADS...]
#   The DBRX-dimension 2-layer model (moep synth --preset dbrx), quantized by moep to Q8_0 and Q4_K_M; for each
#   file and thread count, llama-bench and moep bench alternate twice, both pinned to the same cores.
set -euo pipefail
MODE=$1
LLAMA_SRC=$(realpath "$2")
MOEP=$(realpath "$3")
WORK=$4
OUT=$5
shift 5
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK" "$OUT"
NPROC=$(nproc)

build_llama() {
  cmake -S "$LLAMA_SRC" -B "$WORK/lb" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
    -DGGML_VULKAN=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >"$WORK/lb.cfg.log" 2>&1 || { tail -30 "$WORK/lb.cfg.log"; exit 1; }
  cmake --build "$WORK/lb" -j"$NPROC" --target llama-quantize llama-bench >"$WORK/lb.log" 2>&1 ||
    { tail -30 "$WORK/lb.log"; exit 1; }
  LQ=$(find "$WORK/lb" -name llama-quantize -type f | head -1)
  LB=$(find "$WORK/lb" -name llama-bench -type f | head -1)
  LIBDIR=$(dirname "$(find "$WORK/lb" -name 'libllama.so' | head -1)")
  g++ -O2 -std=c++17 "$HERE/probe.cpp" -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" -L"$LIBDIR" \
    -lllama -lggml -lggml-base -Wl,-rpath,"$LIBDIR" -o "$WORK/probe"
  echo "llama.cpp: $(cat "$LLAMA_SRC/.commit" 2>/dev/null || echo 'source tree') built ($(basename "$LQ"), $(basename "$LB"), probe)"
}

# use_llama_build DIR: an existing llama.cpp build (llama-quantize, llama-bench optional); probe.cpp is built here.
use_llama_build() {
  LQ=$(find "$1" -name llama-quantize -type f | head -1)
  LB=$(find "$1" -name llama-bench -type f | head -1)
  LIBDIR=$(dirname "$(find "$1" -name 'libllama.so' | head -1)")
  g++ -O2 -std=c++17 "$HERE/probe.cpp" -I"$LLAMA_SRC/include" -I"$LLAMA_SRC/ggml/include" -L"$LIBDIR" \
    -lllama -lggml -lggml-base -Wl,-rpath,"$LIBDIR" -o "$WORK/probe"
  echo "llama.cpp: existing build in $1"
}

# compare NAME MOEP.npy LLAMA.npy: argmax agreement and relative error per position.
compare() {
  python3 - "$@" <<'EOF'
import sys, numpy as np
name, a, b = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
assert a.shape == b.shape, (a.shape, b.shape)
same = int((a.argmax(1) == b.argmax(1)).sum())
rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
print(f"{name:34s} argmax equal at {same}/{a.shape[0]} positions; relative error per position: "
      f"max {rel.max():.2e}, median {np.median(rel):.2e}")
EOF
}

IDS="464,2068,7586,21831,18045,625,262,16931,3290,13,198,50,7,4011,1049,257"

if [ "$MODE" = interop ]; then
  [ -n "${LLAMA_BUILD:-}" ] && use_llama_build "$LLAMA_BUILD" || build_llama
  export PYTHONPATH="$LLAMA_SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
  # llama.cpp's converter needs torch; without it the f32 source GGUF is moep's own (moep quantize --type f32),
  # and llama-quantize still makes the Q8_0 and Q4_K_M files.
  CONVERTER=llama.cpp
  python3 -c 'import torch, transformers' 2>/dev/null || CONVERTER=moep
  echo "f32 source GGUFs written by: $CONVERTER"
  for fam in ${FAMILIES:-mixtral dbrx qwen2_moe qwen3_moe olmoe deepseek_v3 deepseek_v2 gpt_oss}; do
    extra=()
    kv=2
    # llama.cpp's olmoe takes k_norm over all of d_model: real OLMoE has as many KV heads as heads.
    [ "$fam" = olmoe ] && kv=4
    [ "$fam" = qwen2_moe ] && extra=(--shared-ffn 256)
    [ "$fam" = qwen3_moe ] && extra=(--head-dim 64)
    # DeepSeek (deepseek2 in llama.cpp): latent attention 256 wide, a dense first layer, 3 layers, 16 experts of 256;
    # V3 with grouped sigmoid routing, V2 with softmax and q_proj (as V2-Lite).
    shape=(--layers 2 --ffn 512 --experts 4 --top-k 2)
    case "$fam" in
      deepseek_v3) shape=(--layers 3 --ffn 256 --experts 16 --top-k 4)
                   extra=(--q-lora-rank 256 --kv-lora-rank 256 --groups 4 --topk-groups 2 --dense-layers 1) ;;
      deepseek_v2) shape=(--layers 3 --ffn 256 --experts 16 --top-k 4)
                   extra=(--q-lora-rank 0 --kv-lora-rank 256 --dense-layers 1) ;;
      gpt_oss) shape=(--layers 2 --ffn 256 --experts 8 --top-k 2) ;;
    esac
    m="$WORK/$fam"
    "$MOEP" synth "$m" --arch "$fam" --d-model 256 "${shape[@]}" --heads 4 --kv-heads "$kv" --dtype f32 --seed 7 \
      "${extra[@]}" >/dev/null
    types=(Q8_0 Q4_K_M)
    if [ "$fam" = gpt_oss ]; then
      # A window of 6 so that the 16 tokens below cross it; llama.cpp's MXFP4_MOE: experts in MXFP4, the rest Q8_0.
      sed -i 's/"sliding_window": [0-9]*/"sliding_window": 6/' "$m/config.json"
      types+=(MXFP4_MOE)
      # llama.cpp floors and ceils YaRN's ramp bounds; gpt-oss's checkpoints (truncate false), transformers and moep
      # do not. The same model with truncate true shows what that difference alone costs.
      cp -r "$m" "$m-truncate"
      sed -i 's/"truncate": false/"truncate": true/' "$m-truncate/config.json"
      "$MOEP" logits "$m-truncate" --ids "$IDS" --out "$m-truncate.moep.npy" -t 4 >/dev/null 2>&1
    fi
    if [ "$CONVERTER" = llama.cpp ]; then
      python3 "$LLAMA_SRC/convert_hf_to_gguf.py" "$m" --outtype f32 --outfile "$m-f32.gguf" >"$m.convert.log" 2>&1 ||
        { echo "$fam: llama.cpp's converter failed:"; tail -5 "$m.convert.log"; continue; }
    else
      "$MOEP" quantize "$m" "$m-f32.gguf" --type f32 >/dev/null
    fi
    for t in "${types[@]}"; do
      "$LQ" "$m-f32.gguf" "$m-$t.gguf" "$t" >"$m.$t.log" 2>&1 || { echo "$fam: llama-quantize $t failed"; continue; }
    done
    "$MOEP" quantize "$m" "$m-moep-q4_k_m.gguf" --type q4_k_m >/dev/null
    mine=(moep-q4_k_m)
    if [ "$fam" = gpt_oss ]; then
      "$MOEP" quantize "$m" "$m-moep-mxfp4.gguf" --type mxfp4 >/dev/null
      mine+=(moep-mxfp4)
    fi
    for f in f32 "${types[@]}" "${mine[@]}"; do
      file="$m-$f.gguf"
      [ -f "$file" ] || continue
      "$WORK/probe" logits "$file" "$IDS" "$m-$f.llama.npy" 4 >"$m.$f.probe.log" 2>&1 ||
        { echo "$fam $f: llama.cpp could not run it:"; grep -v '^llama_\|^load\|^print_info' "$m.$f.probe.log" | tail -3; continue; }
      "$MOEP" logits "$file" --ids "$IDS" --out "$m-$f.moep.npy" -t 4 >"$m.$f.moep.log" 2>&1 ||
        { echo "$fam $f: moep could not run it:"; tail -3 "$m.$f.moep.log"; continue; }
      compare "$fam $f" "$m-$f.moep.npy" "$m-$f.llama.npy"
      if [ "$f" = f32 ] && [ -f "$m-truncate.moep.npy" ]; then
        compare "$fam f32, moep with YaRN truncated" "$m-truncate.moep.npy" "$m-$f.llama.npy"
      fi
    done
  done
  # ggml's decoding of llama-quantize's blocks, for moep's bit-identity test (from the mixtral model).
  if [ ! -f "$WORK/mixtral-f32.gguf" ]; then
    echo "(no mixtral in FAMILIES: the bit-identity data of tests/data/ggml_dequant are not written)"
    exit 0
  fi
  mkdir -p "$OUT/dq"
  "$WORK/probe" dequant "$WORK/mixtral-f32.gguf" blk.0.attn_q.weight 16 "$OUT/dq/source"
  # MXFP4_MOE is llama-quantize's file type of MXFP4 experts and Q8_0 elsewhere; --pure makes every tensor MXFP4.
  for t in Q8_0 Q4_0 Q4_K Q5_K Q6_K Q5_0 Q5_1 MXFP4_MOE; do
    "$LQ" --pure "$WORK/mixtral-f32.gguf" "$WORK/pure-$t.gguf" "$t" >"$WORK/pure-$t.log" 2>&1 ||
      { echo "llama-quantize --pure $t failed"; tail -3 "$WORK/pure-$t.log"; continue; }
    "$WORK/probe" dequant "$WORK/pure-$t.gguf" blk.0.attn_q.weight 16 "$OUT/dq/$(echo "${t%_MOE}" | tr 'A-Z' 'a-z')"
  done
elif [ "$MODE" = speed ]; then
  build_llama
  THREADS=("$@")
  [ ${#THREADS[@]} -gt 0 ] || THREADS=(4 16)
  m="$WORK/dbrx2"
  "$MOEP" synth "$m" --preset dbrx --layers 2 -t "$NPROC" >/dev/null
  for t in q8_0 q4_k_m; do "$MOEP" quantize "$m" "$m-$t.gguf" --type "$t" -t "$NPROC" >/dev/null; done
  rm -rf "$m"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  "$MOEP" bench --membw -t "$NPROC" | grep -i -E 'read|bandwidth' | head -3 || true
  for t in q8_0 q4_k_m; do
    for th in "${THREADS[@]}"; do
      cores="0-$((th - 1))"
      for r in 1 2; do
        echo "== $t, $th threads on cores $cores, round $r: llama.cpp"
        taskset -c "$cores" "$LB" -m "$m-$t.gguf" -p 32,512 -n 32 -t "$th" -r 2 -o md 2>/dev/null | grep -E '^\| dbrx' || true
        echo "== $t, $th threads on cores $cores, round $r: moep"
        taskset -c "$cores" "$MOEP" bench "$m-$t.gguf" --prompt 32 --gen 32 -t "$th" 2>&1 | grep -E '^prefill|^decode' || true
        taskset -c "$cores" "$MOEP" bench "$m-$t.gguf" --prompt 512 --gen 4 -t "$th" 2>&1 | grep -E '^prefill' || true
      done
    done
  done
else
  echo "usage: $0 interop|speed LLAMA_SRC MOEP WORK OUT" >&2
  exit 2
fi
