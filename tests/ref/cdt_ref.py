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


def mlp_out(xr, xi, mr, mi, rel, norm):
    """The MLP's output (mr, mi) (the sign rule, then made relevant where it
    is a source by rel) added to the residual (xr, xi) (the sign rule)."""
    if norm:
        mr, mi = normalize(mr, mi)
    mr, mi = rel(mr, mi)
    xr, xi = xr + mr, xi + mi
    return normalize(xr, xi) if norm else (xr, xi)


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
        xr, xi = mlp_out(xr, xi, mr, mi, lambda r, i, n=node: to_rel(r, i, n), norm)
        node += 1
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


# ---------------------------------------------------------------- families
# The families of tests/data/families (issue 16), on the forward of
# tests/ref/family_recv.py (its loading, receivers and node order; the
# attention weights as its forward makes them), with the family rules of
# lib/cdt.h: RMSNorm scales each part by the whole's rsqrt(mean(x^2) + eps)
# and (offset + w); the attention weights are the whole activation's
# (q/k norms, RoPE, soft-capping and sliding windows only enter them); v of
# a query head is its key/value group's; a norm after a block scales each of
# its nodes' parts by the norm's scale of the whole block output; the gated
# MLP: irrel' = act(irrel_gate) * irrel_up, rel' = act(gate) * up - irrel';
# the logits' soft cap as the activation; parallel blocks (GPT-NeoX): the
# attention and the MLP read the same input.


def fam_attn_probs(a, W, p, l, x):
    """(H, T, T) attention weights of layer l (prefix p) for the whole input
    x (T, d) of its stage, made as family_recv.py's forward makes them."""
    import families as fam
    import family_recv as fr
    pos = torch.arange(x.shape[0])
    local = l in a["local_layers"]
    theta, scaling = a["rope_theta"], a["rope_scaling"]
    if local and a["rope_local_theta"]:
        theta, scaling = a["rope_local_theta"], None
    out = []
    for h in range(a["n_head"]):
        q = fam.rope(fr.head_proj(a, W, p, x, "q", h), pos, a["rotary_dim"], theta, scaling)
        k = fam.rope(fr.head_proj(a, W, p, x, "k", h), pos, a["rotary_dim"], theta, scaling)
        out.append(torch.softmax(fam.capped_masked(a, q @ k.T * a["attn_scale"], pos, local), -1))
    return torch.stack(out)


