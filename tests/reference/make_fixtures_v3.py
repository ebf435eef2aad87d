#!/usr/bin/env python3
"""Tiny random-weight DeepSeek-V3, DeepSeek-V2 and gpt-oss checkpoints with their reference logits (issue 19).

Run on a machine with torch and transformers (the `device` machine has torch 2.11, transformers 5.17):
    python3 tests/reference/make_fixtures_v3.py OUT_DIR [NAME...]
The layout of each fixture is make_fixtures.py's: OUT_DIR/<name>/ holds config.json, *.safetensors in the hub
layout, reference.json and logits_<i>.npy (float32 [tokens, vocab]).

Plain fixtures (f32, bf16) are reloaded from the written files with `from_pretrained(dtype=float32)` and the
reference is computed from the reloaded model, as in make_fixtures.py.

Quantized fixtures hold the formats the published checkpoints use:
- deepseek_v3_fp8: every linear layer but the router, embeddings and head is float8_e4m3fn with a float32
  `weight_scale_inv` per 128x128 block (`quantization_config` quant_method fp8, as DeepSeek-V3/R1 publish).
  d_model 160 makes partial blocks. The reference is computed in f32 from the dequantized weights
  (fp8 value * scale_inv of its block), the other weights being the bf16 values stored in the files.
- gpt_oss_mxfp4: the experts' gate_up_proj and down_proj are MXFP4 `_blocks` (uint8, two e2m1 values per byte,
  low nibble first, 32 values per block along the input dimension) and `_scales` (uint8 e8m0, 2^(s-127)), as
  openai/gpt-oss-20b publishes; the rest is bf16. The reference is computed in f32 from the dequantized weights.
  If transformers can load the directory itself (Mxfp4Config(dequantize=True)), the script compares and records
  the difference.
"""
import json, os, sys, shutil, traceback, math
import numpy as np
import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (randomize, greedy, logits_of, tensors_manifest)

torch.set_grad_enabled(False)
VOCAB = mf.VOCAB

DSV3_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
             "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
DSV2_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
             "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}
OSS_YARN = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}


def cfg_deepseek_v3(hidden=64):
    return transformers.DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
        n_routed_experts=16, routed_scaling_factor=2.5, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, n_group=4, topk_group=2, num_experts_per_tok=4,
        first_k_dense_replace=1, norm_topk_prob=True, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters=dict(DSV3_YARN), rope_interleave=True, attention_bias=False, initializer_range=0.08,
        tie_word_embeddings=False)


def cfg_deepseek_v2():
    # DeepSeek-V2-Lite's shape in small: no q compression, softmax greedy routing, 2 shared experts.
    return transformers.DeepseekV2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2,
        n_routed_experts=8, routed_scaling_factor=1.0, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, n_group=1, topk_group=1, topk_method="greedy",
        num_experts_per_tok=3, first_k_dense_replace=1, norm_topk_prob=False, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_parameters=dict(DSV2_YARN), attention_bias=False, initializer_range=0.08,
        tie_word_embeddings=False)


def cfg_gpt_oss():
    return transformers.GptOssConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], attention_bias=True, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_parameters=dict(OSS_YARN), swiglu_limit=7.0, initializer_range=0.08,
        tie_word_embeddings=False)


# name: (family, config maker, dtype of the files, quantization or None)
FIXTURES = {
    "deepseek_v3_f32":  ("deepseek_v3", cfg_deepseek_v3, "float32", None),
    "deepseek_v3_bf16": ("deepseek_v3", cfg_deepseek_v3, "bfloat16", None),
    "deepseek_v3_fp8":  ("deepseek_v3", lambda: cfg_deepseek_v3(hidden=160), "bfloat16", "fp8"),
    "deepseek_v2_f32":  ("deepseek_v2", cfg_deepseek_v2, "float32", None),
    "gpt_oss_f32":      ("gpt_oss", cfg_gpt_oss, "float32", None),
    "gpt_oss_bf16":     ("gpt_oss", cfg_gpt_oss, "bfloat16", None),
    "gpt_oss_mxfp4":    ("gpt_oss", cfg_gpt_oss, "bfloat16", "mxfp4"),
}
MODEL_CLASS = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM",
               "gpt_oss": "GptOssForCausalLM"}


