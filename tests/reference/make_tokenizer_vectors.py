#!/usr/bin/env python3
"""Builds the tokenizer.json of each tokenizer family moep supports and the ids Hugging Face `tokenizers` gives.

Run once on a machine with Python `tokenizers` (0.23) and `transformers` (5.x); no network is needed:

    python3 tests/reference/make_tokenizer_vectors.py            # writes tests/data/tokenizers/<family>/

For each family it writes tests/data/tokenizers/<family>/tokenizer.json and vectors.json, a list of
{"text", "add_special_tokens", "ids", "decoded", "decoded_skip_special"} made by `tokenizers` itself
(decoded = decode(ids, skip_special_tokens=False)). tests/unit/test_tokenizer.cpp checks every vectors.json
it finds. It also re-checks the two real vocabularies (gpt2/, llama-spm/) against their llama.cpp test vectors
and writes a vectors.json for them on the same hard strings.

The families' own vocabularies are far too large to ship, so the byte-level families reuse the GPT-2
vocabulary and merges (tests/data/tokenizers/gpt2/tokenizer.json) and the SentencePiece families reuse the
Llama vocabulary (tests/data/tokenizers/llama-spm/tokenizer.json). What each family contributes, its
normalizer, pre-tokenizer, added tokens, post-processor and decoder, is written as in the family's
tokenizer.json on the Hugging Face hub (sources are named at each builder). The ids differ from the real
model's, but every step of the family's pipeline is exercised.

Options: --out DIR (default tests/data/tokenizers), --families a,b (default all), --configs-only (write the
tokenizer.json files only; needs no `tokenizers`), --dump-strings FILE (write the test strings as JSON).
Each family is built in its own try/except: one failure is reported and the others still run; the exit
status is 1 if anything failed.
"""

import argparse
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(REPO, "tests", "data", "tokenizers")


def log(msg):
    print(msg, flush=True)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, obj, compact=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------------
# Base vocabularies.

def base_model(name):
    """The "model" object of one of the two real vocabularies shipped in tests/data/tokenizers."""
    return load_json(os.path.join(DATA, name, "tokenizer.json"))["model"]


def added_token(content, special, normalized=None, lstrip=False, rstrip=False, single_word=False):
    return {
        "content": content,
        "single_word": single_word,
        "lstrip": lstrip,
        "rstrip": rstrip,
        "normalized": (not special) if normalized is None else normalized,
        "special": special,
    }


def with_ids(model, tokens):
    """Gives each added token the id `tokenizers` will give it (AddedVocabulary::add_tokens): the model's id
    of the same content, else the next id after the model's vocabulary."""
    vocab = model["vocab"]
    next_id = len(vocab)
    seen = {}
    out = []
    for t in tokens:
        if t["content"] in seen:
            tid = seen[t["content"]]
        elif t["content"] in vocab:
            tid = vocab[t["content"]]
        else:
            tid = next_id
            next_id += 1
        seen[t["content"]] = tid
        out.append(dict({"id": tid}, **t))
    return out


def tokenizer_json(model, added, normalizer, pre_tokenizer, post_processor, decoder):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    }


def byte_level(add_prefix_space, trim_offsets, use_regex):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def split_regex(pattern, behavior="Isolated", invert=False):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior, "invert": invert}


def template_bos(bos, bos_id):
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def id_of(added, content):
    for t in added:
        if t["content"] == content:
            return t["id"]
    raise KeyError(content)


# ----------------------------------------------------------------------------------------------------------
# The families. Patterns are written as the JSON holds them after parsing: "\\p{L}" is the regex \p{L}, while
# "\r\n" inside DeepSeek's classes are the raw CR / LF characters (the hub JSON has "\r\n" there, not "\\r\\n").

# Qwen2 / Qwen1.5-MoE / Qwen2-MoE / Qwen3-MoE (Qwen/Qwen1.5-MoE-A2.7B tokenizer.json; transformers'
# Qwen2Converter builds the same: NFC, Split(isolated) + ByteLevel(use_regex=False), ByteLevel decoder).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# cl100k / GPT-4 split pattern, as in DBRX (databricks/dbrx-instruct) and Llama 3 tokenizer.json files.
GPT4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# DeepSeek-V3 (deepseek-ai/DeepSeek-V3 tokenizer.json; the same three patterns are in llama.cpp's
# llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM).
DEEPSEEK3_PATTERNS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]


