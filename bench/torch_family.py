#!/usr/bin/python3
"""The plain PyTorch forward a researcher would write for a Llama-style
model directory (llama, mistral, qwen2: RMSNorm, RoPE with llama3 scaling,
grouped-query attention, SwiGLU, tied or untied), float32, batched, for
bench/family.sh: whole command (import, load, forward, output) timed from
the shell, inner loop timed here.

    torch_family.py MODEL TOKENS.jsonl N THREADS OUT.json [forward]

Reads the first N clean prompts (equal lengths), writes {"metric": [...],
"inner_s": seconds of the forward alone, "fwd2_bwd1_s": seconds of the
corrupted forward, the clean forward and one backward of the summed metric
(the least work of any EAP)} with the logit difference at each prompt's
position, for circ-forward's output to be checked against. With "forward"
it stops after the forward (no fwd2_bwd1_s): the whole command a user runs
for logits. The weights are read as a PyTorch user would at best: the file
mapped, each tensor a view of it (torch.frombuffer) converted to float32 by
PyTorch.
"""
import json
import math
import mmap
import os
import struct
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import families as fam  # noqa: E402

torch.set_default_dtype(torch.float32)  # families.py sets float64


DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SIZES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


def load(path):
    """{name: float32 tensor} of a safetensors file, mapped, not read."""
    f = open(path, "rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8:8 + n])
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only buffer: never written
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            dt = DTYPES[info["dtype"]]
            t = torch.frombuffer(mm, dtype=dt, count=(e - b) // SIZES[dt], offset=8 + n + b)
            out[name] = t.reshape(info["shape"]).float()
    return out


def main():
    mdir, tokpath, n, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5]
    fwd_only = sys.argv[6:] == ["forward"]
    torch.set_num_threads(threads)
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    a = fam.arch_of(cfg)
    assert a["norm_placement"] == "pre" and a["mlp"] == "gated" and not a["sliding_window"]
    W = load(os.path.join(mdir, "model.safetensors"))
    recs = [json.loads(l) for l in open(tokpath)][1:n + 1]
    tok = torch.tensor([r["clean"]["data"] for r in recs])
    B, T = tok.shape
    H, K, D, C = a["n_head"], a["n_kv_head"], a["head_dim"], a["n_embd"]
    eps = a["norm_eps"]
    f = fam.inv_freq(a["rotary_dim"], a["rope_theta"], a["rope_scaling"]).float()
    ang = torch.arange(T).float()[:, None] * f[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    mask = torch.full((T, T), float("-inf")).triu(1)
    p = "model.layers.%d."

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def lin(x, key):
        y = x @ W[key + ".weight"].T
        b = W.get(key + ".bias")
        return y + b if b is not None else y

    pos = torch.tensor([r["pos"] for r in recs])
    ans = torch.tensor([r["answer"][0] for r in recs])
    wrong = torch.tensor([r["wrong"][0] for r in recs])
    lm = W.get("lm_head.weight", W["model.embed_tokens.weight"])

    def forward(tok, grad):
        x = W["model.embed_tokens.weight"][tok]
        if grad:
            x.requires_grad_(True)
        x0 = x
        for l in range(a["n_layer"]):
            h = rms(x, W[p % l + "input_layernorm.weight"])
            q = rope(lin(h, p % l + "self_attn.q_proj").view(B, T, H, D).transpose(1, 2))
            k = rope(lin(h, p % l + "self_attn.k_proj").view(B, T, K, D).transpose(1, 2))
            v = lin(h, p % l + "self_attn.v_proj").view(B, T, K, D).transpose(1, 2)
            k = k.repeat_interleave(H // K, 1)
            v = v.repeat_interleave(H // K, 1)
            s = q @ k.transpose(-1, -2) / math.sqrt(D) + mask
            z = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
            x = x + lin(z, p % l + "self_attn.o_proj")
            h = rms(x, W[p % l + "post_attention_layernorm.weight"])
            g = lin(h, p % l + "mlp.gate_proj")
            x = x + lin(torch.nn.functional.silu(g) * lin(h, p % l + "mlp.up_proj"),
                        p % l + "mlp.down_proj")
        xl = rms(x[torch.arange(B), pos], W["model.norm.weight"])
        return xl @ lm.T, x0

    t0 = time.perf_counter()
    with torch.no_grad():
        logits, _ = forward(tok, False)
    inner = time.perf_counter() - t0
    md = (logits[torch.arange(B), ans] - logits[torch.arange(B), wrong]).tolist()
    if fwd_only:
        json.dump({"metric": md, "inner_s": inner, "B": B, "T": T}, open(out, "w"))
        return
    # the least work any EAP needs: the corrupted forward, the clean forward
    # with a graph, one backward of the summed metric
    cor = torch.tensor([r["corrupt"]["data"] for r in recs])
    t0 = time.perf_counter()
    with torch.no_grad():
        forward(cor, False)
    lg, x0 = forward(tok, True)
    (lg[torch.arange(B), ans] - lg[torch.arange(B), wrong]).sum().backward()
    twofb = time.perf_counter() - t0
    json.dump({"metric": md, "inner_s": inner, "fwd2_bwd1_s": twofb, "B": B, "T": T},
              open(out, "w"))
    _ = np


if __name__ == "__main__":
    main()
