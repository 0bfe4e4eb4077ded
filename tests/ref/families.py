#!/usr/bin/python3
"""Tiny random models of the Hugging Face families circ reads, and their
reference logits: an independent PyTorch forward (float64) for each family,
written from the semantics of the transformers modeling code (no
transformers needed: Debian's python3-torch is enough).

    /usr/bin/python3 tests/ref/families.py OUTDIR    (default tests/data/families)

For each case it writes OUTDIR/<name>/ with
  config.json             the keys and spellings the family's hub configs use
  model.safetensors       the real tensor names (or model-0000k-of-0000n
                          shards with model.safetensors.index.json)
  reference.safetensors   "tokens" I32 (S, T) and "logits" F32 (S, T, V): the
                          logits at every position of S fixed sequences,
                          computed in float64 from the stored (rounded) weights
  arch.json               the architecture as this script reads the config,
                          in the keys of `circ-forward --describe` (the Bats
                          test compares them)
Seeded: the same files on every run (torch.manual_seed per case).

Before writing, the script checks what a reference can check of itself:
RoPE is a norm-keeping rotation whose q.k depends only on the distance of
positions (default, linear, llama3, partial), llama3 keeps high frequencies
and divides low ones by factor; grouped-query attention equals multi-head
attention with each kv head's weights repeated for its group; a model of
sliding-window layers only sees exactly n_layer * (W - 1) + 1 tokens back.

What each family is, and the transformers source each detail follows
(src/transformers/models/<family>/modeling_<family>.py unless said):

gpt_neox (Pythia; modeling_gpt_neox.py): LayerNorm with bias (layer_norm_eps);
  fused query_key_value (3*H*D, d) whose output is viewed (.., H, 3*D) so each
  head's q, k, v are adjacent chunks (GPTNeoXAttention.forward); rotary on the
  first rotary_ndims = int(D * rotary_pct) dims of q and k only
  (partial_rotary_factor), base rotary_emb_base; scale 1/sqrt(D); biases on
  query_key_value and dense (attention_bias, default true) and the MLP
  (dense_h_to_4h, dense_4h_to_h); hidden_act "gelu" (exact erf GELU);
  use_parallel_residual: x + attn(ln1(x)) + mlp(ln2(x)) (GPTNeoXLayer.forward);
  final_layer_norm; untied embed_out.
llama (modeling_llama.py): RMSNorm x * rsqrt(mean(x^2) + eps) * w
  (LlamaRMSNorm); rotate_half RoPE over the whole head (apply_rotary_pos_emb)
  with inv_freq = 1 / theta^(2i/D); the llama3 frequency scaling of
  modeling_rope_utils._compute_llama3_parameters (wavelengths above
  original_max/low_freq_factor divided by factor, below
  original_max/high_freq_factor kept, a smooth blend in between); grouped-query
  attention (repeat_kv: query head h uses kv head h // (H / n_kv));
  scale head_dim^-0.5; SwiGLU down(silu(gate(x)) * up(x)) (LlamaMLP);
  attention_bias on q, k, v, o and mlp_bias on gate, up, down; tied
  (tie_word_embeddings, no lm_head.weight in the file) or untied.  Two cases:
  "llama" (llama3 rope_scaling spelling, GQA, untied, BF16, sharded with
  model.safetensors.index.json) and "llama-tied" (rope_parameters spelling
  of recent transformers, tied, biases on, F32).
mistral (modeling_mistral.py): as llama without biases, every layer
  attending within sliding_window: key j is seen by query i when
  0 <= i - j < sliding_window (masking_utils.sliding_window_overlay).
qwen2 (modeling_qwen2.py): as llama with biases on q, k, v (always) and none
  on o; use_sliding_window false, so sliding_window is not used.
qwen3 (modeling_qwen3.py): as llama, head_dim from the config (here not
  d / H), RMSNorm of each head's q and k over head_dim (q_norm, k_norm)
  before RoPE.
gemma (modeling_gemma.py): RMSNorm scaled by (1 + w) (GemmaRMSNorm);
  embeddings times sqrt(d) (normalizer; computed in float32 here, as HF does
  for float32 weights); GeGLU with hidden_activation gelu_pytorch_tanh (the
  tanh GELU); tied; scale head_dim^-0.5; multi-query (n_kv 1); biases on
  q, k, v, o when attention_bias (GemmaAttention; off here).
gemma2 (modeling_gemma2.py): as gemma plus: input_layernorm and
  post_attention_layernorm around the attention, pre_feedforward_layernorm and
  post_feedforward_layernorm around the MLP (Gemma2DecoderLayer); scores
  scaled by query_pre_attn_scalar^-0.5 then soft-capped c * tanh(s / c)
  (attn_logit_softcapping) before the mask; final logits soft-capped
  (final_logit_softcapping); layer_types: "sliding_attention" layers use
  sliding_window, "full_attention" layers are global (default: even layers
  sliding).
gemma3_text (gemma3/modular_gemma3.py): as gemma2 plus per-head q_norm and
  k_norm (Gemma RMSNorm, 1 + w) before RoPE; sliding layers use RoPE base
  rope_local_base_freq and no rope scaling, full layers rope_theta with
  rope_scaling (here "linear": inv_freq / factor); the layer pattern from
  sliding_window_pattern: layer i slides unless (i + 1) % pattern == 0.
olmo2 (modeling_olmo2.py): no norms before the blocks; x + post_attention_
  layernorm(attn(x)), then h + post_feedforward_layernorm(mlp(h))
  (Olmo2DecoderLayer); q_norm and k_norm are RMSNorms over the whole
  projection (H*D and n_kv*D), applied before the per-head view and RoPE;
  SwiGLU; untied.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

# ---------------------------------------------------------------- files


def round_bf16(t):
    """float32 -> bfloat16 bits (uint16 numpy), round to nearest even."""
    b = t.detach().to(torch.float32).contiguous().numpy().view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def stored(t, dtype):
    """The tensor as the file holds it: (raw bytes, float64 tensor of the
    stored values)."""
    t32 = t.detach().to(torch.float32).contiguous()
    if dtype == "F32":
        a = t32.numpy()
        return a.astype("<f4").tobytes(), torch.from_numpy(a.astype(np.float64))
    if dtype == "F16":
        a = t32.numpy().astype(np.float16)
        return a.astype("<f2").tobytes(), torch.from_numpy(a.astype(np.float64))
    if dtype == "BF16":
        u = round_bf16(t32)
        back = (u.astype(np.uint32) << 16).view(np.float32)
        return u.astype("<u2").tobytes(), torch.from_numpy(back.astype(np.float64))
    raise SystemExit("unknown dtype " + dtype)


def write_st(path, items):
    """items: [(name, dtype, shape, bytes)] in file order."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, b in items:
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for it in items:
            f.write(it[3])