def build_qwen2():
    model = base_model("gpt2")  # Qwen2's vocabulary is not shipped: GPT-2's stands in for it
    model = dict(model, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                 byte_fallback=False, ignore_merges=False)
    added = with_ids(model, [added_token("<|endoftext|>", True), added_token("<|im_start|>", True),
                             added_token("<|im_end|>", True)])
    return tokenizer_json(
        model, added,
        normalizer={"type": "NFC"},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [split_regex(QWEN2_PATTERN),
                                                              byte_level(False, False, False)]},
        post_processor=byte_level(False, False, False),
        decoder=byte_level(False, False, False))


def build_dbrx():
    model = base_model("gpt2")  # DBRX's cl100k vocabulary is not shipped: GPT-2's stands in for it
    added = with_ids(model, [added_token("<|endoftext|>", True), added_token("<|im_start|>", True),
                             added_token("<|im_end|>", True), added_token("<|pad|>", True)])
    return tokenizer_json(
        model, added,
        normalizer=None,
        pre_tokenizer={"type": "Sequence", "pretokenizers": [split_regex(GPT4_PATTERN),
                                                              byte_level(False, True, False)]},
        post_processor=byte_level(True, False, True),
        decoder=byte_level(True, True, True))


def build_deepseek_v3():
    model = base_model("gpt2")  # DeepSeek-V3's vocabulary is not shipped: GPT-2's stands in for it
    # A selection of DeepSeek-V3's added tokens, with the flags they have on the hub (normalized: true).
    names = [("<｜begin▁of▁sentence｜>", True), ("<｜end▁of▁sentence｜>", True), ("<｜▁pad▁｜>", True),
             ("<｜place▁holder▁no▁0｜>", True), ("<｜fim▁hole｜>", False), ("<｜fim▁begin｜>", False),
             ("<｜fim▁end｜>", False), ("<｜User｜>", False), ("<｜Assistant｜>", False), ("<|EOT|>", True),
             ("<｜tool▁calls▁begin｜>", False), ("<｜tool▁calls▁end｜>", False), ("<think>", False),
             ("</think>", False)]
    added = with_ids(model, [added_token(n, s, normalized=True) for n, s in names])
    bos = "<｜begin▁of▁sentence｜>"
    return tokenizer_json(
        model, added,
        normalizer={"type": "Sequence", "normalizers": []},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [split_regex(p) for p in DEEPSEEK3_PATTERNS] +
                       [byte_level(False, True, False)]},
        post_processor=template_bos(bos, id_of(added, bos)),
        decoder=byte_level(True, True, True))


def build_olmoe():
    # allenai/OLMoE-1B-7B-0924: the GPT-NeoX-20B tokenizer family (NFC, ByteLevel with the GPT-2 regex,
    # |||IP_ADDRESS|||-style added tokens, and runs of 2..24 spaces as normalized, non-special added tokens).
    model = base_model("gpt2")  # OLMoE's vocabulary is not shipped: GPT-2's stands in for it
    tokens = [added_token("|||IP_ADDRESS|||", False, normalized=True), added_token("<|padding|>", True)]
    tokens += [added_token(" " * n, False, normalized=True) for n in range(24, 1, -1)]
    tokens += [added_token("|||EMAIL_ADDRESS|||", False, normalized=True),
               added_token("|||PHONE_NUMBER|||", False, normalized=True),
               added_token("<|endoftext|>", True)]
    added = with_ids(model, tokens)
    return tokenizer_json(
        model, added,
        normalizer={"type": "NFC"},
        pre_tokenizer=byte_level(False, True, True),
        post_processor=byte_level(False, True, True),
        decoder=byte_level(False, True, True))


SPM_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def spm_added(model):
    return with_ids(model, [added_token("<unk>", True), added_token("<s>", True), added_token("</s>", True)])


