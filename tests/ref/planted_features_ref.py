#!/usr/bin/python3
"""Independent check of the planted-features fixture (circ-fixture(1)), in
float64 PyTorch, from the files alone: config.json + model.safetensors (a
GPT-2 forward written here from the formulas, with hooks at each
dictionary's hook point), dicts/<name>/ (SAELens JumpReLU SAEs), dataset.jsonl
(token ids), truth-features.jsonl and truth-nodes.jsonl.

Usage: planted_features_ref.py DIR

It checks, and prints the numbers of:
  1. the task: on every example the clean logit difference (answer minus
     wrong verb at END) is above MIN_METRIC and the corrupted one below
     -MIN_METRIC;
  2. the dictionaries: on every position of the clean and corrupted runs the
     fraction of variance unexplained is below MAX_FVU and the largest error
     (activation minus reconstruction) below MAX_ERR;
  3. the nodes: each feature whose activation differs between the clean and
     the corrupted run is patched alone to its corrupted value (in the clean
     run, at its hook, everything downstream recomputed); the features whose
     patch moves the metric by more than a tenth of the clean-corrupt gap are
     exactly truth-nodes.jsonl, and the weakest of them moves it at least
     RATIO times more than the strongest other feature;
  4. the edges: the direct effect of each changed feature u on each feature d
     of a dictionary downstream of it in the sparse-feature-circuit edge set
     (resid<l-1> -> attn<l>, mlp<l>, resid<l>; attn<l> -> mlp<l>, resid<l>;
     mlp<l> -> resid<l>; the last resid -> logits), measured by patching u
     with the dictionaries between the two held at their clean values (the
     sublayer outputs attn<l> and mlp<l> for resid -> resid, attn<l> for
     resid -> mlp); among the edges into the truth nodes or the logits
     (an edge into a feature that does not move the metric carries nothing
     to the output), those with a direct effect above EDGE_MIN are exactly
     truth-features.jsonl, and every other one's is below EDGE_MAX.
Exit status 0 when all hold, 1 otherwise.
"""
import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stio import read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)

MIN_METRIC = 3.0
MAX_FVU = 1e-6
MAX_ERR = 1e-3
RATIO = 100.0
EDGE_MIN = 0.5
EDGE_MAX = 1e-2


