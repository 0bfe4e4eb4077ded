#!/usr/bin/python3
"""Attribution graphs in plain PyTorch, the computation circ-trace does
(bench/trace.sh times both), done as circuit-tracer does it: one forward of
the replacement model (attention patterns and LayerNorm scales detached,
each layer's MLP output a leaf: transcoder output plus error node) on a
batch of copies of the prompt, then batched backward passes, each copy
carrying one target (an active feature's pre-activation or a demeaned
logit), the edges read from the gradients at the MLP outputs and the
embeddings. No use of causality beyond what autograd does.

Usage:
  torch_trace.py make DIR [SEED]
      a GPT-2-small-shaped random model (L 12, H 12, C 768, V 50257, P 1024,
      normal(0, 0.02) weights) in DIR/model and 12 JumpReLU transcoders of
      24,576 features as circuit-tracer layer files (hook_resid_mid ->
      hook_mlp_out) in DIR/tc, each layer's threshold set on the bench
      prompt so that 50 x 16 features are active in the layer (about 50
      per position).
  torch_trace.py run DIR THREADS BATCH [OUT.npy]
      the graph of the bench prompt; prints "torch SECONDS PEAK_RSS_MB
      N_NODES N_FEATURES CPU_SECONDS" (seconds end to end: loading
      included; CPU: user + system of the process) and saves
      the adjacency matrix to OUT.npy.
  torch_trace.py compare CIRC.safetensors OUT.npy
      the node tables and adjacency matrices agree: every entry within 1e-3
      of its row's largest |entry| (float32 both; different summation order).
"""
import math
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from stio import read_safetensors, write_safetensors  # noqa: E402

L, H, C, V, P, S = 12, 12, 768, 50257, 1024, 24576
D = C // H
PROMPT = [464, 3290, 286, 4881, 373, 257, 1588, 3139, 11, 290, 262, 1893, 286, 262, 5803, 373]
EPS = 1e-5


def load(d):
    w = {k[len("transformer."):] if k.startswith("transformer.") else k: torch.from_numpy(v.copy())
         for k, v in read_safetensors(d + "/model/model.safetensors").items()}
    w["lm_head.weight"] = w["wte.weight"]
    tcs = []
    for l in range(L):
        t = read_safetensors("%s/tc/layer_%d.safetensors" % (d, l))
        tcs.append({"W_enc": torch.from_numpy(t["W_enc"].copy()),  # (S, C)
                    "W_dec": torch.from_numpy(t["W_dec"].copy()),  # (S, C)
                    "b_enc": torch.from_numpy(t["b_enc"].copy()),
                    "b_dec": torch.from_numpy(t["b_dec"].copy()),
                    "threshold": torch.from_numpy(t["threshold"].copy())})
    return w, tcs