def fam_decompose(a, W, names, tokens, src, whole, norm):
    """One sequence (T) for S source sets: the rel and irrel of every stage's
    input, (n_stage, S, T, C) each, and of the logits at every position,
    (S, T, V) each."""
    import families as fam
    T = len(tokens)
    d, H, D, K = a["n_embd"], a["n_head"], a["head_dim"], a["n_kv_head"]
    eps, off, per = a["norm_eps"], a["norm_offset"], H // K
    S = src.shape[0]
    whole = whole.view(S, 1, 1)
    neox = a["model_type"] == "gpt_neox"
    place = a["norm_placement"]
    zeros = lambda n: torch.zeros(n)  # noqa: E731

    def to_rel(r, i, u):
        m = src[:, u].view(S, 1, 1)
        return torch.where(m, r + i, r), torch.where(m, torch.zeros_like(i), i)

    def scale_of(x, w):
        return torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * (off + w)

    def norm_split(r, i, key):
        if a["norm"] == "layernorm":
            return ln_split(r, i, W[key + ".weight"], W[key + ".bias"], eps)
        s = scale_of(r + i, W[key + ".weight"])
        return r * s, i * s

    def lin(r, i, key, bias):
        Wm = W[key + ".weight"]
        return lin_split(r, i, Wm.T, W[key + ".bias"] if bias else zeros(Wm.shape[0]))

    emb = W[names["embed"]][tokens] * a["embed_scale"]
    xr, xi = to_rel(torch.zeros(S, T, d), emb.expand(S, T, d).clone(), 0)
    resid_r, resid_i = [], []
    node = 1
    for l in range(a["n_layer"]):
        p = names["layer"] % l
        resid_r.append(xr)
        resid_i.append(xi)
        # attention
        if place != "post":
            lr, li = norm_split(xr, xi, p + "input_layernorm")
        else:
            lr, li = xr, xi
        probs = fam_attn_probs(a, W, p, l, (xr + xi)[0])
        if neox:
            Wv = W[p + "attention.query_key_value.weight"].view(H, 3, D, d)[:, 2].reshape(H * D, d)
            bv = (W[p + "attention.query_key_value.bias"].view(H, 3, D)[:, 2].reshape(H * D)
                  if a["bias_qkv"] else zeros(H * D))
            ow = W[p + "attention.dense.weight"]
            ob = W[p + "attention.dense.bias"] if a["bias_o"] else None
        else:
            Wv = W[p + "self_attn.v_proj.weight"]
            bv = W[p + "self_attn.v_proj.bias"] if a["bias_qkv"] else zeros(K * D)
            ow = W[p + "self_attn.o_proj.weight"]
            ob = W[p + "self_attn.o_proj.bias"] if a["bias_o"] else None
        vr, vi = lin_split(lr, li, Wv.T, bv)
        heads = []
        for h in range(H):
            g = h // per
            zr, zi = probs[h] @ vr[..., g * D:(g + 1) * D], probs[h] @ vi[..., g * D:(g + 1) * D]
            heads.append((zr @ ow[:, h * D:(h + 1) * D].T, zi @ ow[:, h * D:(h + 1) * D].T))
        if place != "pre":
            s = scale_of(sum(hr + hi for hr, hi in heads), W[p + "post_attention_layernorm.weight"])
            heads = [(hr * s, hi * s) for hr, hi in heads]
        m_r, m_i = xr, xi  # a parallel block's MLP reads the block's input
        for hr, hi in heads:
            hr, hi = to_rel(hr, hi, node)
            node += 1
            xr, xi = xr + hr, xi + hi
        if ob is not None:
            xr = xr + torch.where(whole, ob, 0.0)
            xi = xi + torch.where(whole, 0.0, ob)
        if not a["parallel_residual"]:
            resid_r.append(xr)
            resid_i.append(xi)
            m_r, m_i = xr, xi
        # MLP
        if neox:
            hr, hi = norm_split(m_r, m_i, p + "post_attention_layernorm")
            ar, ai = lin(hr, hi, p + "mlp.dense_h_to_4h", True)
            if norm:
                ar, ai = normalize(ar, ai)
            ii = fam.act(a["activation"], ai)
            ar, ai = fam.act(a["activation"], ar + ai) - ii, ii
            mr, mi = lin(ar, ai, p + "mlp.dense_4h_to_h", True)
        else:
            if place == "post":
                hr, hi = m_r, m_i
            else:
                hr, hi = norm_split(m_r, m_i, p + ("post_attention_layernorm" if place == "pre"
                                                   else "pre_feedforward_layernorm"))
            gr, gi = lin(hr, hi, p + "mlp.gate_proj", a["bias_mlp"])
            ur, ui = lin(hr, hi, p + "mlp.up_proj", a["bias_mlp"])
            if norm:
                gr, gi = normalize(gr, gi)
                ur, ui = normalize(ur, ui)
            ii = fam.act(a["activation"], gi) * ui
            ar, ai = fam.act(a["activation"], gr + gi) * (ur + ui) - ii, ii
            mr, mi = lin(ar, ai, p + "mlp.down_proj", a["bias_mlp"])
            if place != "pre":
                s = scale_of(mr + mi, W[p + "post_feedforward_layernorm.weight"])
                mr, mi = mr * s, mi * s
        xr, xi = mlp_out(xr, xi, mr, mi, lambda r, i, n=node: to_rel(r, i, n), norm)
        node += 1
    resid_r.append(xr)
    resid_i.append(xi)
    yr, yi = norm_split(xr, xi, names["final_norm"])
    Wu = W[names["embed"] if a["tied_embeddings"] else names["lm_head"]]
    lr, li = yr @ Wu.T, yi @ Wu.T
    cap = a["final_softcap"]
    if cap:
        ii = torch.tanh(li / cap) * cap
        lr, li = torch.tanh((lr + li) / cap) * cap - ii, ii
    return torch.stack(resid_r), torch.stack(resid_i), lr, li