def randomize(family, model, seed):
    mf.randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 7)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("e_score_correction_bias"):
            # Large enough to change which experts win (sigmoid scores lie in (0, 1)).
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("self_attn.sinks"):
            p.copy_(1.5 * torch.randn(p.shape, generator=g))
        elif family == "gpt_oss" and name.endswith("experts.gate_up_proj"):
            # std ~3 before the clamp at 7: some gate and up values are clamped, so the limit is exercised.
            p.copy_(0.4 * torch.randn(p.shape, generator=g))


def hub_state_dict(family, model):
    """The checkpoint's tensors as the hub publishes them."""
    if family == "gpt_oss":
        # The hub's bf16 layout is transformers' own: fused, interleaved gate/up experts.
        return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                if "rotary_emb" not in k and not k.endswith("inv_freq")}
    sd = mf.legacy_state_dict("deepseek", model)
    return sd


# ---- FP8 (DeepSeek-V3's published format) ----

FP8_BLOCK = 128


def fp8_quantizable(family, name, t):
    if t.dim() != 2 or not name.endswith(".weight"):
        return False
    if "embed_tokens" in name or name.startswith("lm_head") or name.endswith("mlp.gate.weight"):
        return False
    return "norm" not in name


def fp8_quantize(w):
    """w [out, in] f32 -> (fp8 e4m3 [out, in], scale_inv f32 [ceil(out/128), ceil(in/128)], dequantized f32)."""
    O, I = w.shape
    bo, bi = math.ceil(O / FP8_BLOCK), math.ceil(I / FP8_BLOCK)
    scale = torch.zeros(bo, bi, dtype=torch.float32)
    q = torch.zeros(O, I, dtype=torch.float8_e4m3fn)
    deq = torch.zeros(O, I, dtype=torch.float32)
    for a in range(bo):
        for b in range(bi):
            blk = w[a * FP8_BLOCK:(a + 1) * FP8_BLOCK, b * FP8_BLOCK:(b + 1) * FP8_BLOCK].float()
            s = float(blk.abs().max()) / 448.0
            s = s if s > 0 else 1.0
            qb = (blk / s).to(torch.float8_e4m3fn)
            scale[a, b] = s
            q[a * FP8_BLOCK:(a + 1) * FP8_BLOCK, b * FP8_BLOCK:(b + 1) * FP8_BLOCK] = qb
            deq[a * FP8_BLOCK:(a + 1) * FP8_BLOCK, b * FP8_BLOCK:(b + 1) * FP8_BLOCK] = qb.float() * torch.tensor(s)
    return q, scale, deq


# ---- MXFP4 (gpt-oss's published format) ----