# ---------------------------------------------------------------- architecture


def arch_of(cfg):
    """The architecture described by a config, as this script reads it."""
    mt = cfg["model_type"]
    d, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    D = cfg.get("head_dim") or d // H
    a = {
        "model_type": mt, "n_layer": L, "n_head": H, "n_embd": d, "head_dim": D,
        "n_kv_head": cfg.get("num_key_value_heads") or H,
        "n_inner": cfg["intermediate_size"], "vocab_size": cfg["vocab_size"],
        "n_ctx": cfg["max_position_embeddings"], "position": "rotary",
        "norm": "rmsnorm", "norm_offset": 0.0, "norm_placement": "pre", "mlp": "gated",
        "activation": "silu", "bias_qkv": False, "bias_o": False, "bias_mlp": False,
        "parallel_residual": False, "qk_norm": "none", "embed_scale": 1.0,
        "attn_softcap": None, "final_softcap": None, "attn_scale": D ** -0.5,
        "sliding_window": None, "local_layers": [],
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", mt.startswith("gemma"))),
        "rope_scaling": None, "rotary_dim": D, "rope_local_theta": None,
    }
    if mt == "gpt_neox":
        a.update(norm="layernorm", norm_eps=cfg["layer_norm_eps"], mlp="plain",
                 activation=cfg["hidden_act"], bias_qkv=cfg.get("attention_bias", True),
                 bias_o=cfg.get("attention_bias", True), bias_mlp=True,
                 parallel_residual=cfg.get("use_parallel_residual", True),
                 rope_theta=float(cfg.get("rotary_emb_base", cfg.get("rope_theta", 10000))),
                 rotary_dim=int(D * cfg["rotary_pct"]))
        return a
    a["norm_eps"] = cfg["rms_norm_eps"]
    rp = cfg.get("rope_parameters") or {}
    a["rope_theta"] = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rs = cfg.get("rope_scaling") or rp
    kind = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
    if kind != "default":
        a["rope_scaling"] = {"type": kind, "factor": float(rs["factor"])}
        if kind == "llama3":
            a["rope_scaling"].update(
                low_freq_factor=float(rs["low_freq_factor"]),
                high_freq_factor=float(rs["high_freq_factor"]),
                original_max_position_embeddings=rs["original_max_position_embeddings"])
    if mt in ("llama", "qwen3", "olmo2") or mt.startswith("gemma"):
        a["bias_qkv"] = a["bias_o"] = cfg.get("attention_bias", False)
    if mt == "llama":
        a["bias_mlp"] = cfg.get("mlp_bias", False)
    if mt == "mistral" and cfg.get("sliding_window"):
        a["sliding_window"] = cfg["sliding_window"]
        a["local_layers"] = list(range(L))
    if mt == "qwen2":
        a["bias_qkv"] = True
    if mt in ("qwen3", "gemma3_text"):
        a["qk_norm"] = "per_head"
    if mt == "olmo2":
        a["qk_norm"] = "whole"
        a["norm_placement"] = "post"
    if mt.startswith("gemma"):
        a.update(norm_offset=1.0, activation=cfg.get("hidden_activation") or "gelu_pytorch_tanh",
                 embed_scale=float(np.float32(math.sqrt(d))))
    if mt in ("gemma2", "gemma3_text"):
        a.update(norm_placement="pre_post", attn_softcap=cfg.get("attn_logit_softcapping"),
                 final_softcap=cfg.get("final_logit_softcapping"),
                 attn_scale=cfg["query_pre_attn_scalar"] ** -0.5,
                 sliding_window=cfg["sliding_window"])
        types = cfg.get("layer_types")
        if types is None:
            pat = cfg.get("sliding_window_pattern", 2)
            types = ["sliding_attention" if (i + 1) % pat else "full_attention" for i in range(L)]
        a["local_layers"] = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if mt == "gemma3_text":
        a["rope_local_theta"] = float(cfg["rope_local_base_freq"])
    if a["activation"] == "gelu_pytorch_tanh":  # the same function as gelu_new
        a["activation"] = "gelu_new"
    return a