def fam_run(case):
    """run() for a family model: the same case and output layout."""
    import family_recv as fr
    a, names, W = fr.load(case["model"])
    tokens = torch.tensor(case["tokens"], dtype=torch.int64)
    src = torch.tensor(case["src"], dtype=torch.bool)
    whole = torch.tensor(case["whole"], dtype=torch.bool)
    parts = [fam_decompose(a, W, names, tokens[b], src, whole, case["normalize"])
             for b in range(tokens.shape[0])]
    rr = torch.stack([q[0] for q in parts], 2)  # (n_stage, S, B, T, C)
    ri = torch.stack([q[1] for q in parts], 2)
    reads = case["reads"]
    lr = torch.stack([parts[b][2][:, t] for b, t in reads], 1)  # (S, N, V)
    li = torch.stack([parts[b][3][:, t] for b, t in reads], 1)
    write_safetensors(case["out"], {
        "resid_rel": rr.numpy().astype(np.float32), "resid_irrel": ri.numpy().astype(np.float32),
        "logits_rel": lr.numpy().astype(np.float32),
        "logits_irrel": li.numpy().astype(np.float32)})


def fam_scores(model, tokens_path, out):
    """CD-T scores of every edge of family model `model` (circ-score
    --method cd-t, default options: the sign rule on) on the examples of
    tokens_path (logit_diff at each example's position): u -> logits is
    logit_diff(clean) - logit_diff(irrel logits of {u}); u -> r is u's rel
    at r's input (the stage's residual) dotted with the metric's gradient
    at r's input (family_recv.py's forward, each receiver reading its own
    input); means over the examples. Writes out (ref.json layout of
    tests/ref/patch_ref.py compare, key "cd-t")."""
    import family_recv as fr
    a, names, W = fr.load(model)
    lines = [json.loads(x) for x in open(tokens_path)]
    assert lines[0].get("metric", "logit_diff") == "logit_diff", "logit_diff only"
    exs = lines[1:]
    recv = fr.receivers(a, False)
    nodes = fr.node_names(a)
    U = len(nodes)
    L, par = a["n_layer"], a["parallel_residual"]
    src = torch.eye(U, dtype=torch.bool)
    whole = torch.zeros(U, dtype=torch.bool)

    def stage(r):
        l, kind, _ = r
        if kind == "logits":
            return L if par else 2 * L
        return l if par else 2 * l + (kind == "mlp")

    edges = [(nodes[u] + "->" + fr.recv_name(r), i, u) for i, r in enumerate(recv)
             for u in range(fr.n_in(a, r))]
    sums = [0.0] * len(edges)
    for ex in exs:
        toks = torch.tensor(ex["clean"]["data"], dtype=torch.int64)
        pos = ex["pos"] if isinstance(ex["pos"], int) else ex["pos"][0]
        good, bad = ex["answer"], ex["wrong"]

        def ld(lg):
            return lg[..., good].mean(-1) - lg[..., bad].mean(-1)
        T = len(toks)
        deltas = [torch.zeros(T, a["n_embd"], requires_grad=True) for _ in recv]
        lg = fr.forward(a, W, names, toks, recv, deltas, False)
        ld(lg[pos]).backward()
        rr, _, _, li = fam_decompose(a, W, names, toks, src, whole, True)
        clean = ld(lg[pos]).item()
        for ei, (_, ri, u) in enumerate(edges):
            if recv[ri][1] == "logits":
                sums[ei] += clean - ld(li[u, pos]).item()
            else:
                sums[ei] += (rr[stage(recv[ri]), u] * deltas[ri].grad).sum().item()
    n = len(exs)
    json.dump({"metric": "logit_diff", "n_edges": len(edges), "edges": [e[0] for e in edges],
               "cd-t": [v / n for v in sums]}, open(out, "w"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "scores":
        # cdt_ref.py scores MODEL_DIR TOKENS.jsonl OUT.json
        fam_scores(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        c = json.load(open(sys.argv[1]))
        mt = json.load(open(os.path.join(c["model"], "config.json"))).get("model_type", "gpt2")
        fam_run(c) if mt != "gpt2" else run(c)