FP4_MAG = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w):
    """w [..., out, in] f32, in % 32 == 0 -> (blocks uint8 [..., out, in/32, 16], scales uint8 [..., out, in/32],
    dequantized f32 [..., out, in])."""
    *pre, O, I = w.shape
    assert I % 32 == 0
    x = w.float().reshape(*pre, O, I // 32, 32)
    amax = x.abs().amax(-1)
    e = torch.ceil(torch.log2(torch.clamp(amax, min=2.0 ** -120) / 6.0)).clamp(-127, 127)
    scaled = x / torch.pow(2.0, e)[..., None]
    mag = (scaled.abs()[..., None] - FP4_MAG).abs().argmin(-1)
    neg = (scaled < 0) & (mag > 0)
    code = (mag + 8 * neg.long()).to(torch.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).to(torch.uint8)
    scales = (e + 127).to(torch.uint8)
    deq = FP4_MAG[mag] * torch.where(neg, -1.0, 1.0) * torch.pow(2.0, e)[..., None]
    return blocks.contiguous(), scales.contiguous(), deq.reshape(*pre, O, I)


def mxfp4_dequantize(blocks, scales):
    """Independent decoding of the stored bytes (checks mxfp4_quantize's packing)."""
    lut = torch.cat([FP4_MAG, -FP4_MAG])
    lo = lut[(blocks & 0x0F).long()]
    hi = lut[(blocks >> 4).long()]
    vals = torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * torch.pow(2.0, scales.float() - 127.0)[..., None]
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


def write_files(path, sd):
    os.makedirs(path, exist_ok=True)
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def write_config(path, cfg_dict, family, quant):
    d = dict(cfg_dict)
    # The hub spelling of these checkpoints: rope_scaling + rope_theta at the top level.
    rp = dict(d.pop("rope_parameters", None) or {})
    d["rope_theta"] = rp.pop("rope_theta", 10000.0)
    rtype = rp.pop("rope_type", "default")
    if rtype != "default":
        rp["type"] = rtype
        rp["rope_type"] = rtype
        d["rope_scaling"] = rp
    if family == "gpt_oss":
        d["experts_per_token"] = d.get("num_experts_per_tok")
        d["num_experts_per_tok"] = d.get("num_experts_per_tok")
    if quant == "fp8":
        d["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                    "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    elif quant == "mxfp4":
        d["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def build_model(family, make_cfg, seed):
    cfg = make_cfg()
    torch.manual_seed(seed)
    cls = getattr(transformers, MODEL_CLASS[family])
    model = cls._from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    randomize(family, model, seed)
    return model


def cases_of(ref_model, seed):
    g = torch.Generator().manual_seed(seed + 1)
    results = []
    for plen in (1, 7, 19):
        best = None
        for _ in range(30):
            ids = torch.randint(0, VOCAB, (plen,), generator=g).tolist()
            toks, margin = mf.greedy(ref_model, ids, mf.GREEDY)
            if best is None or margin > best[2]:
                best = (ids, toks, margin)
            if margin > 2e-3:
                break
        ids, toks, margin = best
        results.append({"prompt": ids, "greedy": toks, "greedy_min_margin": margin})
    return results


def reload(family, path):
    cls = getattr(transformers, MODEL_CLASS[family])
    m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def same_params(name, a, b):
    pa = {k: v.float() for k, v in a.state_dict().items() if "inv_freq" not in k and "rotary" not in k}
    pb = {k: v.float() for k, v in b.state_dict().items() if "inv_freq" not in k and "rotary" not in k}
    if set(pa) != set(pb):
        raise RuntimeError(f"{name}: parameter names differ after reload: {sorted(set(pa) ^ set(pb))}")
    for k in pa:
        if not torch.equal(pa[k], pb[k]):
            raise RuntimeError(f"{name}: parameter {k} differs after reload")


def make(name, spec, out_root, seed):
    family, make_cfg, dtype, quant = spec
    model = build_model(family, make_cfg, seed)
    # Round every weight to the files' dtype first, so that the f32 reference sees the stored values.
    if dtype == "bfloat16":
        # Parameters only: buffers (the rotary inv_freq) stay as transformers computes them in f32.
        for prm in model.parameters():
            prm.data = prm.data.to(torch.bfloat16).to(torch.float32)
    tmp = os.path.join(out_root, "_tmp_" + name)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    cfg_dict = json.load(open(os.path.join(tmp, "config.json")))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[{name}] config:", json.dumps(cfg_dict, sort_keys=True))

    path = os.path.join(out_root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    extra = {}
    if quant is None:
        sd = hub_state_dict(family, model)
        if dtype == "bfloat16":
            # e_score_correction_bias is published in f32 (and is a buffer, not rounded above).
            sd = {k: (v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)) for k, v in sd.items()}
        if cfg_dict.get("tie_word_embeddings") and "lm_head.weight" in sd:
            del sd["lm_head.weight"]
        write_config(path, cfg_dict, family, None)
        write_files(path, sd)
        ref_model = reload(family, path)
        same_params(name, model, ref_model)
        check = mf.logits_of(model, list(range(11)))
        again = mf.logits_of(ref_model, list(range(11)))
        extra["reload_vs_inmemory_rel_err"] = float((check - again).norm() / again.norm())
        if not extra["reload_vs_inmemory_rel_err"] < 1e-6:
            raise RuntimeError(f"{name}: reloading the written checkpoint changes the logits "
                               f"({extra['reload_vs_inmemory_rel_err']:.3e}): config.json is read differently")
    elif quant == "fp8":
        sd = hub_state_dict(family, model)
        out, n_q = {}, 0
        deq_of = {}
        for k, v in sd.items():
            if fp8_quantizable(family, k, v):
                q, s, deq = fp8_quantize(v.float())
                out[k] = q
                out[k + "_scale_inv"] = s
                deq_of[k] = deq
                n_q += 1
            elif k.endswith("e_score_correction_bias"):
                out[k] = v.float()  # published in f32
            else:
                out[k] = v.to(torch.bfloat16)
        write_config(path, cfg_dict, family, "fp8")
        write_files(path, out)
        # The reference model: the dequantized values in place of the quantized weights.
        ref_model = reload_with_values(family, make_cfg, {**{k: v.float() for k, v in sd.items()}, **deq_of})
        extra["fp8_tensors"] = n_q
        extra["fp8_weight_block_size"] = [FP8_BLOCK, FP8_BLOCK]
    elif quant == "mxfp4":
        sd = hub_state_dict(family, model)
        out = {}
        deq_sd = {}
        for k, v in sd.items():
            if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
                w_out_in = v.float().transpose(1, 2).contiguous()  # [E, in, out] -> [E, out, in]
                blocks, scales, deq = mxfp4_quantize(w_out_in)
                redo = mxfp4_dequantize(blocks, scales)
                if not torch.equal(redo, deq):
                    raise RuntimeError(f"{name}: MXFP4 packing of {k} does not decode to its values")
                out[k + "_blocks"] = blocks
                out[k + "_scales"] = scales
                deq_sd[k] = deq.transpose(1, 2).contiguous()
            else:
                out[k] = v.to(torch.bfloat16)
                deq_sd[k] = v.float()
        write_config(path, cfg_dict, family, "mxfp4")
        write_files(path, out)
        ref_model = reload_with_values(family, make_cfg, deq_sd)
        try:
            tm = getattr(transformers, MODEL_CLASS[family]).from_pretrained(
                path, dtype=torch.float32, attn_implementation="eager",
                quantization_config=transformers.Mxfp4Config(dequantize=True))
            tm.eval()
            a = mf.logits_of(tm.float(), list(range(11)))
            b = mf.logits_of(ref_model, list(range(11)))
            extra["transformers_mxfp4_load_rel_err"] = float((a - b).norm() / b.norm())
            print(f"[{name}] transformers' own MXFP4 loading vs our dequantization: "
                  f"{extra['transformers_mxfp4_load_rel_err']:.3e}")
        except Exception as e:  # recorded, not fatal: the reference is the dequantized weights
            extra["transformers_mxfp4_load_error"] = f"{type(e).__name__}: {e}"[:400]
            print(f"[{name}] transformers could not load the MXFP4 directory: {e}")
    else:
        raise ValueError(quant)

    results = cases_of(ref_model, seed)
    for i, r in enumerate(results):
        full = r["prompt"] + r["greedy"][:-1]
        lg = mf.logits_of(ref_model, full).numpy().astype(np.float32)
        np.save(os.path.join(path, f"logits_{i}.npy"), lg)
        r["logits_file"] = f"logits_{i}.npy"
        r["logits_tokens"] = full
    meta = {"name": name, "family": family, "dtype": dtype, "quantization": quant, "seed": seed,
            "transformers": transformers.__version__, "torch": torch.__version__, **extra,
            "cases": results, "tensors": mf.tensors_manifest(path)}
    json.dump(meta, open(os.path.join(path, "reference.json"), "w"), indent=1)
    print(f"[{name}] ok: margins", [round(r["greedy_min_margin"], 4) for r in results], extra)


def reload_with_values(family, make_cfg, values):
    """A fresh f32 model holding `values` (hub-layout names, per-expert tensors fused back where needed)."""
    cls = getattr(transformers, MODEL_CLASS[family])
    m = cls._from_config(make_cfg(), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    own = m.state_dict()
    target = {}
    if family == "gpt_oss":
        target = values
    else:
        # Per-expert hub tensors back to transformers' fused experts.
        fused_keys = [k for k in own if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")]
        for k, v in values.items():
            if ".experts." in k and k.split(".experts.")[1].split(".")[0].isdigit():
                continue
            target[k] = v
        for fk in fused_keys:
            prefix = fk[: fk.index("experts.") + len("experts.")]
            E = own[fk].shape[0]
            if fk.endswith("gate_up_proj"):
                parts = [torch.cat([values[f"{prefix}{e}.gate_proj.weight"], values[f"{prefix}{e}.up_proj.weight"]], 0)
                         for e in range(E)]
            else:
                parts = [values[f"{prefix}{e}.down_proj.weight"] for e in range(E)]
            t = torch.stack(parts)
            if t.shape != own[fk].shape:
                t = t.transpose(1, 2)
            target[fk] = t
    missing = set(own) - set(target) - {k for k in own if "inv_freq" in k or "rotary" in k}
    if missing:
        raise RuntimeError(f"values lack {sorted(missing)[:5]}")
    m.load_state_dict({k: target[k].to(own[k].dtype) for k in own if k in target}, strict=False)
    for k in own:
        if k in target and not torch.equal(m.state_dict()[k].float(), target[k].float()):
            raise RuntimeError(f"{k} did not take its value")
    return m


def main():
    mf.run_fixtures(FIXTURES, make, 3000)


if __name__ == "__main__":
    main()