# ---------------------------------------------------------------- the forward


def rms(x, w, eps, offset):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * (offset + w)


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def act(name, x):
    if name == "silu":
        return x * torch.sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    raise SystemExit("activation " + name)


def inv_freq(dim, theta, scaling):
    f = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if scaling is None:
        return f
    if scaling["type"] == "linear":
        return f / scaling["factor"]
    assert scaling["type"] == "llama3"
    fac, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / f
    out = torch.where(wavelen > old / lo, f / fac, f)
    smooth = (old / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * out / fac + smooth * out
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(medium, blended, out)


def rope(x, pos, rot, theta, scaling):
    """x (.., T, D): rotate_half RoPE on the first rot dims."""
    f = inv_freq(rot, theta, scaling)
    ang = pos[:, None].double() * f[None, :]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
    rotated = torch.cat([-x2, x1], -1)
    return torch.cat([xr * cos + rotated * sin, xp], -1)


def capped_masked(a, s, pos, local):
    """Scores s (.., T, T) soft-capped (attn_logit_softcapping) and masked:
    causal, and within the sliding window on local layers."""
    if a["attn_softcap"]:
        s = torch.tanh(s / a["attn_softcap"]) * a["attn_softcap"]
    i, j = pos[:, None], pos[None, :]
    ok = j <= i
    if local and a["sliding_window"]:
        ok = ok & (i - j < a["sliding_window"])
    return s.masked_fill(~ok, float("-inf"))


def block_norms(a, p):
    """The tensor names (prefix p) of the norms before a layer's attention
    and before its MLP."""
    if a["norm_placement"] == "pre_post" and a["model_type"] != "gpt_neox":
        return p + "input_layernorm", p + "pre_feedforward_layernorm"
    return p + "input_layernorm", p + "post_attention_layernorm"


def forward(a, W, names, tokens, hook=None):
    """Logits (T, V) for one sequence. W: name -> float64 tensor.
    hook(name, x), when given, sees every TransformerLens hook point
    ("blocks.L.hook_resid_pre", ...; tests/ref/dict_ref.py) and returns x or
    its replacement."""
    T = len(tokens)
    if hook is None:
        def hook(name, x):
            return x
    d, H, D, K = a["n_embd"], a["n_head"], a["head_dim"], a["n_kv_head"]
    eps, off = a["norm_eps"], a["norm_offset"]
    pos = torch.arange(T)

    def norm(x, key):
        if a["norm"] == "layernorm":
            return layernorm(x, W[key + ".weight"], W[key + ".bias"], eps)
        return rms(x, W[key + ".weight"], eps, off)

    def lin(x, key, bias):
        y = x @ W[key + ".weight"].T
        return y + W[key + ".bias"] if bias else y

    x = W[names["embed"]][tokens] * a["embed_scale"]
    for l in range(a["n_layer"]):
        p = names["layer"] % l
        b = "blocks.%d." % l
        local = l in a["local_layers"]

        def attn(h):
            if a["model_type"] == "gpt_neox":
                qkv = lin(h, p + "attention.query_key_value", a["bias_qkv"]).view(T, H, 3 * D)
                q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
                q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            else:
                q = lin(h, p + "self_attn.q_proj", a["bias_qkv"])
                k = lin(h, p + "self_attn.k_proj", a["bias_qkv"])
                v = lin(h, p + "self_attn.v_proj", a["bias_qkv"])
                if a["qk_norm"] == "whole":
                    q = rms(q, W[p + "self_attn.q_norm.weight"], eps, off)
                    k = rms(k, W[p + "self_attn.k_norm.weight"], eps, off)
                q = q.view(T, H, D).transpose(0, 1)
                k = k.view(T, K, D).transpose(0, 1)
                v = v.view(T, K, D).transpose(0, 1)
                if a["qk_norm"] == "per_head":
                    q = rms(q, W[p + "self_attn.q_norm.weight"], eps, off)
                    k = rms(k, W[p + "self_attn.k_norm.weight"], eps, off)
            theta, scaling = a["rope_theta"], a["rope_scaling"]
            if local and a["rope_local_theta"]:
                theta, scaling = a["rope_local_theta"], None
            q = rope(q, pos, a["rotary_dim"], theta, scaling)
            k = rope(k, pos, a["rotary_dim"], theta, scaling)
            rep = H // k.shape[0]
            k = k.repeat_interleave(rep, 0)
            v = v.repeat_interleave(rep, 0)
            s = capped_masked(a, q @ k.transpose(1, 2) * a["attn_scale"], pos, local)
            z = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, H * D)
            z = hook(b + "attn.hook_z", z)
            if a["model_type"] == "gpt_neox":
                return lin(z, p + "attention.dense", a["bias_o"])
            return lin(z, p + "self_attn.o_proj", a["bias_o"])

        def ln2(x, key):
            """The MLP's norm, with its hook points: without (fold_ln) and
            with the norm's weight."""
            if a["norm"] == "layernorm":
                hook(b + "ln2.hook_normalized", layernorm(x, torch.ones_like(W[key + ".weight"]),
                                                          torch.zeros_like(W[key + ".bias"]), eps))
            else:
                hook(b + "ln2.hook_normalized", rms(x, torch.full_like(W[key + ".weight"], 1 - off),
                                                    eps, off))
            return hook(b + "ln2.hook_normalized_w", norm(x, key))

        def mlp(h):
            if a["model_type"] == "gpt_neox":
                u = act(a["activation"], lin(h, p + "mlp.dense_h_to_4h", True))
                return lin(u, p + "mlp.dense_4h_to_h", True)
            g = act(a["activation"], lin(h, p + "mlp.gate_proj", a["bias_mlp"]))
            return lin(g * lin(h, p + "mlp.up_proj", a["bias_mlp"]), p + "mlp.down_proj",
                       a["bias_mlp"])

        x = hook(b + "hook_resid_pre", x)
        if a["model_type"] == "gpt_neox" and a["parallel_residual"]:
            ln1, ln2n = p + "input_layernorm", p + "post_attention_layernorm"
            x_in = hook(b + "hook_mlp_in", x)  # the MLP reads the block's input
            mo = hook(b + "hook_mlp_out", mlp(ln2(x_in, ln2n)))
            x = hook(b + "hook_resid_post", x + attn(norm(x, ln1)) + mo)
            continue
        n1, n2 = block_norms(a, p)
        if a["norm_placement"] == "pre" or a["model_type"] == "gpt_neox":
            ao = attn(norm(x, n1))
        elif a["norm_placement"] == "pre_post":
            ao = norm(attn(norm(x, n1)), p + "post_attention_layernorm")
        else:  # post (olmo2)
            ao = norm(attn(x), p + "post_attention_layernorm")
        ao = hook(b + "hook_attn_out", ao)
        x = hook(b + "hook_resid_mid", x + ao)
        x_in = hook(b + "hook_mlp_in", x)
        if a["norm_placement"] == "pre" or a["model_type"] == "gpt_neox":
            mo = mlp(ln2(x_in, n2))
        elif a["norm_placement"] == "pre_post":
            mo = norm(mlp(ln2(x_in, n2)), p + "post_feedforward_layernorm")
        else:  # post (olmo2): the MLP reads the residual itself
            hook(b + "ln2.hook_normalized", x_in)
            mo = norm(mlp(hook(b + "ln2.hook_normalized_w", x_in)), p + "post_feedforward_layernorm")
        mo = hook(b + "hook_mlp_out", mo)
        x = hook(b + "hook_resid_post", x + mo)
    x = norm(x, names["final_norm"])
    logits = x @ W[names["lm_head"] if not a["tied_embeddings"] else names["embed"]].T
    if a["final_softcap"]:
        logits = torch.tanh(logits / a["final_softcap"]) * a["final_softcap"]
    return logits


