#!/usr/bin/python3
"""Independent PyTorch reference for circ's Edge Pruning gradients.

A GPT-2 (gelu_new, learned positions, tied unembedding) written from the
formulas in float64, decomposed as circ's edge-level graph: every receiver
(each head's q, k and v input, each MLP input, the logits) reads

    residual + sum_u (1 - z_e) (ref_u - cur_u)

over its upstream nodes u (edge e = u->r), ref_u the node's output in the
corrupted run and cur_u its output in this masked run. The loss is the mean
over the examples of KL(clean || masked) at the read positions (metric
"kl") or of -metric for logit_diff; autograd gives d loss / d z. Edges are
numbered as circ numbers them: by receiver (per layer each head's q, k, v,
then the MLP; logits last), then upstream node (input, then per layer its
heads and its MLP). Nothing here comes from circ's C code.

    edgeprune_ref.py CASE.json OUT.json
CASE: {"model": DIR, "metric": "kl" | "logit_diff", "z": [E],
       "examples": [{"clean": [T], "corrupt": [T], "pos": t,
                     "answer": [...], "wrong": [...]}, ...]}
OUT:  {"loss": x, "dz": [E]}
"""
import json
import math
import sys

import torch

from stio import read_safetensors

torch.set_default_dtype(torch.float64)


def load(d):
    cfg = json.load(open(d + "/config.json"))
    w = {}
    for k, v in read_safetensors(d + "/model.safetensors", float64=True).items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        w[k] = torch.tensor(v)
    return cfg, w


def ln(x, w, b):
    m = x.mean(-1, keepdim=True)
    v = ((x - m) ** 2).mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(v + 1e-5) * w + b


def gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


class Net:
    def __init__(self, cfg, w):
        self.w, self.L, self.H, self.C = w, cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
        self.D = self.C // self.H
        self.U = 1 + self.L * (self.H + 1)
        # (first edge, n_in) per receiver in circ's order
        self.recv, e = [], 0
        for l in range(self.L):
            for _ in range(3 * self.H):
                n_in = 1 + l * (self.H + 1)
                self.recv.append((e, n_in))
                e += n_in
            n_in = 1 + l * (self.H + 1) + self.H
            self.recv.append((e, n_in))
            e += n_in
        self.recv.append((e, self.U))
        self.E = e + self.U

    def run(self, tokens, z=None, ref=None):
        """logits (T, V) and the node outputs [(T, C)] of one sequence."""
        w, H, C, D, T = self.w, self.H, self.C, self.D, len(tokens)
        outs = [w["wte.weight"][tokens]]
        resid = outs[0] + w["wpe.weight"][:T]
        ri = [0]

        def inp():
            first, n_in = self.recv[ri[0]]
            ri[0] += 1
            x = resid
            if z is not None:
                for u in range(n_in):
                    x = x + (1 - z[first + u]) * (ref[u] - outs[u])
            return x

        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for l in range(self.L):
            p = "h.%d." % l
            Wa, ba, Wo = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"], w[p + "attn.c_proj.weight"]
            heads = []
            for h in range(H):
                qkv = []
                for c in range(3):
                    a = ln(inp(), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
                    cols = slice(c * C + h * D, c * C + (h + 1) * D)
                    qkv.append(a @ Wa[:, cols] + ba[cols])
                q, k, v = qkv
                att = ((q @ k.T) / math.sqrt(D)).masked_fill(~mask, float("-inf")).softmax(-1)
                heads.append((att @ v) @ Wo[h * D:(h + 1) * D, :])
            outs += heads
            resid = resid + sum(heads) + w[p + "attn.c_proj.bias"]
            a = ln(inp(), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            o = gelu(a @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
            outs.append(o)
            resid = resid + o
        x = ln(inp(), w["ln_f.weight"], w["ln_f.bias"])
        return x @ w.get("lm_head.weight", w["wte.weight"]).T, outs


def main():
    case = json.load(open(sys.argv[1]))
    cfg, w = load(case["model"])
    net = Net(cfg, w)
    z = torch.tensor(case["z"], requires_grad=True)
    assert z.numel() == net.E, (z.numel(), net.E)
    loss = 0
    exs = case["examples"]
    for ex in exs:
        t = ex["pos"]
        with torch.no_grad():
            _, ref = net.run(ex["corrupt"])
            clean, _ = net.run(ex["clean"])
        logits, _ = net.run(ex["clean"], z, ref)
        y = logits[t]
        if case["metric"] == "kl":
            P = clean[t].log_softmax(-1)
            loss = loss + (P.exp() * (P - y.log_softmax(-1))).sum()
        else:
            loss = loss - (y[ex["answer"]].mean() - y[ex["wrong"]].mean())
    loss = loss / len(exs)
    loss.backward()
    json.dump({"loss": loss.item(), "dz": z.grad.tolist()}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
