#!/usr/bin/env python3
"""Builds tiny random-weight MoE checkpoints with `transformers` and stores their reference logits.

Run on a machine with torch and transformers (the `device` machine has torch 2.11, transformers 5.17):
    python3 tests/reference/make_fixtures.py OUT_DIR
Each fixture OUT_DIR/<name>/ holds the checkpoint in the Hugging Face hub layout (config.json, *.safetensors)
and reference.json + logits_<i>.npy (float32 [tokens, vocab]) computed by reloading that very directory with
`from_pretrained(dtype=float32)`, so the reference is what transformers computes from the files we ship.
A bf16 fixture's reference is computed in f32 arithmetic from the bf16 weights.

Checkpoints are written in the layout real hub checkpoints use (per-expert tensors for Mixtral/Qwen/OLMoE,
fused w1/v1/w2 for DBRX). If this transformers version saves another layout, the script converts and checks
that reloading gives the same logits.
"""
import json, os, sys, shutil, traceback, math
import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

torch.set_grad_enabled(False)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_num_threads(min(8, os.cpu_count() or 1))

VOCAB = 384
GREEDY = 24


def families():
    T = transformers
    return {
        "dbrx": lambda: T.DbrxConfig(
            d_model=64, n_heads=4, n_layers=2, max_seq_len=256, vocab_size=VOCAB,
            attn_config={"kv_n_heads": 2, "clip_qkv": 0.6, "rope_theta": 500000.0},
            ffn_config={"ffn_hidden_size": 48, "moe_num_experts": 8, "moe_top_k": 2,
                        "moe_normalize_expert_weights": 1.0, "ffn_act_fn": {"name": "silu"}},
            initializer_range=0.08, tie_word_embeddings=False),
        "mixtral": lambda: T.MixtralConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-5, initializer_range=0.08,
            tie_word_embeddings=False),
        "qwen2_moe": lambda: T.Qwen2MoeConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            shared_expert_intermediate_size=80, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[1], num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6,
            initializer_range=0.08, use_sliding_window=False, tie_word_embeddings=False),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, head_dim=24,
            decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6,
            initializer_range=0.08, use_sliding_window=False, tie_word_embeddings=True),
        "olmoe": lambda: T.OlmoeConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=False, clip_qkv=None, max_position_embeddings=256, rope_theta=10000.0,
            rms_norm_eps=1e-5, initializer_range=0.08, tie_word_embeddings=False),
    }


MODEL_CLASS = {
    "dbrx": "DbrxForCausalLM", "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
}
ROPE = {"dbrx": 500000.0, "mixtral": 1000000.0, "qwen2_moe": 1000000.0, "qwen3_moe": 1000000.0, "olmoe": 10000.0}

# name: (family, dtype, config spelling, shard size or None, extra config changes)
FIXTURES = {
    "dbrx_f32":       ("dbrx", "float32", "classic", None, {}),
    "dbrx_bf16":      ("dbrx", "bfloat16", "new", "150KB", {}),
    "mixtral_f32":    ("mixtral", "float32", "classic", "300KB", {}),
    "mixtral_bf16":   ("mixtral", "bfloat16", "new", None, {}),
    "qwen2_moe_f32":  ("qwen2_moe", "float32", "new", None, {}),
    "qwen2_moe_bf16": ("qwen2_moe", "bfloat16", "classic", None, {"norm_topk_prob": True}),
    "qwen3_moe_f32":  ("qwen3_moe", "float32", "classic", None, {}),
    "qwen3_moe_bf16": ("qwen3_moe", "bfloat16", "new", "200KB", {"tie_word_embeddings": False}),
    "olmoe_f32":      ("olmoe", "float32", "new", None, {"clip_qkv": 0.7}),
    "olmoe_bf16":     ("olmoe", "bfloat16", "classic", None, {"norm_topk_prob": True}),
}