# ---------------------------------------------------------------- the cases


def tensors_of(a, names):
    """[(name, shape, kind)] of every tensor in the file; kind picks the init."""
    d, H, D, K, F, V = (a["n_embd"], a["n_head"], a["head_dim"], a["n_kv_head"], a["n_inner"],
                        a["vocab_size"])
    t = [(names["embed"], (V, d), "embed")]
    for l in range(a["n_layer"]):
        p = names["layer"] % l

        def normt(key, n):
            t.append((p + key + ".weight", (n,), "norm"))
            if a["norm"] == "layernorm":
                t.append((p + key + ".bias", (n,), "bias"))

        def lin(key, o, i, bias):
            t.append((p + key + ".weight", (o, i), "matrix"))
            if bias:
                t.append((p + key + ".bias", (o,), "bias"))

        if a["model_type"] == "gpt_neox":
            normt("input_layernorm", d)
            normt("post_attention_layernorm", d)
            lin("attention.query_key_value", 3 * H * D, d, a["bias_qkv"])
            lin("attention.dense", d, H * D, a["bias_o"])
            lin("mlp.dense_h_to_4h", F, d, True)
            lin("mlp.dense_4h_to_h", d, F, True)
            continue
        if a["norm_placement"] != "post":
            normt("input_layernorm", d)
        lin("self_attn.q_proj", H * D, d, a["bias_qkv"])
        lin("self_attn.k_proj", K * D, d, a["bias_qkv"])
        lin("self_attn.v_proj", K * D, d, a["bias_qkv"])
        lin("self_attn.o_proj", d, H * D, a["bias_o"])
        if a["qk_norm"] == "per_head":
            normt("self_attn.q_norm", D)
            normt("self_attn.k_norm", D)
        elif a["qk_norm"] == "whole":
            normt("self_attn.q_norm", H * D)
            normt("self_attn.k_norm", K * D)
        normt("post_attention_layernorm", d)
        if a["norm_placement"] == "pre_post":
            normt("pre_feedforward_layernorm", d)
        if a["norm_placement"] != "pre":
            normt("post_feedforward_layernorm", d)
        lin("mlp.gate_proj", F, d, a["bias_mlp"])
        lin("mlp.up_proj", F, d, a["bias_mlp"])
        lin("mlp.down_proj", d, F, a["bias_mlp"])
    t.append((names["final_norm"] + ".weight", (d,), "norm"))
    if a["norm"] == "layernorm":
        t.append((names["final_norm"] + ".bias", (d,), "bias"))
    if not a["tied_embeddings"]:
        t.append((names["lm_head"], (V, d), "matrix"))
    return t


