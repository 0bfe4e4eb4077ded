#!/usr/bin/python3
"""Reference GPT-2 in PyTorch (float64) for circ's model tests.

Written from the formulas, not from transformers (which is not installed):
it reads a Hugging Face GPT-2 directory (config.json + model.safetensors,
F32/F16/BF16, names with or without "transformer.", lm_head tied unless
present) with a numpy safetensors parser (stio.py), and computes, with
per-receiver inputs made explicit so that autograd gives each receiver's
gradient separately:

  logits at the read rows, every node's output (input, each head's
  z_h W_O^h without the c_proj bias, each MLP's output with its bias),
  attention probabilities, and for loss = sum(logits * dlogits):
  the gradient at every receiver's input (q, k, v of each head, each MLP,
  logits), at every node's output, and at every parameter (param_grad,
  flattened in circ_weights_alloc order; lm_head tied to wte).

Receivers may carry additive deltas (input = residual + delta), as in
circ's forward hook.

Usage: gpt2_ref.py CASES.json
CASES.json is a list of objects:
  {"model": DIR, "out": FILE, "seed": int, "B": int, "T": int,
   "read": "last" | "all" | "list", "n_deltas": int, "acdc": bool}
For each case the script draws tokens, deltas, read rows and dlogits from
numpy's RandomState(seed), and writes FILE (safetensors) holding the inputs
(tokens, delta_recv, deltas, reads, dlogits) and the expected outputs
(logits, nodes, attn, recv_grad, node_grad), all F32 except integer inputs.
Node, receiver and stage numbering follow lib/model.h.

  {"metrics": FILE, "seed": int} writes metric goldens instead (see
  test_model.c): random logits rows, answer sets, and value and gradient of
  each metric computed by autograd.

Usage: gpt2_ref.py logits DIR TOKENS.jsonl
prints, per record of a JSON-lines token stream, {"id", "logits": [[...]]}
with the logits at the record's read position(s) (clean prompt), for
tests/forward.bats.
"""
import json
import math
import re
import sys

import numpy as np
import torch

from stio import read_safetensors, write_safetensors

torch.set_default_dtype(torch.float64)


def load_model(d):
    cfg = json.load(open(d + "/config.json"))
    raw = read_safetensors(d + "/model.safetensors", float64=True)
    w = {}
    for k, v in raw.items():
        if k.startswith("transformer.") and k != "transformer.lm_head.weight":
            k = k[len("transformer."):]
        if re.fullmatch(r"h\.\d+\.attn\.(masked_)?bias", k):
            continue  # the causal-mask buffers
        w[k] = torch.tensor(v)
    if "lm_head.weight" not in w:
        w["lm_head.weight"] = w["wte.weight"]
    return cfg, w


def gelu(x, act):
    if act == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


PARAM_ORDER = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
               "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
               "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]


def param_names(L):
    """Parameter names in circ_weights_alloc order (lm_head tied to wte)."""
    names = ["wte.weight", "wpe.weight"]
    for l in range(L):
        names += ["h.%d.%s" % (l, k) for k in PARAM_ORDER]
    return names + ["ln_f.weight", "ln_f.bias"]