def randomize(model, seed):
    """Every parameter random: norms near 1, biases small, matrices N(0, 0.08)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and "norm" in name:
            p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
        elif p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.08 * torch.randn(p.shape, generator=g))


def legacy_state_dict(family, model):
    """The state dict in the hub layout, whatever this transformers version holds internally."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {}
    for k, v in sd.items():
        if "rotary_emb" in k or k.endswith("inv_freq"):
            continue
        out[k] = v
    # Fused expert tensors of transformers 5 (experts.gate_up_proj [E, 2F, D], experts.down_proj [E, D, F]).
    fused = [k for k in list(out) if (k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")
             or k.endswith("experts.gate_up_proj.weight") or k.endswith("experts.down_proj.weight"))
             and "shared_experts." not in k]
    for k in fused:
        v = out.pop(k)
        prefix = k[: k.index("experts.") + len("experts.")]
        E = v.shape[0]
        names = {"mixtral": ("w1", "w3", "w2")}.get(family, ("gate_proj", "up_proj", "down_proj"))
        if "gate_up_proj" in k:
            F2 = v.shape[1]
            # Stored [E, 2F, D] (out, in) or [E, D, 2F] (in, out); find which by the config.
            D = model.config.hidden_size if family != "dbrx" else model.config.d_model
            if v.shape[2] == D:
                gate, up = v[:, : F2 // 2, :], v[:, F2 // 2 :, :]
            else:
                F2 = v.shape[2]
                gate, up = v[:, :, : F2 // 2].transpose(1, 2), v[:, :, F2 // 2 :].transpose(1, 2)
            for e in range(E):
                out[f"{prefix}{e}.{names[0]}.weight"] = gate[e].contiguous()
                out[f"{prefix}{e}.{names[1]}.weight"] = up[e].contiguous()
        else:
            D = model.config.hidden_size if family != "dbrx" else model.config.d_model
            if v.shape[1] == D:
                down = v
            else:
                down = v.transpose(1, 2)
            for e in range(E):
                out[f"{prefix}{e}.{names[2]}.weight"] = down[e].contiguous()
    if family == "mixtral":
        # hub layout: block_sparse_moe.{gate,experts.E.w1/w2/w3}
        out = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in out.items()}
    return out


def write_config(path, family, spelling, cfg_dict):
    d = dict(cfg_dict)
    theta = ROPE[family]
    d.pop("rope_scaling", None)
    if spelling == "classic":
        d.pop("rope_parameters", None)
        if family == "dbrx":
            d.setdefault("attn_config", {})
            d["attn_config"]["rope_theta"] = theta
            d.pop("rope_theta", None)
        else:
            d["rope_theta"] = theta
    else:
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        d.pop("rope_theta", None)
        if family == "dbrx" and "attn_config" in d:
            d["attn_config"].pop("rope_theta", None)
    with open(path, "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def load_reference_model(family, path):
    T = transformers
    cfg = T.AutoConfig.from_pretrained(path)
    # transformers 5 ignores DBRX's attn_config.rope_theta: put the checkpoint's own value in force.
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": ROPE[family]}
    if family == "dbrx":
        try:
            cfg.attn_config.rope_theta = ROPE[family]
        except Exception:
            pass
    cls = getattr(T, MODEL_CLASS[family])
    m = cls.from_pretrained(path, config=cfg, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def logits_of(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x).logits[0].float()


def greedy(model, ids, n):
    seq = list(ids)
    margins = []
    for _ in range(n):
        lg = logits_of(model, seq)[-1]
        top2 = torch.topk(lg, 2).values
        margins.append(float(top2[0] - top2[1]))
        seq.append(int(torch.argmax(lg)))
    return seq[len(ids):], min(margins)


def tensors_manifest(path):
    rows = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(path, fn), "pt") as f:
                for k in f.keys():
                    t = f.get_slice(k)
                    rows[k] = [fn, str(t.get_dtype()), list(t.get_shape())]
    return rows


def make(name, spec, out_root, seed):
    family, dtype, spelling, shard, extra = spec
    T = transformers
    cfg = families()[family]()
    for k, v in extra.items():
        setattr(cfg, k, v)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": ROPE[family]}
    torch.manual_seed(seed)
    cls = getattr(T, MODEL_CLASS[family])
    model = cls._from_config(cfg, dtype=torch.float32, attn_implementation="eager") if hasattr(cls, "_from_config") else cls(cfg)
    model.eval()
    randomize(model, seed)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    tmp = os.path.join(out_root, "_tmp_" + name)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    saved = tensors_manifest(tmp)
    cfg_dict = json.load(open(os.path.join(tmp, "config.json")))
    print(f"[{name}] transformers saved {len(saved)} tensors; sample keys:", list(saved)[:12])
    print(f"[{name}] saved config.json:", json.dumps(cfg_dict, sort_keys=True))

    # Write the hub layout ourselves (per-expert tensors), optionally sharded.
    path = os.path.join(out_root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    sd = legacy_state_dict(family, model)
    if cfg_dict.get("tie_word_embeddings") and "lm_head.weight" in sd:
        del sd["lm_head.weight"]
    write_config(os.path.join(path, "config.json"), family, spelling, cfg_dict)
    if shard is None:
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        limit = {"KB": 1000, "MB": 1000_000}[shard[-2:]] * int(shard[:-2])
        shards, cur, size = [], {}, 0
        for k in sd:
            nb = sd[k].numel() * sd[k].element_size()
            if cur and size + nb > limit:
                shards.append(cur); cur, size = {}, 0
            cur[k] = sd[k]; size += nb
        if cur:
            shards.append(cur)
        weight_map, total = {}, 0
        for i, s in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(s, os.path.join(path, fn), metadata={"format": "pt"})
            for k, v in s.items():
                weight_map[k] = fn
                total += v.numel() * v.element_size()
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                  open(os.path.join(path, "model.safetensors.index.json"), "w"), indent=2, sort_keys=True)
    shutil.rmtree(tmp, ignore_errors=True)

    # Reference: reload exactly these files.
    ref_model = load_reference_model(family, path)
    g = torch.Generator().manual_seed(seed + 1)
    prompts, results = [], []
    for plen in (1, 7, 19):
        best = None
        for attempt in range(30):
            ids = torch.randint(0, VOCAB, (plen,), generator=g).tolist()
            toks, margin = greedy(ref_model, ids, GREEDY)
            if best is None or margin > best[2]:
                best = (ids, toks, margin)
            if margin > 2e-3:
                break
        ids, toks, margin = best
        prompts.append(ids)
        results.append({"prompt": ids, "greedy": toks, "greedy_min_margin": margin})
    # The reloaded model must hold exactly the weights we built (checks our layout and config writing).
    mem = {k: v.float() for k, v in model.state_dict().items() if "inv_freq" not in k and "rotary" not in k}
    rel = {k: v.float() for k, v in ref_model.state_dict().items() if "inv_freq" not in k and "rotary" not in k}
    if set(mem) != set(rel):
        raise RuntimeError(f"{name}: parameter names differ after reload: {sorted(set(mem) ^ set(rel))}")
    for k in mem:
        if not torch.equal(mem[k], rel[k]):
            raise RuntimeError(f"{name}: parameter {k} differs after reload")
    conv_err = 0.0
    if dtype == "float32":
        check = logits_of(model, prompts[2])
        again = logits_of(ref_model, prompts[2])
        conv_err = float((check - again).norm() / again.norm())
        print(f"[{name}] reload vs in-memory relative error {conv_err:.3e}")
        if not conv_err < 1e-6:
            raise RuntimeError(f"{name}: reloading the written checkpoint changes the logits ({conv_err:.3e})")
    for i, r in enumerate(results):
        full = r["prompt"] + r["greedy"][:-1]
        lg = logits_of(ref_model, full).numpy().astype(np.float32)
        np.save(os.path.join(path, f"logits_{i}.npy"), lg)
        r["logits_file"] = f"logits_{i}.npy"
        r["logits_tokens"] = full
    meta = {
        "name": name, "family": family, "dtype": dtype, "config_spelling": spelling,
        "sharded": shard is not None, "rope_theta": ROPE[family], "seed": seed,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "reload_vs_inmemory_rel_err": conv_err,
        "cases": results,
        "tensors": tensors_manifest(path),
    }
    json.dump(meta, open(os.path.join(path, "reference.json"), "w"), indent=1)
    print(f"[{name}] ok: margins", [round(r["greedy_min_margin"], 4) for r in results])


def run_fixtures(fixtures, make_fn, seed_base):
    """Makes the fixtures named on the command line (all of `fixtures` when none), each with its own seed."""
    out_root = sys.argv[1]
    only = sys.argv[2:] or list(fixtures)
    os.makedirs(out_root, exist_ok=True)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    failed = []
    for name in only:
        try:
            make_fn(name, fixtures[name], out_root, seed_base + 17 * list(fixtures).index(name))
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print("FAILED:", failed if failed else "none")


def main():
    run_fixtures(FIXTURES, make, 1000)


if __name__ == "__main__":
    main()