HF_NAMES = {
    "gpt_neox": {"embed": "gpt_neox.embed_in.weight", "layer": "gpt_neox.layers.%d.",
                 "final_norm": "gpt_neox.final_layer_norm", "lm_head": "embed_out.weight"},
    "default": {"embed": "model.embed_tokens.weight", "layer": "model.layers.%d.",
                "final_norm": "model.norm", "lm_head": "lm_head.weight"},
}

COMMON = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
          "num_attention_heads": 4, "max_position_embeddings": 128, "bos_token_id": 1,
          "eos_token_id": 2, "initializer_range": 0.02, "use_cache": True,
          "transformers_version": "4.46.0"}

CASES = [
    ("gpt_neox", "F16", 1, dict(
        architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", num_hidden_layers=2,
        hidden_act="gelu", layer_norm_eps=1e-5, rotary_pct=0.25, rotary_emb_base=10000,
        use_parallel_residual=True, tie_word_embeddings=False, torch_dtype="float16",
        attention_dropout=0.0, hidden_dropout=0.0, classifier_dropout=0.1)),
    ("llama", "BF16", 2, dict(
        architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=2,
        num_key_value_heads=2, head_dim=16, hidden_act="silu", rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling={"factor": 32.0, "high_freq_factor": 4.0,
                                           "low_freq_factor": 1.0,
                                           "original_max_position_embeddings": 64,
                                           "rope_type": "llama3"},
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        pretraining_tp=1, torch_dtype="bfloat16")),
    ("llama-tied", "F32", 1, dict(
        architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=2,
        num_key_value_heads=4, hidden_act="silu", rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=True, mlp_bias=True, tie_word_embeddings=True, torch_dtype="float32")),
    ("mistral", "F32", 1, dict(
        architectures=["MistralForCausalLM"], model_type="mistral", num_hidden_layers=2,
        num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=3, tie_word_embeddings=False, torch_dtype="float32")),
    ("qwen2", "F32", 1, dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_hidden_layers=2,
        num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_scaling=None, use_sliding_window=False, sliding_window=32, max_window_layers=2,
        tie_word_embeddings=True, torch_dtype="float32")),
    ("qwen3", "BF16", 1, dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", num_hidden_layers=2,
        num_key_value_heads=2, head_dim=24, hidden_act="silu", rms_norm_eps=1e-6,
        rope_theta=1000000.0, rope_scaling=None, attention_bias=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=2,
        tie_word_embeddings=False, torch_dtype="bfloat16")),
    ("gemma", "BF16", 1, dict(
        architectures=["GemmaForCausalLM"], model_type="gemma", num_hidden_layers=2,
        num_key_value_heads=1, head_dim=16, hidden_act="gelu",
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
        attention_bias=False, tie_word_embeddings=True, torch_dtype="bfloat16")),
    ("gemma2", "F32", 1, dict(
        architectures=["Gemma2ForCausalLM"], model_type="gemma2", num_hidden_layers=4,
        num_key_value_heads=2, head_dim=16, hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, query_pre_attn_scalar=24,
        sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2,
        cache_implementation="hybrid", attention_bias=False, tie_word_embeddings=True,
        torch_dtype="float32")),
    ("gemma3_text", "F16", 1, dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", num_hidden_layers=4,
        num_key_value_heads=2, head_dim=16, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        rope_scaling={"factor": 2.0, "rope_type": "linear"}, query_pre_attn_scalar=16,
        sliding_window=3, sliding_window_pattern=3, attn_logit_softcapping=None,
        final_logit_softcapping=None, attention_bias=False, tie_word_embeddings=True,
        torch_dtype="float16")),
    ("olmo2", "F32", 1, dict(
        architectures=["Olmo2ForCausalLM"], model_type="olmo2", num_hidden_layers=2,
        num_key_value_heads=4, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=500000.0,
        rope_scaling=None, attention_bias=False, tie_word_embeddings=False,
        torch_dtype="float32")),
]