def build_mixtral():
    # mistralai/Mixtral-8x7B-v0.1 (and Llama 2): the "legacy" SentencePiece conversion: Prepend + Replace
    # normalizer, no pre-tokenizer, BOS added by TemplateProcessing, byte-fallback decoder.
    model = base_model("llama-spm")  # the real Llama/Mistral 32000-token vocabulary
    added = spm_added(model)
    return tokenizer_json(
        model, added,
        normalizer={"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        pre_tokenizer=None,
        post_processor=template_bos("<s>", id_of(added, "<s>")),
        decoder=SPM_DECODER)


def build_mistral_metaspace():
    # The non-legacy SentencePiece conversion of newer Mistral/Mixtral checkpoints (transformers'
    # LlamaConverter with legacy=False): no normalizer, Metaspace(prepend_scheme="first", split=False).
    model = base_model("llama-spm")
    added = spm_added(model)
    return tokenizer_json(
        model, added,
        normalizer=None,
        pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        post_processor=template_bos("<s>", id_of(added, "<s>")),
        decoder=SPM_DECODER)


def trimmed_byte_level_model(n_merges):
    """GPT-2's first n_merges merges and the tokens they need: a small, valid byte-level BPE for the
    synthetic configurations below (they test components, not a vocabulary)."""
    gpt2 = base_model("gpt2")
    merges = gpt2["merges"][:n_merges]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    alphabet = [t for t in gpt2["vocab"] if len(t) == 1]  # the 256 byte characters
    tokens = list(dict.fromkeys(alphabet + [a + b for a, b in pairs]))
    return dict(gpt2, vocab={t: i for i, t in enumerate(tokens)}, merges=[f"{a} {b}" for a, b in pairs])


def build_synthetic_splits():
    # Not a hub family: every Split behavior (and invert), String and Regex patterns, Digits, Punctuation,
    # WhitespaceSplit, NFKC + Lowercase + Replace normalizers, a Sequence decoder with Replace and Strip,
    # and RobertaProcessing.
    model = trimmed_byte_level_model(3000)
    added = with_ids(model, [added_token("<|endoftext|>", True)])
    eot = id_of(added, "<|endoftext|>")
    return tokenizer_json(
        model, added,
        normalizer={"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Lowercase"},
            {"type": "Replace", "pattern": {"Regex": "\\s{3,}"}, "content": "  "}]},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "Contiguous", "invert": True},
            {"type": "Split", "pattern": {"Regex": "x|q?"}, "behavior": "Removed", "invert": False},
            {"type": "Split", "pattern": {"String": "th"}, "behavior": "Isolated", "invert": True},
            {"type": "Digits", "individual_digits": True},
            {"type": "Punctuation", "behavior": "MergedWithPrevious"},
            {"type": "WhitespaceSplit"},
            byte_level(True, True, False)]},
        post_processor={"type": "RobertaProcessing", "sep": ["<|endoftext|>", eot], "cls": ["<|endoftext|>", eot],
                        "trim_offsets": True, "add_prefix_space": True},
        decoder={"type": "Sequence", "decoders": [
            byte_level(True, True, True),
            {"type": "Replace", "pattern": {"Regex": "o+"}, "content": "0"},
            {"type": "Strip", "content": " ", "start": 2, "stop": 0}]})


def build_synthetic_added():
    # Not a hub family: added tokens with every flag (single_word, lstrip, rstrip, normalized, special) under a
    # Lowercase normalizer, ignore_merges, the ByteLevel pre-tokenizer with add_prefix_space, and Whitespace.
    model = dict(trimmed_byte_level_model(3000), ignore_merges=True)
    added = with_ids(model, [
        added_token("<|endoftext|>", True),
        added_token("HeLLo", False, normalized=True, single_word=True),
        added_token(" World", False, normalized=True, lstrip=True),
        added_token("<x>", True, normalized=False, lstrip=True, rstrip=True),
        added_token("  ", False, normalized=False),
        added_token("ab", False, normalized=True, rstrip=True),
        added_token("abc", False, normalized=True, single_word=True, lstrip=True),
        added_token("\u00e9", False, normalized=True),
        added_token("\u2581", False, normalized=False)])
    return tokenizer_json(
        model, added,
        normalizer={"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "NFC"}]},
        pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, byte_level(True, True, True)]},
        post_processor=None,
        decoder=byte_level(True, True, True))


