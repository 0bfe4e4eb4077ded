#!/usr/bin/python3
"""The PyTorch side of circ's EAP benchmark (see bench/attrib.sh).

Usage: torch_eap.py MODEL_DIR TOKENS.jsonl THREADS REPS N [--check SCORES.f64]

A minimal edge attribution patching (EAP) written the way EAP-IG
(hannamw/eap-ig, get_scores_eap) does it on TransformerLens, without
TransformerLens: a GPT-2 in torch whose hook points are identity modules,
with each head's q, k and v input a separate tensor (the residual expanded to
(B, T, H, C), each with its own ln_1, as use_split_qkv_input gives) and each
head's output a separate tensor before the sum (use_attn_result). Per batch:
  1. the corrupted forward, whose forward hooks add every node's output into
     activation_difference (B, T, U, C);
  2. the clean forward, whose forward hooks subtract them, and whose
     backward hooks (module full-backward hooks on the q/k/v, MLP and final
     residual hook points, as TransformerLens registers them) compute
     scores[:n_in, receivers] += einsum('bpfc,bpkc->fk') at every receiver;
  3. the backward of the loss (-logit_diff summed over examples).
Nodes and receivers as circ numbers them (input = token embedding, heads
without the c_proj bias, MLPs with theirs). To be a lower bound on EAP-IG's
cost, and fair to PyTorch: the corrupted forward runs under no_grad, the
parameters do not require gradients (EAP-IG on TransformerLens also
computes weight gradients), and logits are computed at the read position
only. Batches of 16, as circ-score.

Prints "torch_eap min median" (seconds for all N prompts, best of REPS after a
one-batch warm-up) and "rss_kb N". --check compares the last run's per-edge
sums with circ's (attrib_bench eap ... SCORES, the same prompts) and prints
"check <max |difference| / max |score|> <edges>".
"""
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import load  # noqa: E402  (the model benchmark's safetensors reader)

BATCH = 16


class HookPoint(nn.Module):
    """An identity where hooks attach (TransformerLens' HookPoint)."""

    def forward(self, x):
        return x