SEQS, T = 3, 10


def self_check(a, W, names, tokens, logits):
    """What a reference can check of itself: a model whose every layer is
    local sees only the last n_layer * (W - 1) + 1 tokens, so changing the
    first token leaves the logits from that far on unchanged and changes
    the ones before; a model with a global layer changes everywhere."""
    t2 = tokens.clone()
    t2[0] = (t2[0] + 1) % a["vocab_size"]
    other = forward(a, W, names, t2)
    moved = (other - logits).abs().amax(-1) > 1e-9
    if a["sliding_window"] and len(a["local_layers"]) == a["n_layer"]:
        reach = a["n_layer"] * (a["sliding_window"] - 1) + 1
        assert reach < len(tokens), "the window must be shorter than the prompt"
        assert moved[:reach].all() and not moved[reach:].any(), moved
    else:
        assert moved.all(), moved


def make(outdir, name, dtype, shards, extra, seed):
    cfg = dict(COMMON)
    cfg.update(extra)
    a = arch_of(cfg)
    names = HF_NAMES.get(cfg["model_type"], HF_NAMES["default"])
    torch.manual_seed(seed)
    W, items = {}, []
    for tname, shape, kind in tensors_of(a, names):
        if kind == "embed":
            t = torch.randn(shape) * 0.5
        elif kind == "matrix":
            t = torch.randn(shape) / math.sqrt(shape[1])
        elif kind == "norm":  # around 1 as the model sees it: (offset + w)
            t = (1.0 - a["norm_offset"]) + 0.2 * torch.randn(shape)
        else:
            t = 0.1 * torch.randn(shape)
        b, W[tname] = stored(t, dtype)
        items.append((tname, dtype, shape, b))
    tokens = torch.randint(0, cfg["vocab_size"], (SEQS, T), dtype=torch.int64)
    logits = torch.stack([forward(a, W, names, tokens[s]) for s in range(SEQS)])
    self_check(a, W, names, tokens[0], logits[0])
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    if shards == 1:
        write_st(os.path.join(d, "model.safetensors"), items)
    else:
        per, wmap, total = (len(items) + shards - 1) // shards, {}, 0
        for k in range(shards):
            fn = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
            part = items[k * per:(k + 1) * per]
            write_st(os.path.join(d, fn), part)
            for it in part:
                wmap[it[0]] = fn
                total += len(it[3])
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
            f.write("\n")
    ref = [("tokens", "I32", (SEQS, T), tokens.numpy().astype("<i4").tobytes()),
           ("logits", "F32", (SEQS, T, cfg["vocab_size"]),
            logits.numpy().astype("<f4").tobytes())]
    write_st(os.path.join(d, "reference.safetensors"), ref)
    with open(os.path.join(d, "arch.json"), "w") as f:
        json.dump(a, f, indent=2, sort_keys=True)
        f.write("\n")