def load_model(d):
    cfg = json.load(open(d + "/config.json"))
    w = {}
    for k, v in read_safetensors(d + "/model.safetensors", float64=True).items():
        w[k[len("transformer."):] if k.startswith("transformer.") else k] = torch.tensor(v)
    return cfg, w


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * g + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(cfg, w, tok, over=None):
    """Logits (B, T, V) and the hook activations {hook: (B, T, C)}; over maps
    a hook name to a function of its activation giving the value used."""
    over = over or {}
    acts = {}
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    B, T = tok.shape

    def hook(name, a):
        if name in over:
            a = over[name](a)
        acts[name] = a
        return a

    x = w["wte.weight"][tok] + w["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for l in range(L):
        p = "h.%d." % l
        x = hook("blocks.%d.hook_resid_pre" % l, x)
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in qkv.split(C, -1))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(mask, float("-inf"))
        z = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)
        a = hook("blocks.%d.hook_attn_out" % l,
                 z @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"])
        x = x + a
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        m = gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        m = hook("blocks.%d.hook_mlp_out" % l,
                 m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
        x = hook("blocks.%d.hook_resid_post" % l, x + m)
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    return x @ w["wte.weight"].T, acts


class SAE:
    """A SAELens JumpReLU SAE: f = pre [pre > threshold], pre = (x - b_dec) W_enc + b_enc."""

    def __init__(self, d):
        self.cfg = json.load(open(d + "/cfg.json"))
        assert self.cfg["architecture"] == "jumprelu", d
        t = read_safetensors(d + "/sae_weights.safetensors", float64=True)
        for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            setattr(self, k, torch.tensor(t[k]))
        self.hook = self.cfg["hook_name"]

    def encode(self, x):
        xc = x - self.b_dec if self.cfg.get("apply_b_dec_to_input", True) else x
        pre = xc @ self.W_enc + self.b_enc
        return pre * (pre > self.threshold)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def dict_name(hook):
    """circ_dict_name: resid_pre<l>, attn<l>, mlp<l>, resid<l>."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)", hook)
    l, p = m.group(1), m.group(2)
    return {"resid_pre": "resid_pre", "attn_out": "attn", "mlp_out": "mlp",
            "resid_post": "resid"}[p] + l


def metric(logits, ans, wrong):
    last = logits[:, -1, :]
    r = torch.arange(last.shape[0])
    return last[r, ans] - last[r, wrong]


def main():
    d = sys.argv[1]
    cfg, w = load_model(d)
    L = cfg["n_layer"]
    ex = [json.loads(l) for l in open(d + "/dataset.jsonl")]
    clean = torch.tensor([e["clean_ids"] for e in ex])
    corrupt = torch.tensor([e["corrupt_ids"] for e in ex])
    assert all(e["pos"] == clean.shape[1] - 1 for e in ex)
    ans = torch.tensor([e["answer_ids"] for e in ex])
    wrong = torch.tensor([e["wrong_ids"] for e in ex])
    ok = True

    # 1. the task
    lc, ac = forward(cfg, w, clean)
    lx, ax = forward(cfg, w, corrupt)
    mc, mx = metric(lc, ans, wrong), metric(lx, ans, wrong)
    gap = float((mc - mx).mean())
    print("task: clean logit diff min %.4f mean %.4f; corrupted max %.4f mean %.4f"
          % (mc.min(), mc.mean(), mx.max(), mx.mean()))
    ok &= bool(mc.min() > MIN_METRIC) and bool(mx.max() < -MIN_METRIC)

    # 2. the dictionaries
    saes = {}
    for name in sorted(os.listdir(d + "/dicts")):
        s = SAE(d + "/dicts/" + name)
        assert dict_name(s.hook) == name, (name, s.hook)
        saes[name] = s
        x = torch.cat([ac[s.hook], ax[s.hook]]).reshape(-1, s.W_dec.shape[1])
        err = x - s.decode(s.encode(x))
        var = ((x - x.mean(0)) ** 2).sum()
        fvu = float((err ** 2).sum() / var) if var > 0 else 0.0
        l0 = float((s.encode(x) > 0).double().sum(-1).mean())
        print("dict %-10s d_sae %2d: FVU %.3g, max |error| %.3g, L0 %.3f"
              % (name, s.W_dec.shape[0], fvu, err.abs().max(), l0))
        ok &= fvu < MAX_FVU and float(err.abs().max()) < MAX_ERR

    # the features that the corruption changes, per dictionary
    fc = {n: s.encode(ac[s.hook]) for n, s in saes.items()}
    fx = {n: s.encode(ax[s.hook]) for n, s in saes.items()}
    changed = [(n, i) for n in saes for i in range(saes[n].W_dec.shape[0])
               if float((fx[n][..., i] - fc[n][..., i]).abs().max()) > 1e-6]

    def patch(n, i):
        """The override at n's hook that moves feature i to its corrupted value."""
        delta = (fx[n][..., i] - fc[n][..., i]).unsqueeze(-1) * saes[n].W_dec[i]
        return {saes[n].hook: lambda a: a + delta}

    # 3. the nodes
    truth_nodes = {json.loads(l)["node"] for l in open(d + "/truth-nodes.jsonl")}
    eff = {}
    for n, i in changed:
        lp, _ = forward(cfg, w, clean, patch(n, i))
        eff["%s.f%d" % (n, i)] = float((metric(lp, ans, wrong) - mc).abs().mean())
    found = {k for k, v in eff.items() if v > 0.1 * gap}
    t_min = min(eff.get(k, 0.0) for k in truth_nodes)
    o_max = max([v for k, v in eff.items() if k not in truth_nodes] + [0.0])
    print("nodes: %d changed features; truth %d, the weakest moves the metric by %.4f; "
          "the strongest other by %.3g (gap %.4f)" % (len(changed), len(truth_nodes), t_min,
                                                      o_max, gap))
    if found != truth_nodes:
        print("nodes: found %s, truth-nodes.jsonl %s" % (sorted(found), sorted(truth_nodes)))
        ok = False
    ok &= t_min >= RATIO * max(o_max, 1e-12) or o_max == 0.0

    # 4. the edges: (upstream dict, downstream dict, dicts frozen between)
    last = "resid%d" % (L - 1)
    pairs = []
    for l in range(L):
        up = "resid_pre0" if l == 0 else "resid%d" % (l - 1)
        a, m, r = "attn%d" % l, "mlp%d" % l, "resid%d" % l
        pairs += [(up, a, []), (up, m, [a]), (a, m, []), (up, r, [a, m]), (a, r, [m]),
                  (m, r, [])]
    truth_edges = {json.loads(l)["edge"] for l in open(d + "/truth-features.jsonl")}
    edge_eff = {}
    for n, i in changed:
        outs = [(dn, fr) for un, dn, fr in pairs if un == n and dn in saes]
        if n == last:
            outs.append(("logits", []))
        for dn, frozen in outs:
            over = patch(n, i)
            for f in frozen:
                hk = saes[f].hook if f in saes else "blocks.%s.hook_%s_out" % (
                    f[-1], "attn" if f.startswith("attn") else "mlp")
                over[hk] = (lambda v: lambda a: v)(ac[hk])
            lp, ap = forward(cfg, w, clean, over)
            if dn == "logits":
                edge_eff["%s.f%d->logits" % (n, i)] = float(
                    (metric(lp, ans, wrong) - mc).abs().mean())
                continue
            df = (saes[dn].encode(ap[saes[dn].hook]) - fc[dn]).abs().amax(1).mean(0)
            for j in range(df.shape[0]):
                edge_eff["%s.f%d->%s.f%d" % (n, i, dn, j)] = float(df[j])
    # an edge into a feature that does not move the metric (the residual
    # carrying sg at the subject into the next resid) carries nothing to the
    # output: only edges into the nodes found above, or into the logits, count
    into = {k: v for k, v in edge_eff.items()
            if k.split("->")[1] in truth_nodes or k.endswith("->logits")}
    found = {k for k, v in into.items() if v > EDGE_MIN}
    o_max = max([v for k, v in into.items() if k not in truth_edges] + [0.0])
    t_min = min(edge_eff.get(k, 0.0) for k in truth_edges)
    print("edges: %d measured from changed features, %d into the truth nodes or the logits; "
          "truth %d, the weakest direct effect %.4f; the strongest other %.3g"
          % (len(edge_eff), len(into), len(truth_edges), t_min, o_max))
    if found != truth_edges:
        print("edges: found %s, truth-features.jsonl %s" % (sorted(found), sorted(truth_edges)))
        ok = False
    ok &= o_max < EDGE_MAX and t_min > EDGE_MIN
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