def build_synthetic_spm():
    # Not a hub family: the Llama vocabulary without byte fallback (unknown characters become <unk>, not
    # fused), Metaspace(prepend_scheme="always", split=True) pre-tokenizer and decoder, a Sequence
    # post-processor that adds BOS and EOS.
    model = dict(base_model("llama-spm"), byte_fallback=False, fuse_unk=False)
    added = spm_added(model)
    bos, eos = id_of(added, "<s>"), id_of(added, "</s>")
    return tokenizer_json(
        model, added,
        normalizer=None,
        pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        post_processor={"type": "Sequence", "processors": [
            byte_level(True, False, True),
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "</s>", "type_id": 0}}],
             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]},
                                "</s>": {"id": "</s>", "ids": [eos], "tokens": ["</s>"]}}}]},
        decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True})


FAMILIES = {
    "qwen2": build_qwen2,
    "dbrx": build_dbrx,
    "deepseek-v3": build_deepseek_v3,
    "olmoe": build_olmoe,
    "mixtral": build_mixtral,
    "mistral-metaspace": build_mistral_metaspace,
    "synthetic-splits": build_synthetic_splits,
    "synthetic-added": build_synthetic_added,
    "synthetic-spm": build_synthetic_spm,
}

# Hub repositories whose tokenizer.json, if it is in the local Hugging Face cache, is compared with the
# configuration above (nothing is downloaded).
HUB_REPOS = {
    "qwen2": "Qwen/Qwen1.5-MoE-A2.7B",
    "dbrx": "databricks/dbrx-instruct",
    "deepseek-v3": "deepseek-ai/DeepSeek-V3",
    "olmoe": "allenai/OLMoE-1B-7B-0924",
    "mixtral": "mistralai/Mixtral-8x7B-v0.1",
    "mistral-metaspace": "mistralai/Mixtral-8x22B-v0.1",
}

# ----------------------------------------------------------------------------------------------------------
# Test strings.

HARD_STRINGS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\t\n", " \n \n", "\r\n", "\r\n\r\n", "a\rb",
    "Hello world", " Hello world", "Hello  world", "Hello   world  ", "  leading and trailing  ",
    "Hello World!", "Hello, world! How are you?", "hello\nworld\n\n  indented\n\tand tabbed",
    "don't I'll we'VE they're He's I'm you'd", "DON'T WON'T I'LL", "'s 's 'S", "it's", "o'clock rock'n'roll",
    "1", "12", "123", "1234", "12345", "123456", "1234567", "123456789012345", "3.14159", "1,000,000",
    "0x1F 0b1010 1e-9", "v1.2.3", "2024-01-31T12:34:56Z", "\uff12\uff10\uff12\uff14", "\u0663\u0664\u0665",
    "\u2460\u2461\u2462 \u00bd \u00b2", "a1b2c3", "phone: +1 (555) 010-9999",
    "caf\u00e9", "cafe\u0301", "\ufb01 ligature \ufb02", "\u00c5ngstr\u00f6m \u212b", "F\u00fchrer",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\u4e2d\u6587\u6d4b\u8bd5\uff0c\u6807\u70b9\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u30ab\u30bf\u30ab\u30ca \u3072\u3089\u304c\u306a",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522", "\u1e9e \u00df", "\u0130stanbul",
    "\u03a3\u0391\u03a3", "A\u0308", "\u1780\u17b6\u179a", "ied 4 \u00bd months",
    "\U0001f999", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f1fa\U0001f1f3 flag", "\u2764\ufe0f", "\U0001f642\U0001f643 emojis\U0001f917",
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705",
    "\U0001d306 \U00010348 \U0001fae0",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "<div class=\"x\">&amp;</div>", "https://example.com/path?q=1&r=2#frag", "$ echo \"$HOME\" | grep -v '#'",
    "if x == 1:\n        pass\n    elif y:\n\n\n        z = [1,2,3]",
    "a\u00a0b", "a\u3000b", "a\u2028b", "x\u180e y", "x\u0085y", "tab\tseparated\tvalues", "   \n\n   \t  ",
    "line1\r\nline2\rline3", " " * 30, "\n" * 10, "\t\t\t", "a" * 50, "supercalifragilistic" * 4,
    "\u0000 nul", "\u200b zero width", "\ufeffBOM", "\u00a0\u00a0", "!!!???...", "...", "--- *** ___",
    "The quick brown fox jumps over the lazy dog.",
    "   Hello", "    Hello\n    Hello", " (", "\t(", "\n =", "' era", "Hello, y'all! How are you \U0001f601 ?",
]