def check_rope():
    """RoPE is a rotation by angle pos * inv_freq of the pairs (x_i, x_{i+rot/2}):
    norms are kept and q.k depends only on the distance of the positions,
    for every scaling and for partial rotation (the rest passes through)."""
    g = torch.Generator().manual_seed(7)
    for rot, scaling in [(16, None), (16, {"type": "linear", "factor": 2.0}),
                         (16, {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 16}), (4, None)]:
        q, k = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)
        p = torch.arange(12)
        rq = rope(q.expand(12, 16), p, rot, 10000.0, scaling)
        rk = rope(k.expand(12, 16), p, rot, 10000.0, scaling)
        assert torch.allclose(rq.norm(dim=-1), q.norm(), atol=1e-12)
        assert torch.equal(rq[:, rot:], q.expand(12, 16)[:, rot:])
        dots = rq @ rk.T
        for d in range(-3, 4):
            band = torch.diagonal(dots, d)
            assert torch.allclose(band, band[0].expand_as(band), atol=1e-10), (rot, scaling, d)
    # llama3: high frequencies kept, low ones divided by factor, a blend between
    f = inv_freq(16, 10000.0, None)
    f3 = inv_freq(16, 10000.0, {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16})
    wavelen = 2 * math.pi / f
    assert torch.equal(f3[wavelen < 4], f[wavelen < 4])
    assert torch.allclose(f3[wavelen > 16], f[wavelen > 16] / 8)
    mid = (wavelen >= 4) & (wavelen <= 16)
    assert mid.any() and ((f3[mid] <= f[mid]) & (f3[mid] >= f[mid] / 8)).all()