def run_case(case):
    cfg, w = load_model(case["model"])
    for k in param_names(cfg["n_layer"]):
        w[k].requires_grad_(True)
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    V = cfg["vocab_size"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = cfg.get("activation_function", "gelu_new")
    B, T = case["B"], case["T"]
    acdc = case.get("acdc", False)
    rs = np.random.RandomState(case["seed"])
    R = L * (3 * H + 1) + 1
    U = 1 + L * (H + 1)

    tokens = rs.randint(0, V, size=(B, T)).astype(np.int32)
    nd = case.get("n_deltas", 0)
    delta_recv = np.sort(rs.choice(R, size=nd, replace=False)).astype(np.int32) if nd else np.zeros((0,), np.int32)
    deltas = rs.normal(0, 0.5, size=(nd, B, T, C)).astype(np.float32)
    if case["read"] == "last":
        reads = np.array([[b, T - 1] for b in range(B)], dtype=np.int32)
    elif case["read"] == "all":
        reads = np.array([[b, t] for b in range(B) for t in range(T)], dtype=np.int32)
    else:
        n = B * T - 1  # circ reads at most B*T rows per forward
        reads = np.stack([rs.randint(0, B, n), rs.randint(0, T, n)], 1).astype(np.int32)
    N = reads.shape[0]
    dlogits = rs.normal(0, 1, size=(N, V)).astype(np.float32)

    dmap = {int(r): torch.tensor(deltas[i].astype(np.float64)) for i, r in enumerate(delta_recv)}

    def recv_delta(r):
        return dmap.get(r, torch.zeros(B, T, C))

    tok = torch.tensor(tokens.astype(np.int64))
    wpe = w["wpe.weight"][:T]
    emb = w["wte.weight"][tok]
    if acdc:
        emb = emb + wpe
    inp_out = emb.clone()
    inp_out.retain_grad()  # a non-leaf: wte requires grad
    x = inp_out + (0 if acdc else wpe)
    node_outs = [inp_out]
    recv_inputs = [None] * R
    attns = []
    for l in range(L):
        p = "h.%d." % l
        base = l * (3 * H + 1)
        # per-receiver inputs (B, T, H, 3, C)
        dl = torch.stack([torch.stack([recv_delta(base + 3 * h + c) for c in range(3)], 2) for h in range(H)], 2)
        X = x[:, :, None, None, :] + dl
        X.retain_grad()
        for h in range(H):
            for c in range(3):
                recv_inputs[base + 3 * h + c] = (X, h, c)
        ln = layer_norm(X, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        Wa = w[p + "attn.c_attn.weight"].view(C, 3, H, D)
        ba = w[p + "attn.c_attn.bias"].view(3, H, D)
        q = torch.einsum("bthc,chd->bhtd", ln[:, :, :, 0], Wa[:, 0]) + ba[0][None, :, None, :]
        k = torch.einsum("bthc,chd->bhtd", ln[:, :, :, 1], Wa[:, 1]) + ba[1][None, :, None, :]
        v = torch.einsum("bthc,chd->bhtd", ln[:, :, :, 2], Wa[:, 2]) + ba[2][None, :, None, :]
        s = q @ k.transpose(-1, -2) / math.sqrt(D)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        s = s.masked_fill(mask, float("-inf"))
        a = torch.softmax(s, -1)
        attns.append(a.detach())
        z = a @ v  # (B, H, T, D)
        Wo = w[p + "attn.c_proj.weight"].view(H, D, C)
        head_out = torch.einsum("bhtd,hdc->bhtc", z, Wo)
        head_out.retain_grad()
        for h in range(H):
            node_outs.append((head_out, h))
        x = x + head_out.sum(1) + w[p + "attn.c_proj.bias"]
        rm = base + 3 * H
        Xm = x + recv_delta(rm)
        Xm.retain_grad()
        recv_inputs[rm] = Xm
        hfc = layer_norm(Xm, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps) @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        mo = gelu(hfc, act) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        mo.retain_grad()
        node_outs.append(mo)
        x = x + mo
    Xf = x + recv_delta(R - 1)
    Xf.retain_grad()
    recv_inputs[R - 1] = Xf
    lnf = layer_norm(Xf, w["ln_f.weight"], w["ln_f.bias"], eps)
    rows = lnf[torch.tensor(reads[:, 0].astype(np.int64)), torch.tensor(reads[:, 1].astype(np.int64))]
    logits = rows @ w["lm_head.weight"].T
    loss = (logits * torch.tensor(dlogits.astype(np.float64))).sum()
    loss.backward()

    def node_val(n, grad):
        if isinstance(n, tuple):
            t, h = n
            return (t.grad if grad else t.detach())[:, h]
        return n.grad if grad else n.detach()

    nodes = np.stack([node_val(n, False).numpy() for n in node_outs])
    node_grad = np.stack([node_val(n, True).numpy() for n in node_outs])
    rg = []
    for r in range(R):
        ri = recv_inputs[r]
        if isinstance(ri, tuple):
            X, h, c = ri
            rg.append(X.grad[:, :, h, c].numpy())
        else:
            rg.append(ri.grad.numpy())
    out = {
        "tokens": tokens,
        "delta_recv": delta_recv,
        "deltas": deltas.reshape(nd, B, T, C) if nd else np.zeros((0, B, T, C), np.float32),
        "reads": reads,
        "dlogits": dlogits,
        "logits": logits.detach().numpy(),
        "nodes": nodes,
        "attn": torch.stack(attns).numpy(),
        "recv_grad": np.stack(rg),
        "node_grad": node_grad,
        # d loss / d parameters, flattened in circ_weights_alloc order
        "param_grad": np.concatenate([w[k].grad.numpy().ravel() for k in param_names(L)]),
    }
    assert out["nodes"].shape == (U, B, T, C)
    write_safetensors(case["out"], out)


def run_metrics(case):
    """Random logits rows and answer sets; value and d/dlogits of each metric."""
    rs = np.random.RandomState(case["seed"])
    V = 37
    n = 6
    logits = rs.normal(0, 3, size=(n, V)).astype(np.float32)
    clean = rs.normal(0, 3, size=(n, V)).astype(np.float32)
    good = np.zeros((n, 3), np.int32)
    bad = np.zeros((n, 3), np.int32)
    ngood = np.zeros((n,), np.int32)
    nbad = np.zeros((n,), np.int32)
    vals = np.zeros((n, 5), np.float32)
    grads = np.zeros((n, 5, V), np.float32)
    for i in range(n):
        ids = rs.choice(V, size=6, replace=False)
        ngood[i] = 1 + i % 3
        nbad[i] = 1 + (i + 1) % 3
        good[i, :ngood[i]] = ids[:ngood[i]]
        bad[i, :nbad[i]] = ids[3:3 + nbad[i]]
        g = torch.tensor(good[i, :ngood[i]].astype(np.int64))
        bd = torch.tensor(bad[i, :nbad[i]].astype(np.int64))
        cl = torch.log_softmax(torch.tensor(clean[i].astype(np.float64)), -1)
        fns = [
            lambda z: z[g].mean() - z[bd].mean(),                      # logit_diff
            lambda z: torch.softmax(z, -1)[g].sum() - torch.softmax(z, -1)[bd].sum(),  # prob_diff
            lambda z: (cl.exp() * (cl - torch.log_softmax(z, -1))).sum(),  # kl(clean || z)
            lambda z: torch.log_softmax(z, -1)[g[0]],                   # logprob of the first answer
        ]
        for j, fn in enumerate(fns):
            z = torch.tensor(logits[i].astype(np.float64), requires_grad=True)
            v = fn(z)
            v.backward()
            vals[i, j] = v.item()
            grads[i, j] = z.grad.numpy()
        vals[i, 4] = 1.0 if int(np.argmax(logits[i])) == int(good[i, 0]) else 0.0
    write_safetensors(case["metrics"], {
        "logits": logits, "clean": clean, "good": good, "bad": bad, "ngood": ngood,
        "nbad": nbad, "values": vals, "grads": grads})


def bf16(t):
    """t rounded to bfloat16 (to nearest even), back in float64."""
    return t.to(torch.bfloat16).to(torch.float64)


def print_logits(d, tokens_path, low=False):
    """low: circ-forward --compute bf16's arithmetic: each product with a
    weight matrix takes the activations and the weights rounded to bf16
    (the sums in float64 here), everything else as in float64."""
    cfg, w = load_model(d)
    mm = (lambda x, W: bf16(x) @ bf16(W)) if low else (lambda x, W: x @ W)
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = cfg.get("activation_function", "gelu_new")
    lines = [json.loads(x) for x in open(tokens_path) if x.strip()]
    for rec in lines[1:]:
        if "$end" in rec:  # the end record (stream.h)
            continue
        tok = torch.tensor(rec["clean"]["data"])
        T = tok.shape[0]
        x = w["wte.weight"][tok] + w["wpe.weight"][:T]
        for l in range(L):
            p = "h.%d." % l
            h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            q, k, v = (mm(h, w[p + "attn.c_attn.weight"]) + w[p + "attn.c_attn.bias"]).split(C, -1)
            q, k, v = (t.view(T, H, D).transpose(0, 1) for t in (q, k, v))
            s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            z = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, C)
            x = x + mm(z, w[p + "attn.c_proj.weight"]) + w[p + "attn.c_proj.bias"]
            h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            x = x + mm(gelu(mm(h, w[p + "mlp.c_fc.weight"]) + w[p + "mlp.c_fc.bias"], act), w[p + "mlp.c_proj.weight"]) + w[p + "mlp.c_proj.bias"]
        logits = mm(layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps), w["lm_head.weight"].T)
        pos = rec["pos"] if isinstance(rec["pos"], list) else [rec["pos"]]
        print(json.dumps({"id": rec["id"], "logits": [logits[i].tolist() for i in pos]}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] in ("logits", "logits-bf16"):
        print_logits(sys.argv[2], sys.argv[3], sys.argv[1] == "logits-bf16")
        return
    if len(sys.argv) != 2:
        raise SystemExit("usage: gpt2_ref.py CASES.json | gpt2_ref.py logits|logits-bf16 DIR TOKENS.jsonl")
    torch.manual_seed(0)
    for case in json.load(open(sys.argv[1])):
        if "metrics" in case:
            run_metrics(case)
        else:
            run_case(case)


if __name__ == "__main__":
    main()