# Added tokens written in text, per family.
SPECIAL_STRINGS = {
    "gpt2": ["<|endoftext|>", "Hello<|endoftext|>world", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
             "<|endoftext", "a<|endoftext|>\n"],
    "qwen2": ["<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
              " <|im_end|> ", "x<|im_start|>y", "<|im_start", "<|im_end|><|im_end|>", "caf\u00e9<|im_end|>cafe\u0301"],
    "dbrx": ["<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>",
             "<|endoftext|>", " <|pad|> ", "<|im_start|><|im_end|>"],
    "deepseek-v3": ["<\uff5cbegin\u2581of\u2581sentence\uff5c>Hi", "<\uff5cUser\uff5c>hello<\uff5cAssistant\uff5c>",
                    "<think>\nhmm\n</think>\n\nanswer", "<|EOT|> <\uff5cend\u2581of\u2581sentence\uff5c>",
                    "<\uff5ctool\u2581calls\u2581begin\uff5c>{\"a\": 1}<\uff5ctool\u2581calls\u2581end\uff5c>",
                    "<\uff5cfim\u2581begin\uff5c>x<\uff5cfim\u2581hole\uff5c>y<\uff5cfim\u2581end\uff5c>",
                    "\u6570\u5b66 12345 \u3072\u3089\u304c\u306a\u30ab\u30bf\u30ab\u30ca \u4e2d\u6587abc"],
    "olmoe": ["|||IP_ADDRESS|||", "mail |||EMAIL_ADDRESS||| or |||PHONE_NUMBER|||", "<|endoftext|>",
              "<|padding|>x", "a  b   c    d", "x" + " " * 30 + "y", "  leading", "trailing  ", "\t  \t"],
    "mixtral": ["<s>", "</s>", "<unk>", "<s>Hello</s>", " <s> ", "<s> <s>", "Hello<s>world", "[INST] Hi [/INST]"],
    "mistral-metaspace": ["<s>", "<s>Hello", "<s> Hello", "Hello</s> world", "</s></s>", "[INST] Hi [/INST]"],
}
SPECIAL_STRINGS["llama-spm"] = SPECIAL_STRINGS["mixtral"]
SPECIAL_STRINGS["synthetic-splits"] = ["the-final--countdown", "x1y22z333 q", "a, b; c... (d) 'e'", "THE THEN th",
                                       "<|endoftext|>", "aeiou xyz    spaces"]
SPECIAL_STRINGS["synthetic-added"] = ["hello HELLO xhello hellox", "big World  <x>  ab  abc abcd", "a  <x>  b",
                                      "\u00c9t\u00e9 e\u0301t\u00e9", "x\u2581y \u2581", "<|endoftext|>hello",
                                      "ab ab ab", " abc", "abcabc abc"]
SPECIAL_STRINGS["synthetic-spm"] = SPECIAL_STRINGS["mixtral"] + ["\U0001f999 unknown \u2603 chars", "\u2581x \u2581\u2581"]


def strings_for(family):
    return HARD_STRINGS + SPECIAL_STRINGS.get(family, [])


# ----------------------------------------------------------------------------------------------------------
# Running `tokenizers`.

def make_vectors(tok, strings):
    vectors = []
    for text in strings:
        for add in (False, True):
            ids = tok.encode(text, add_special_tokens=add).ids
            vectors.append({
                "text": text,
                "add_special_tokens": add,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            })
    return vectors


def check_added_ids(tok, config):
    for t in config["added_tokens"]:
        got = tok.token_to_id(t["content"])
        if got != t["id"]:
            raise RuntimeError(f"added token {t['content']!r}: tokenizers gives id {got}, the file says {t['id']}")


def cross_check_transformers(path, vectors):
    """Same ids through transformers' PreTrainedTokenizerFast (informational)."""
    try:
        import transformers
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    except Exception as e:  # noqa: BLE001 - informational only
        log(f"    transformers cross-check skipped: {e}")
        return 0
    bad = 0
    for v in vectors:
        ids = fast(v["text"], add_special_tokens=v["add_special_tokens"])["input_ids"]
        if ids != v["ids"]:
            bad += 1
            if bad <= 3:
                log(f"    transformers differs on {v['text']!r} (add_special_tokens={v['add_special_tokens']}): "
                    f"{ids} vs {v['ids']}")
    log(f"    transformers {transformers.__version__}: {len(vectors) - bad}/{len(vectors)} identical")
    return bad


