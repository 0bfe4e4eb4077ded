#!/usr/bin/python3
"""PyTorch reference (float64) for circ's training: parameter gradients,
cross-entropy, gradient clipping and AdamW, for tests/unit/test_train.c.

A GPT-2 written from the formulas (not from transformers, which is not
installed): token + positional embedding, per layer x += c_proj(attn(ln_1 x)),
x += mlp(ln_2 x) with GELU (tanh form for "gelu_new", erf form for "gelu"),
ln_f, logits = ln_f(x) @ wte^T (tied). Conv1D weights are (in, out).

Usage: train_ref.py CASES.json
CASES.json is a list of objects
  {"model": DIR, "data": FILE, "out": FILE, "lr": [lr of each step],
   "clip": float, "weight_decay": float, "beta1", "beta2", "eps"}
DIR holds config.json and model.safetensors (F32). FILE (safetensors) holds,
for K steps, "tokens" (K, B, T) I32, "rows" (K, N, 2) I32 (sequence,
position) and "targets" (K, N) I32: step k's loss is the mean cross-entropy
of the logits at rows[k] against targets[k]. The script writes OUT with
  grad.<name>   the gradient of step 0's loss at the initial weights
  final.<name>  the weights after K steps of: loss, backward, clipping of
                the global gradient norm (torch.nn.utils.clip_grad_norm_),
                torch.optim.AdamW (weight decay on the embeddings and the
                matrices only, as circ does)
  loss          (K) the loss of each step (before its update)
  gnorm         (K) the gradient norm of each step before clipping
with <name> in circ's short form: wte, wpe, h<l>.ln1_w, h<l>.attn_w, ...
"""
import json
import math
import sys

import numpy as np
import torch

from stio import read_safetensors, write_safetensors

torch.set_default_dtype(torch.float64)

SHORT = [
    ("ln_1.weight", "ln1_w"), ("ln_1.bias", "ln1_b"),
    ("attn.c_attn.weight", "attn_w"), ("attn.c_attn.bias", "attn_b"),
    ("attn.c_proj.weight", "proj_w"), ("attn.c_proj.bias", "proj_b"),
    ("ln_2.weight", "ln2_w"), ("ln_2.bias", "ln2_b"),
    ("mlp.c_fc.weight", "fc_w"), ("mlp.c_fc.bias", "fc_b"),
    ("mlp.c_proj.weight", "fcproj_w"), ("mlp.c_proj.bias", "fcproj_b"),
]
DECAY = {"wte", "wpe", "attn_w", "proj_w", "fc_w", "fcproj_w"}


def load_params(d):
    cfg = json.load(open(d + "/config.json"))
    raw = read_safetensors(d + "/model.safetensors")
    raw = {k[len("transformer."):] if k.startswith("transformer.") else k: v
           for k, v in raw.items()}
    p = {"wte": raw["wte.weight"], "wpe": raw["wpe.weight"],
         "lnf_w": raw["ln_f.weight"], "lnf_b": raw["ln_f.bias"]}
    for l in range(cfg["n_layer"]):
        for hf, short in SHORT:
            p["h%d.%s" % (l, short)] = raw["h.%d.%s" % (l, hf)]
    return cfg, {k: torch.tensor(np.array(v, dtype=np.float64), requires_grad=True)
                 for k, v in p.items()}


def gelu(x, exact):
    if exact:
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, p, tokens):
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    exact = cfg.get("activation_function", "gelu_new") == "gelu"
    B, T = tokens.shape
    D = C // H
    ln = torch.nn.functional.layer_norm
    x = p["wte"][tokens] + p["wpe"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(L):
        q = lambda k: p["h%d.%s" % (l, k)]
        a = ln(x, (C,), q("ln1_w"), q("ln1_b"), eps) @ q("attn_w") + q("attn_b")
        qq, kk, vv = [t.reshape(B, T, H, D).transpose(1, 2) for t in a.split(C, dim=2)]
        s = (qq @ kk.transpose(-1, -2)) / math.sqrt(D)
        att = s.masked_fill(~mask, float("-inf")).softmax(-1)
        z = (att @ vv).transpose(1, 2).reshape(B, T, C)
        x = x + z @ q("proj_w") + q("proj_b")
        h = gelu(ln(x, (C,), q("ln2_w"), q("ln2_b"), eps) @ q("fc_w") + q("fc_b"), exact)
        x = x + h @ q("fcproj_w") + q("fcproj_b")
    return ln(x, (C,), p["lnf_w"], p["lnf_b"], eps) @ p["wte"].T


def loss_of(cfg, p, tokens, rows, targets):
    lg = forward(cfg, p, torch.tensor(tokens.astype(np.int64)))
    sel = lg[torch.tensor(rows[:, 0].astype(np.int64)), torch.tensor(rows[:, 1].astype(np.int64))]
    return torch.nn.functional.cross_entropy(sel, torch.tensor(targets.astype(np.int64)))


def run_case(c):
    cfg, p = load_params(c["model"])
    data = read_safetensors(c["data"])
    K = data["tokens"].shape[0]
    names = list(p)
    decay = [p[n] for n in names if n.split(".")[-1] in DECAY]
    nodecay = [p[n] for n in names if n.split(".")[-1] not in DECAY]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=c["lr"][0], betas=(c["beta1"], c["beta2"]), eps=c["eps"])
    out, losses, norms = {}, [], []
    for k in range(K):
        opt.zero_grad()
        loss = loss_of(cfg, p, data["tokens"][k], data["rows"][k], data["targets"][k])
        loss.backward()
        if k == 0:
            for n in names:
                out["grad." + n] = p[n].grad.detach().numpy().copy()
        gn = torch.nn.utils.clip_grad_norm_([p[n] for n in names],
                                            c["clip"] if c["clip"] > 0 else float("inf"))
        for g in opt.param_groups:
            g["lr"] = c["lr"][k]
        opt.step()
        losses.append(loss.item())
        norms.append(float(gn))
    for n in names:
        out["final." + n] = p[n].detach().numpy().copy()
    out["loss"] = np.array(losses)
    out["gnorm"] = np.array(norms)
    write_safetensors(c["out"], out)


def main():
    for c in json.load(open(sys.argv[1])):
        run_case(c)


if __name__ == "__main__":
    main()