def check_gqa(cfg):
    """Grouped-query attention is multi-head attention with each key/value
    head's weights repeated for the query heads of its group (query head h
    reads kv head h // (H / K)): the same logits."""
    a = arch_of(cfg)
    names = HF_NAMES["default"]
    torch.manual_seed(5)
    W = {n: torch.randn(shape) * (0.3 if kind != "norm" else 0.1) + (kind == "norm")
         for n, shape, kind in tensors_of(a, names)}
    tokens = torch.randint(0, a["vocab_size"], (8,))
    full = dict(a, n_kv_head=a["n_head"])
    rep, D = a["n_head"] // a["n_kv_head"], a["head_dim"]
    W2 = dict(W)
    for l in range(a["n_layer"]):
        for m in ("k_proj", "v_proj"):
            for part in ("weight", "bias"):
                n = names["layer"] % l + "self_attn.%s.%s" % (m, part)
                if n in W:
                    w = W[n].view(a["n_kv_head"], D, *W[n].shape[1:])
                    W2[n] = w.repeat_interleave(rep, 0).reshape(a["n_head"] * D, *W[n].shape[1:])
    assert torch.allclose(forward(a, W, names, tokens), forward(full, W2, names, tokens),
                          atol=1e-10)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "families")
    check_rope()
    for i, (name, dtype, shards, extra) in enumerate(CASES):
        if extra.get("num_key_value_heads", COMMON["num_attention_heads"]) < \
                COMMON["num_attention_heads"]:
            check_gqa(dict(COMMON, **extra))
        make(outdir, name, dtype, shards, extra, 1000 + i)


if __name__ == "__main__":
    main()
