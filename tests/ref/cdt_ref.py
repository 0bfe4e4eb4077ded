#!/usr/bin/python3
"""Reference CD-T decomposition in PyTorch (float64) for tests/unit/test_cdt.c.

Written from the rules of Hsu et al. 2024 as lib/cdt.h states them (not from
circ's C code): each activation is a pair (rel, irrel) of (S, B, T, C)
tensors, one row of S per source set; LayerNorm centres each part by its
own mean and scales by the whole's std, sharing the bias by |rel|, |irrel|;
linear maps share their bias by |rel W|, |irrel W|; attention weights are
the whole activation's (computed here from rel + irrel), constants; the
activation function: irrel' = act(irrel), rel' = act(rel + irrel) - irrel';
a source node's output is made wholly relevant; the positional embedding
(default convention) and the attention output biases are constants,
relevant only in "whole" sets; with "normalize", the sign rule after the
MLP's first linear map, after the MLP, and after each layer's residual.

Usage: cdt_ref.py CASE.json
CASE.json: {"model": DIR, "out": FILE, "tokens": [[...]] (B, T),
  "reads": [[b, t], ...], "src": [[0|1] * U] * S, "whole": [0|1] * S,
  "normalize": bool, "acdc": bool}
Writes FILE (safetensors, F32): resid_rel, resid_irrel (2L+1, S, B, T, C),
the input of every stage; logits_rel, logits_irrel (S, N, V).
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_ref import gelu, load_model  # noqa: E402
from stio import write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)


def fractions(r, i):
    """Shares of a bias: |r|, |i| over their sum; all to i where both are 0."""
    ar, ai = r.abs(), i.abs()
    tot = ar + ai
    safe = torch.where(tot > 0, tot, torch.ones_like(tot))
    fr = torch.where(tot > 0, ar / safe, torch.zeros_like(tot))
    fi = torch.where(tot > 0, ai / safe, torch.ones_like(tot))
    return fr, fi


def share(r, i, b):
    """Adds bias b to (r, i) in proportion to |r|, |i|."""
    fr, fi = fractions(r, i)
    return r + b * fr, i + b * fi


def ln_split(r, i, w, b, eps):
    x = r + i
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    rstd = 1.0 / torch.sqrt(var + eps)
    yr = (r - r.mean(-1, keepdim=True)) * rstd * w
    yi = (i - i.mean(-1, keepdim=True)) * rstd * w
    # the bias is shared by the input's magnitudes
    fr, fi = fractions(r, i)
    return yr + b * fr, yi + b * fi


def lin_split(r, i, W, b):
    return share(r @ W, i @ W, b)


def normalize(r, i):
    conflict = (r * i) < 0
    rbig = conflict & (r.abs() >= i.abs())
    ibig = conflict & ~rbig
    tot = r + i
    r2 = torch.where(rbig, tot, torch.where(ibig, torch.zeros_like(r), r))
    i2 = torch.where(ibig, tot, torch.where(rbig, torch.zeros_like(i), i))
    return r2, i2


def run(case):
    cfg, w = load_model(case["model"])
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = cfg.get("activation_function", "gelu_new")
    tokens = torch.tensor(case["tokens"], dtype=torch.int64)
    B, T = tokens.shape
    src = torch.tensor(case["src"], dtype=torch.bool)  # (S, U)
    S = src.shape[0]
    whole = torch.tensor(case["whole"], dtype=torch.bool).view(S, 1, 1, 1)
    norm = case["normalize"]
    acdc = case.get("acdc", False)

    def to_rel(r, i, u):
        """Node u's output made wholly relevant in the sets it is a source of."""
        m = src[:, u].view(S, 1, 1, 1)
        return torch.where(m, r + i, r), torch.where(m, torch.zeros_like(i), i)

    def constant(xr, xi, c):
        return xr + torch.where(whole, c, 0.0), xi + torch.where(whole, 0.0, c)

    wpe = w["wpe.weight"][:T]
    emb = w["wte.weight"][tokens] + (wpe if acdc else 0.0)
    zero = torch.zeros(S, B, T, C)
    xr, xi = to_rel(zero.clone(), emb.expand(S, B, T, C).clone(), 0)
    if not acdc:
        xr, xi = constant(xr, xi, wpe.expand(S, B, T, C))
    resid_r, resid_i = [], []
    node = 1
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for l in range(L):
        p = "h.%d." % l
        resid_r.append(xr)
        resid_i.append(xi)
        lr, li = ln_split(xr, xi, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        Wa, ba = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]
        # attention weights of the whole activation (one per batch row; the
        # same for every set)
        x = (lr + li)[0]
        q = (x @ Wa[:, :C] + ba[:C]).view(B, T, H, D).transpose(1, 2)
        k = (x @ Wa[:, C:2 * C] + ba[C:2 * C]).view(B, T, H, D).transpose(1, 2)
        a = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(mask, float("-inf")), -1)
        vr, vi = lin_split(lr, li, Wa[:, 2 * C:], ba[2 * C:])
        vr = vr.view(S, B, T, H, D).permute(0, 1, 3, 2, 4)
        vi = vi.view(S, B, T, H, D).permute(0, 1, 3, 2, 4)
        zr, zi = a[None] @ vr, a[None] @ vi  # (S, B, H, T, D)
        Wo = w[p + "attn.c_proj.weight"].view(H, D, C)
        for h in range(H):
            orr, oi = to_rel(zr[:, :, h] @ Wo[h], zi[:, :, h] @ Wo[h], node)
            node += 1
            xr, xi = xr + orr, xi + oi
        xr, xi = constant(xr, xi, w[p + "attn.c_proj.bias"].expand(S, B, T, C))
        resid_r.append(xr)
        resid_i.append(xi)
        lr, li = ln_split(xr, xi, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        hr, hi = lin_split(lr, li, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"])
        if norm:
            hr, hi = normalize(hr, hi)
        ai = gelu(hi, act)
        hr, hi = gelu(hr + hi, act) - ai, ai
        mr, mi = lin_split(hr, hi, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
        if norm:
            mr, mi = normalize(mr, mi)
        mr, mi = to_rel(mr, mi, node)
        node += 1
        xr, xi = xr + mr, xi + mi
        if norm:
            xr, xi = normalize(xr, xi)
    resid_r.append(xr)
    resid_i.append(xi)
    reads = torch.tensor(case["reads"], dtype=torch.int64)
    gr, gi = xr[:, reads[:, 0], reads[:, 1]], xi[:, reads[:, 0], reads[:, 1]]
    yr, yi = ln_split(gr, gi, w["ln_f.weight"], w["ln_f.bias"], eps)
    Wu = w["lm_head.weight"].T
    out = {
        "resid_rel": torch.stack(resid_r).numpy().astype(np.float32),
        "resid_irrel": torch.stack(resid_i).numpy().astype(np.float32),
        "logits_rel": (yr @ Wu).numpy().astype(np.float32),
        "logits_irrel": (yi @ Wu).numpy().astype(np.float32),
    }
    write_safetensors(case["out"], out)


if __name__ == "__main__":
    run(json.load(open(sys.argv[1])))