def compare_with_hub_cache(family, config):
    """If the family's real tokenizer.json is in the local hub cache, report where our pipeline differs."""
    if family not in HUB_REPOS:
        return
    try:
        from huggingface_hub import try_to_load_from_cache
        path = try_to_load_from_cache(HUB_REPOS[family], "tokenizer.json")
    except Exception:  # noqa: BLE001
        return
    if not isinstance(path, str) or not os.path.exists(path):
        log(f"    ({HUB_REPOS[family]} is not in the local hub cache; configuration not compared)")
        return
    hub = load_json(path)
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if hub.get(key) != config.get(key):
            log(f"    NOTE: {key} differs from {HUB_REPOS[family]}: hub has {json.dumps(hub.get(key))[:400]}")
    log(f"    compared with {HUB_REPOS[family]} from the local hub cache")


def read_ggml_vectors(folder):
    inp = [f for f in os.listdir(folder) if f.endswith(".inp")]
    out = [f for f in os.listdir(folder) if f.endswith(".out")]
    if len(inp) != 1 or len(out) != 1:
        raise RuntimeError(f"{folder}: expected one .inp and one .out file")
    with open(os.path.join(folder, inp[0]), encoding="utf-8", newline="") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")[:-1]
    with open(os.path.join(folder, out[0]), encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")[: len(texts)]
    return texts, [[int(x) for x in line.split()] for line in lines]


def reverify_real(name, out_dir, configs_only):
    """Checks the llama.cpp test vectors of gpt2/ or llama-spm/ and writes vectors.json for the hard strings."""
    folder = os.path.join(DATA, name)
    texts, expected = read_ggml_vectors(folder)
    log(f"[{name}] {len(texts)} llama.cpp test vectors")
    if configs_only:
        return
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    bad = 0
    for text, ids in zip(texts, expected):
        got = tok.encode(text, add_special_tokens=False).ids
        if got != ids:
            bad += 1
            log(f"    MISMATCH {text!r}: tokenizers {got}, file {ids}")
    if bad:
        raise RuntimeError(f"{name}: {bad} of {len(texts)} llama.cpp vectors differ from tokenizers")
    log(f"    all {len(texts)} llama.cpp vectors reproduced")
    vectors = make_vectors(tok, strings_for(name))
    write_json(os.path.join(out_dir, name, "vectors.json"), vectors, compact=False)
    log(f"    wrote {len(vectors)} vectors to {os.path.join(out_dir, name, 'vectors.json')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DATA, help="output folder (default: tests/data/tokenizers)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families to build")
    ap.add_argument("--configs-only", action="store_true", help="write tokenizer.json files only")
    ap.add_argument("--dump-strings", metavar="FILE", help="write {family: [strings]} as JSON and continue")
    args = ap.parse_args()

    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            log(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
            return 2
    if args.dump_strings:
        write_json(args.dump_strings, {f: strings_for(f) for f in list(FAMILIES) + ["gpt2", "llama-spm"]},
                   compact=False)

    if not args.configs_only:
        try:
            import tokenizers
            log(f"tokenizers {tokenizers.__version__} (python {sys.version.split()[0]})")
        except ImportError as e:
            log(f"error: `tokenizers` is not installed ({e}); use --configs-only to only write tokenizer.json")
            return 1

    failures = []
    for name in families:
        log(f"[{name}]")
        try:
            config = FAMILIES[name]()
            folder = os.path.join(args.out, name)
            path = os.path.join(folder, "tokenizer.json")
            write_json(path, config)
            log(f"    wrote {path}")
            compare_with_hub_cache(name, config)
            if args.configs_only:
                continue
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(path)
            check_added_ids(tok, config)
            vectors = make_vectors(tok, strings_for(name))
            write_json(os.path.join(folder, "vectors.json"), vectors, compact=False)
            log(f"    wrote {len(vectors)} vectors to {os.path.join(folder, 'vectors.json')}")
            cross_check_transformers(path, vectors)
        except Exception as e:  # noqa: BLE001 - report and go on with the next family
            traceback.print_exc()
            failures.append(f"{name}: {e}")

    for name in ("gpt2", "llama-spm"):
        try:
            reverify_real(name, args.out, args.configs_only)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            failures.append(f"{name}: {e}")

    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
        return 1
    log("all families done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
