#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz) into OUT/<target>/, from the repository's fixtures
and test data: config.json files, small safetensors files and indexes, cut-down tokenizers, chat templates with
conversations, request bodies, GGUF files, placement files. Nothing here is committed; scripts/fuzz.sh runs it.

Usage: make_seeds.py OUT_DIR
"""
import glob
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = sys.argv[1]


def put(target, data, name=None):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors):
    """tensors: [(name, dtype, shape, bytes)] -> file bytes."""
    header, blob = {}, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + blob


# --- config.json
for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*/config.json"))):
    put("fuzz_config", open(path, "rb").read())

# --- safetensors: byte 0 = a single file, byte 1 = an index beside the target's own shard
put("fuzz_safetensors", b"\0" + safetensors([("a", "F32", [2], b"\0" * 8), ("b", "BF16", [2, 2], b"\0" * 8)]))
put("fuzz_safetensors", b"\0" + safetensors([("w", "F16", [3, 1], b"\1" * 6), ("i", "I64", [1], b"\2" * 8),
                                              ("e", "F32", [0], b""), ("u", "U8", [4], b"abcd")]))
for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*_f32/model.safetensors"))) + \
        sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*_bf16/model-00001-of-*.safetensors")))[:2]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    # The fixture's names and dtypes, with shapes cut down so that the seed stays small.
    small = []
    for name, info in list(header.items())[:6]:
        if name == "__metadata__":
            continue
        size = {"F32": 4, "BF16": 2, "F16": 2}.get(info["dtype"], 1)
        small.append((name, info["dtype"], [2, 3], b"\x11" * (6 * size)))
    put("fuzz_safetensors", b"\0" + safetensors(small))
index = {"metadata": {"total_size": 16},
         "weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}}
put("fuzz_safetensors", b"\1" + json.dumps(index).encode())
put("fuzz_safetensors", b"\1" + json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}).encode())
put("fuzz_safetensors", b"\1" + json.dumps({"weight_map": {"a": "../x.safetensors"}}).encode())

# --- placement: layers, experts, ranks bytes, then the file
put("fuzz_placement", bytes([1, 3, 1]) + b'{"experts": [[0], [1], [0, 1], [1]]}')
put("fuzz_placement", bytes([3, 7, 2]) + b'{"experts": [[0], [1], [2], [0, 1, 2], [1], [2], [0], [1]], '
                                          b'"layers": {"1": [[1], [0], [0], [0], [1], [2], [0], [1]]}}')
put("fuzz_placement", bytes([0, 1, 0]) + b'{"experts": [[0], [0]]}')

# --- tokenizer.json: the stored tokenizers cut down to a few hundred tokens (their normalizers, pre-tokenizers,
# post-processors and decoders whole), so that each run parses in microseconds, not the full 1.5 MB.
for path in sorted(glob.glob(os.path.join(ROOT, "tests/data/tokenizers/*/tokenizer.json"))):
    t = json.load(open(path, encoding="utf-8"))
    model = t.get("model", {})
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        keep = dict(sorted(vocab.items(), key=lambda kv: kv[1])[:300])
        renumber = {tok: i for i, tok in enumerate(keep)}
        model["vocab"] = renumber
        merges = []
        for m in model.get("merges", []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            if a in renumber and b in renumber and (a + b) in renumber:
                merges.append(m)
        model["merges"] = merges[:200]
    elif isinstance(vocab, list):
        model["vocab"] = vocab[:300]
    added = []
    for i, tok in enumerate(t.get("added_tokens") or []):
        if i >= 8:
            break
        tok = dict(tok)
        tok["id"] = 300 + i
        added.append(tok)
    t["added_tokens"] = added
    # Post-processors name special tokens by id: point them at the kept ones.
    text = json.dumps(t, ensure_ascii=False)
    put("fuzz_tokenizer_json", text.encode("utf-8"), os.path.basename(os.path.dirname(path)))
put("fuzz_tokenizer_json", json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2},
                                                 "unk_token": "[UNK]"},
                                       "pre_tokenizer": {"type": "Whitespace"}}))
put("fuzz_tokenizer_json", json.dumps({"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0]],
                                                 "unk_id": 0},
                                       "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"},
                                                                                          {"type": "Lowercase"}]}}))

# --- tokenizer text: flags byte (tokenizer index in the low bits), then text from the reference vectors
names = ["gpt2", "llama-spm", "mistral-metaspace", "deepseek-v3", "qwen2", "dbrx", "olmoe", "mixtral"]
for i, name in enumerate(names):
    vectors = json.load(open(os.path.join(ROOT, "tests/data/tokenizers", name, "vectors.json"), encoding="utf-8"))
    texts = sorted({v["text"] for v in vectors}, key=len)
    for j, text in enumerate(texts[:: max(1, len(texts) // 12)]):
        put("fuzz_tokenizer_text", bytes([i | (0x10 if j % 2 else 0) | (0x20 if j % 3 else 0)]) + text.encode("utf-8"))

# --- chat templates, each with a conversation or extra variables after a NUL
conversations = [
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}],
    [{"role": "user", "content": "What is the weather?"},
     {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
         "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "22C"}],
    [{"role": "user", "content": [{"type": "text", "text": "parts"}]}],
]
tools = {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}], "enable_thinking": False}
for path in sorted(glob.glob(os.path.join(ROOT, "tests/data/chat_templates/**/*.jinja"), recursive=True)):
    src = open(path, "rb").read()
    put("fuzz_chat_template", src)
    for conv in conversations:
        put("fuzz_chat_template", src + b"\0" + json.dumps(conv).encode())
    put("fuzz_chat_template", src + b"\0" + json.dumps(tools).encode())
for path in ["jinja_cases.json", "jinja_fix_vectors.json", "jinja_vectors.json"]:
    cases = json.load(open(os.path.join(ROOT, "tests/data/chat_templates", path), encoding="utf-8"))
    if isinstance(cases, dict):
        cases = cases.get("cases", list(cases.values()))
    for case in cases:
        if isinstance(case, dict) and isinstance(case.get("template"), str):
            put("fuzz_chat_template", case["template"].encode("utf-8"))

# --- OpenAI request bodies: flags byte (bit 0: /v1/completions), then the body
chat = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {"model": "fuzz-model", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
     "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 1, "stop": ["\n", "x"],
     "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 3,
     "logit_bias": {"5": 10, "7": -100}, "presence_penalty": 0.5, "frequency_penalty": 0.5, "n": 1},
    {"messages": [{"role": "user", "content": "weather?"}], **tools, "tool_choice": "required",
     "parallel_tool_calls": False},
    {"messages": [{"role": "user", "content": "weather?"}], **tools,
     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"messages": conversations[1], **tools, "tool_choice": "auto"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
     "response_format": {"type": "json_object"}},
    {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "strict": True, "schema": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": 0}, "b": {"type": "array", "items": {"enum": ["x", "y", 1, None]}},
            "c": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "number"}]},
            "d": {"type": "object", "properties": {"e": {"type": "boolean"}}, "additionalProperties": False}},
            "required": ["a"], "additionalProperties": False}}}},
    {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"enable_thinking": True}},
]
completion = [
    {"prompt": "Once upon a time", "max_tokens": 8, "echo": False, "logprobs": 2, "stop": "."},
    {"model": "fuzz-model", "prompt": ["a"], "stream": True, "suffix": None, "best_of": 1},
    {"prompt": "x", "response_format": {"type": "json_object"}},
]
for body in chat:
    put("fuzz_openai_request", b"\0" + json.dumps(body).encode())
    put("fuzz_openai_request", b"\2" + json.dumps(body).encode())
for body in completion:
    put("fuzz_openai_request", b"\1" + json.dumps(body).encode())


# --- GGUF: the stored test file, and small models with a configuration, a tokenizer and a chat template
def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_value(v):
    if isinstance(v, bool):
        return struct.pack("<I", 7) + struct.pack("<B", v)
    if isinstance(v, int):
        return struct.pack("<I", 4) + struct.pack("<I", v)
    if isinstance(v, float):
        return struct.pack("<I", 6) + struct.pack("<f", v)
    if isinstance(v, str):
        return struct.pack("<I", 8) + gguf_string(v)
    if isinstance(v, tuple):  # (elem type, [values])
        t, items = v
        out = struct.pack("<I", 9) + struct.pack("<IQ", t, len(items))
        for x in items:
            out += gguf_string(x) if t == 8 else struct.pack({4: "<I", 5: "<i", 6: "<f"}[t], x)
        return out
    raise TypeError(v)


def gguf(metadata, tensors):
    """tensors: [(name, dims in ggml order, ggml type, bytes)]"""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        out += gguf_string(k) + gguf_value(v)
    offset, blobs = 0, b""
    for name, dims, t, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", t, offset)
        pad = (-len(data)) % 32
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    out += b"\0" * ((-len(out)) % 32)
    return out + blobs


tokens = ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "c"]
meta = {"general.architecture": "llama", "general.alignment": 32, "llama.block_count": 1,
        "llama.context_length": 64, "llama.embedding_length": 8, "llama.feed_forward_length": 16,
        "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1, "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.expert_count": 4, "llama.expert_used_count": 2,
        "llama.vocab_size": len(tokens),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": (8, tokens), "tokenizer.ggml.token_type": (5, [3, 3, 1, 1, 1, 1, 1, 1]),
        "tokenizer.ggml.merges": (8, ["a b", "Ġ a"]),
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.chat_template": open(os.path.join(ROOT, "tests/data/chat_templates/qwen2_chatml.jinja")).read()}
tensors = [("token_embd.weight", [8, len(tokens)], 0, b"\0" * (4 * 8 * len(tokens))),
           ("output_norm.weight", [8], 0, b"\0" * 32)]
put("fuzz_gguf", gguf(meta, tensors))
spm = dict(meta)
spm.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": (6, [0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0])})
del spm["tokenizer.ggml.merges"]
put("fuzz_gguf", gguf(spm, tensors[:1]))
put("fuzz_gguf", gguf({"general.architecture": "qwen2moe"}, []))
# deepseek2 (latent attention, YaRN, grouped sigmoid routing): the metadata moep quantize writes for it.
ds = {k: v for k, v in meta.items() if not k.startswith("llama.")}
ds.update({"general.architecture": "deepseek2", "deepseek2.block_count": 2, "deepseek2.context_length": 64,
           "deepseek2.embedding_length": 8, "deepseek2.feed_forward_length": 16, "deepseek2.attention.head_count": 2,
           "deepseek2.attention.head_count_kv": 1, "deepseek2.rope.freq_base": 10000.0,
           "deepseek2.attention.layer_norm_rms_epsilon": 1e-6, "deepseek2.expert_count": 4,
           "deepseek2.expert_used_count": 2, "deepseek2.leading_dense_block_count": 1,
           "deepseek2.vocab_size": len(tokens), "deepseek2.attention.q_lora_rank": 4,
           "deepseek2.attention.kv_lora_rank": 4, "deepseek2.attention.key_length": 6,
           "deepseek2.attention.value_length": 4, "deepseek2.attention.key_length_mla": 6,
           "deepseek2.attention.value_length_mla": 4, "deepseek2.expert_feed_forward_length": 8,
           "deepseek2.expert_shared_count": 1, "deepseek2.expert_weights_scale": 2.5,
           "deepseek2.expert_weights_norm": True, "deepseek2.rope.dimension_count": 2,
           "deepseek2.expert_group_count": 2, "deepseek2.expert_group_used_count": 1,
           "deepseek2.expert_gating_func": 2, "deepseek2.rope.scaling.type": "yarn",
           "deepseek2.rope.scaling.factor": 40.0, "deepseek2.rope.scaling.original_context_length": 16,
           "deepseek2.rope.scaling.yarn_beta_fast": 32.0, "deepseek2.rope.scaling.yarn_beta_slow": 1.0,
           "deepseek2.rope.scaling.yarn_log_multiplier": 0.1})
put("fuzz_gguf", gguf(ds, tensors))
# gpt-oss (sinks, expert biases, a sliding-window pattern, YaRN): the metadata moep quantize writes for it.
go = {k: v for k, v in meta.items() if not k.startswith("llama.")}
go.update({"general.architecture": "gpt-oss", "gpt-oss.block_count": 3, "gpt-oss.context_length": 64,
           "gpt-oss.embedding_length": 8, "gpt-oss.feed_forward_length": 32, "gpt-oss.attention.head_count": 2,
           "gpt-oss.attention.head_count_kv": 1, "gpt-oss.rope.freq_base": 150000.0,
           "gpt-oss.attention.layer_norm_rms_epsilon": 1e-5, "gpt-oss.expert_count": 4,
           "gpt-oss.expert_used_count": 2, "gpt-oss.attention.key_length": 4, "gpt-oss.attention.value_length": 4,
           "gpt-oss.attention.sliding_window": 4, "gpt-oss.attention.sliding_window_pattern": 3,
           "gpt-oss.expert_feed_forward_length": 32, "gpt-oss.vocab_size": len(tokens),
           "gpt-oss.rope.scaling.type": "yarn", "gpt-oss.rope.scaling.factor": 32.0,
           "gpt-oss.rope.scaling.original_context_length": 16, "gpt-oss.rope.scaling.yarn_beta_fast": 32.0,
           "gpt-oss.rope.scaling.yarn_beta_slow": 1.0})
put("fuzz_gguf", gguf(go, tensors + [("blk.0.attn_sinks.weight", [2], 0, b"\0" * 8),
                                     ("blk.0.ffn_gate_exps.bias", [32, 4], 0, b"\0" * (4 * 32 * 4))]))
for path in sorted(glob.glob(os.path.join(ROOT, "tests/data/quant/*.gguf"))):
    put("fuzz_gguf", open(path, "rb").read())

for target in sorted(os.listdir(OUT)):
    print(f"make_seeds: {target}: {len(os.listdir(os.path.join(OUT, target)))} seeds")