def ln(x, wt, b):
    mu = x.mean(-1, keepdim=True)
    s = 1 / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + EPS)
    return (x - mu) * s * wt + b, s


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def clean(w, tok):
    """The model's forward: frozen patterns and scales, residuals, MLP outputs."""
    T = len(tok)
    x = w["wte.weight"][tok] + w["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    fr, mids, mlps = [], [], []
    for l in range(L):
        p = "h.%d." % l
        h, s1 = ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(C, -1)
        q, k, v = (a.view(T, H, D).transpose(0, 1) for a in (q, k, v))
        A = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(mask, -math.inf), -1)
        x = x + (A @ v).transpose(0, 1).reshape(T, C) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        mids.append(x)
        h2, s2 = ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        mo = gelu(h2 @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        mlps.append(mo)
        fr.append((s1, A))
        x = x + mo
    _, sf = ln(x, w["ln_f.weight"], w["ln_f.bias"])
    return fr, mids, mlps, x, sf


def make(d, seed):
    g = torch.Generator().manual_seed(seed)
    t = {"transformer.wte.weight": torch.randn(V, C, generator=g) * 0.02,
         "transformer.wpe.weight": torch.randn(P, C, generator=g) * 0.02}
    for l in range(L):
        p = "transformer.h.%d." % l
        t[p + "ln_1.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        t[p + "ln_1.bias"] = 0.02 * torch.randn(C, generator=g)
        t[p + "attn.c_attn.weight"] = 0.02 * torch.randn(C, 3 * C, generator=g)
        t[p + "attn.c_attn.bias"] = 0.02 * torch.randn(3 * C, generator=g)
        t[p + "attn.c_proj.weight"] = 0.02 / math.sqrt(2 * L) * torch.randn(C, C, generator=g)
        t[p + "attn.c_proj.bias"] = 0.02 * torch.randn(C, generator=g)
        t[p + "ln_2.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        t[p + "ln_2.bias"] = 0.02 * torch.randn(C, generator=g)
        t[p + "mlp.c_fc.weight"] = 0.02 * torch.randn(C, 4 * C, generator=g)
        t[p + "mlp.c_fc.bias"] = 0.02 * torch.randn(4 * C, generator=g)
        t[p + "mlp.c_proj.weight"] = 0.02 / math.sqrt(2 * L) * torch.randn(4 * C, C, generator=g)
        t[p + "mlp.c_proj.bias"] = 0.02 * torch.randn(C, generator=g)
    t["transformer.ln_f.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
    t["transformer.ln_f.bias"] = 0.02 * torch.randn(C, generator=g)
    os.makedirs(d + "/model", exist_ok=True)
    os.makedirs(d + "/tc", exist_ok=True)
    import json
    json.dump({"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": C, "vocab_size": V,
               "n_positions": P, "n_ctx": P, "layer_norm_epsilon": EPS,
               "activation_function": "gelu_new"}, open(d + "/model/config.json", "w"))
    write_safetensors(d + "/model/model.safetensors", {k: v.numpy() for k, v in t.items()})
    w = {k[len("transformer."):]: v for k, v in t.items()}
    _, mids, _, _, _ = clean(w, torch.tensor(PROMPT))
    for l in range(L):
        W_enc = torch.randn(S, C, generator=g) / math.sqrt(C)
        b_enc = torch.zeros(S)
        pre = mids[l] @ W_enc.T + b_enc
        top = torch.topk(pre.flatten(), 50 * len(PROMPT) + 1).values
        th = (top[-1] + top[-2]) / 2  # between the 800th and 801st: no ties
        write_safetensors("%s/tc/layer_%d.safetensors" % (d, l), {
            "W_enc": W_enc.numpy(), "W_dec": (0.02 * torch.randn(S, C, generator=g)).numpy(),
            "b_enc": b_enc.numpy(), "b_dec": (0.02 * torch.randn(C, generator=g)).numpy(),
            "threshold": torch.full((S,), float(th)).numpy()})


def run(d, threads, batch, out):
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    w, tcs = load(d)
    tok = torch.tensor(PROMPT)
    T = len(PROMPT)
    with torch.no_grad():
        fr, mids, mlps, xf, sf = clean(w, tok)
        acts, errs = [], []
        for l in range(L):
            tc = tcs[l]
            pre = mids[l] @ tc["W_enc"].T + tc["b_enc"]
            a = torch.where(pre > tc["threshold"], pre, torch.zeros_like(pre))
            acts.append(a)
            errs.append(mlps[l] - (a @ tc["W_dec"] + tc["b_dec"]))
        lg = ln(xf[-1], w["ln_f.weight"], w["ln_f.bias"])[0] @ w["lm_head.weight"].T
        probs = torch.softmax(lg, -1)
        top_p, top_i = torch.topk(probs, 10)
        cut = int(torch.searchsorted(torch.cumsum(top_p, 0), 0.95)) + 1
        top_p, top_i = top_p[:cut], top_i[:cut]
        ubar = w["lm_head.weight"][top_i] - w["lm_head.weight"].mean(0)
    feats = torch.cat([torch.cat([torch.full((len(nz), 1), l), nz], 1)
                       for l in range(L) for nz in [torch.nonzero(acts[l])]])  # (layer, pos, feat)
    nf, nl = len(feats), len(top_i)
    n = nf + L * T + T + nl
    # per (layer, position): the decoder rows scaled by the activations
    dec = {}
    off = 0
    for l in range(L):
        for t in range(T):
            sel = feats[(feats[:, 0] == l) & (feats[:, 1] == t)]
            dec[(l, t)] = (off, acts[l][t, sel[:, 2]][:, None] * tcs[l]["W_dec"][sel[:, 2]])
            off += len(sel)
    emb0 = w["wte.weight"][tok]
    B = batch
    emb = emb0.expand(B, T, C).clone().requires_grad_(True)
    outs = [(acts[l] @ tcs[l]["W_dec"] + tcs[l]["b_dec"] + errs[l]).expand(B, T, C).clone().requires_grad_(True)
            for l in range(L)]
    x = emb + w["wpe.weight"][:T]
    xin = []
    for l in range(L):
        p = "h.%d." % l
        s1, A = fr[l]
        mu = x.mean(-1, keepdim=True)
        h = (x - mu) * s1 * w[p + "ln_1.weight"] + w[p + "ln_1.bias"]
        v = (h @ w[p + "attn.c_attn.weight"][:, 2 * C:] + w[p + "attn.c_attn.bias"][2 * C:]).view(B, T, H, D)
        z = torch.einsum("hts,bshd->bthd", A, v).reshape(B, T, C)
        x = x + z @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        xin.append(x)
        x = x + outs[l]
    xfin = (x[:, -1] - x[:, -1].mean(-1, keepdim=True)) * sf[-1] * w["ln_f.weight"] + w["ln_f.bias"]
    adj = torch.zeros(n, n)
    targets = [("f", i) for i in range(nf)] + [("l", k) for k in range(nl)]
    bidx = torch.arange(B)
    for s in range(0, len(targets), B):
        chunk = targets[s:s + B]
        val = 0
        for l in range(L):
            ids = [(b, i) for b, (k, i) in enumerate(chunk) if k == "f" and int(feats[i, 0]) == l]
            if ids:
                bb = torch.tensor([b for b, _ in ids])
                ff = feats[[i for _, i in ids]]
                val = val + (xin[l][bb, ff[:, 1]] * tcs[l]["W_enc"][ff[:, 2]]).sum()
        ids = [(b, i) for b, (k, i) in enumerate(chunk) if k == "l"]
        if ids:
            bb = torch.tensor([b for b, _ in ids])
            val = val + (xfin[bb] * ubar[[i for _, i in ids]]).sum()
        grads = torch.autograd.grad(val, [emb] + outs, retain_graph=True, allow_unused=True)
        grads = [torch.zeros(B, T, C) if g is None else g for g in grads]
        rows = torch.tensor([i if k == "f" else n - nl + i for k, i in chunk])
        K = len(chunk)
        with torch.no_grad():
            for l in range(L):
                g = grads[1 + l][:K]
                for t in range(T):
                    o, dm = dec[(l, t)]
                    if len(dm):
                        adj[rows, o:o + len(dm)] = g[:, t] @ dm.T
                adj[rows, nf + l * T:nf + (l + 1) * T] = (g * errs[l]).sum(-1)
            adj[rows, nf + L * T:nf + L * T + T] = (grads[0][:K] * emb0).sum(-1)
    secs = time.perf_counter() - t0
    del bidx
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("torch %.3f %.0f %d %d %.3f" % (secs, ru.ru_maxrss / 1024, n, nf, ru.ru_utime + ru.ru_stime))
    if out:
        np.save(out, adj.numpy())
        np.save(out + ".nodes.npy", feats.numpy())


def compare(cpath, tpath):
    c = read_safetensors(cpath)
    a, b = c["adjacency"], np.load(tpath)
    feats = np.load(tpath + ".nodes.npy")
    nf = len(feats)
    kind = c["node_kind"]
    if a.shape != b.shape or int((kind == 0).sum()) != nf:
        raise SystemExit("compare: node counts differ: circ %s, torch %s" % (a.shape, b.shape))
    cf = np.stack([c["node_layer"][:nf], c["node_pos"][:nf], c["node_feature"][:nf]], 1)
    if not np.array_equal(cf, feats):
        raise SystemExit("compare: the active features differ")
    scale = np.maximum(np.abs(b).max(1, keepdims=True), 1e-12)
    err = float((np.abs(a - b) / scale).max())
    print("compare: %d nodes, %d features, max |circ - torch| / row max %.2e" % (a.shape[0], nf, err))
    if err > 1e-3:
        raise SystemExit("compare: adjacency differs")


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    elif cmd == "run":
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