class Block(nn.Module):
    def __init__(self, p, H, eps):
        super().__init__()
        C = p["ln_1.weight"].shape[0]
        D = C // H
        self.H, self.C, self.D, self.eps = H, C, D, eps
        self.p = p
        W = p["attn.c_attn.weight"].view(C, 3, H, D)
        self.W = [W[:, c].permute(1, 0, 2).contiguous() for c in range(3)]  # (H, C, D)
        self.b = p["attn.c_attn.bias"].view(3, H, D)
        self.Wo = p["attn.c_proj.weight"].view(H, D, C)
        self.hook_in = nn.ModuleList([HookPoint() for _ in range(3)])  # q, k, v inputs
        self.hook_result = HookPoint()  # (B, T, H, C) per-head outputs
        self.hook_mlp_in = HookPoint()
        self.hook_mlp_out = HookPoint()

    def forward(self, x, mask):
        B, T, C = x.shape
        p, H = self.p, self.H
        xin = x[:, :, None, :].expand(B, T, H, C)
        qkv = []
        for c in range(3):
            h = self.hook_in[c](xin)
            h = Fn.layer_norm(h, (C,), p["ln_1.weight"], p["ln_1.bias"], self.eps)
            qkv.append(torch.einsum("bthc,hcd->bhtd", h, self.W[c]) + self.b[c][None, :, None, :])
        q, k, v = qkv
        a = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
        a = a.masked_fill(mask, float("-inf")).softmax(-1)
        z = a @ v  # (B, H, T, D)
        res = self.hook_result(torch.einsum("bhtd,hdc->bthc", z, self.Wo))
        x = x + res.sum(2) + p["attn.c_proj.bias"]
        h = Fn.layer_norm(self.hook_mlp_in(x), (C,), p["ln_2.weight"], p["ln_2.bias"], self.eps)
        m = Fn.gelu(h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"], approximate="tanh")
        m = self.hook_mlp_out(m @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"])
        return x + m


class GPT2(nn.Module):
    def __init__(self, cfg, w):
        super().__init__()
        self.H, self.L = cfg["n_head"], cfg["n_layer"]
        eps = cfg.get("layer_norm_epsilon", 1e-5)
        self.eps = eps
        self.wte, self.wpe = w["wte.weight"], w["wpe.weight"]
        self.lnf = (w["ln_f.weight"], w["ln_f.bias"])
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            [Block({k[len("h.%d." % l):]: v for k, v in w.items() if k.startswith("h.%d." % l)}, self.H, eps)
             for l in range(self.L)])
        self.hook_final = HookPoint()  # the final residual (logits receiver)

    def forward(self, tok, need_grad):
        B, T = tok.shape
        C = self.wte.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        e = self.wte[tok]
        if need_grad:
            e.requires_grad_(True)  # gradients flow from the input on (parameters do not need them)
        x = self.hook_embed(e) + self.wpe[:T]
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.hook_final(x)
        return Fn.layer_norm(x[:, -1], (C,), *self.lnf, self.eps) @ self.wte.T


def read_tokens(path, n):
    clean, corrupt, ans, wrong = [], [], [], []
    with open(path) as f:
        next(f)
        for line in f:
            r = json.loads(line)
            clean.append(r["clean"]["data"])
            corrupt.append(r["corrupt"]["data"])
            ans.append(r["answer"][0])
            wrong.append(r["wrong"][0])
            if len(clean) == n:
                break
    return (torch.tensor(clean), torch.tensor(corrupt), torch.tensor(ans), torch.tensor(wrong))


def main():
    args = sys.argv[1:]
    check = None
    if "--check" in args:
        i = args.index("--check")
        check = args[i + 1]
        del args[i:i + 2]
    d, tokens, threads, reps, n = args[0], args[1], int(args[2]), int(args[3]), int(args[4])
    torch.set_num_threads(threads)
    cfg, w = load(d)
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    U, R = 1 + L * (H + 1), L * (3 * H + 1) + 1
    model = GPT2(cfg, w)
    clean, corrupt, ans, wrong = read_tokens(tokens, n)
    T = clean.shape[1]
    scores = torch.zeros(U, R)
    state = {}

    # ---- hooks, as EAP-IG's make_hooks_and_matrices ----
    def act_hook(index, sign):
        def hook(module, inp, out):
            state["diff"][:, :, index] += sign * out.detach()
        return hook

    def grad_hook(n_in, recv):
        recv_t = torch.tensor(recv)

        def hook(module, grad_in, grad_out):
            g = grad_out[0].detach()
            if g.ndim == 3:
                g = g.unsqueeze(2)
            s = torch.einsum("bpfc,bpkc->fk", state["diff"][:, :, :n_in], g)
            scores[:n_in, recv_t] += s
        return hook

    fwd_corrupt, fwd_clean, bwd = [], [], []
    for sign, lst in ((1.0, fwd_corrupt), (-1.0, fwd_clean)):
        lst.append((model.hook_embed, act_hook(0, sign)))
        for l, blk in enumerate(model.blocks):
            u0 = 1 + l * (H + 1)
            lst.append((blk.hook_result, act_hook(slice(u0, u0 + H), sign)))
            lst.append((blk.hook_mlp_out, act_hook(u0 + H, sign)))
    for l, blk in enumerate(model.blocks):
        r0, u0 = l * (3 * H + 1), 1 + l * (H + 1)
        for c in range(3):
            bwd.append((blk.hook_in[c], grad_hook(u0, [r0 + 3 * h + c for h in range(H)])))
        bwd.append((blk.hook_mlp_in, grad_hook(u0 + H, [r0 + 3 * H])))
    bwd.append((model.hook_final, grad_hook(U, [R - 1])))

    def with_hooks(fwd, bw, fn):
        hs = [m.register_forward_hook(h) for m, h in fwd]
        hs += [m.register_full_backward_hook(h) for m, h in bw]
        try:
            return fn()
        finally:
            for h in hs:
                h.remove()

    def batch(i0, i1):
        B = i1 - i0
        state["diff"] = torch.zeros(B, T, U, C)
        with torch.no_grad():
            with_hooks(fwd_corrupt, [], lambda: model(corrupt[i0:i1], False))

        def clean_pass():
            logits = model(clean[i0:i1], True)
            idx = torch.arange(B)
            metric = logits[idx, ans[i0:i1]] - logits[idx, wrong[i0:i1]]
            (-metric.sum()).backward()
        with_hooks(fwd_clean, bwd, clean_pass)

    def run():
        scores.zero_()
        for i0 in range(0, n, BATCH):
            batch(i0, min(n, i0 + BATCH))

    batch(0, min(n, BATCH))  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    print("torch_eap %.6f %.6f" % (ts[0], ts[len(ts) // 2]), flush=True)
    print("rss_kb %d" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if check:
        # the last run's sums in circ's edge order: receiver by receiver, its
        # upstream nodes 0 .. n_in-1
        circ = torch.from_numpy(np.fromfile(check, dtype="<f8"))
        mine = []
        for r in range(R):
            l, j = r // (3 * H + 1), r % (3 * H + 1)
            n_in = U if r == R - 1 else 1 + l * (H + 1) + (H if j == 3 * H else 0)
            mine.append(scores[:n_in, r].double())
        mine = torch.cat(mine)
        print("check %.3g %d" % ((mine - circ).abs().max() / circ.abs().max(), circ.numel()))


if __name__ == "__main__":
    main()
