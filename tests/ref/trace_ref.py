#!/usr/bin/python3
"""Reference for circ's attribution graphs (lib/trace, circ-trace), PyTorch
float64.

Written from the method's description (Ameisen et al. 2025; circuit-tracer's
documented node order, logit selection and pruning), not from circ's code:
the replacement model is run as an autograd graph whose leaves are the
token embeddings, each layer's feature activations and error vectors, with
the attention patterns and the LayerNorm scales detached (frozen); each
target's row is one torch.autograd.grad call (circ sweeps batches of
targets by hand). The bias of a target is the replacement model evaluated
with every leaf set to zero.

Usage:
  trace_ref.py make-model DIR --layers L --embd C --heads H --vocab V --ctx P
               [--seed N] [--std X]
      writes a random GPT-2 (config.json, model.safetensors).
  trace_ref.py graph MODEL DICTSET IDS [--max-logits N] [--logit-prob P]
               [--node-threshold X] [--edge-threshold X] [--logit-tokens IDS]
               [--logit-diff A:B,...] [--max-feature-nodes N --batch K]
      prints the graph as JSON: nodes (kind, layer, feature, pos, act, pre,
      bias, influence, keep), adj (rows: targets, columns: sources), edge
      keep mask as a list of [target, source] pairs.
  trace_ref.py intervene MODEL DICTSET IDS SPEC...
      prints {"clean": logits, "logits": logits} of the last position, the
      replacement model re-run with each SPEC (tc<l>.f<i>@<t>=V or *F).
  trace_ref.py strongest LAYER@POS... < CIRC.jsonl
      the most active feature at each layer and position of circ-trace's
      --json output, by name.
  trace_ref.py check-intervene CIRC.jsonl REF.json K ANSWER WRONG
      checks circ-trace --intervene --top-k K --answer ANSWER --wrong WRONG
      --json output against intervene's: logits within 1e-4 (relative above
      1), probabilities within 1e-5, the metric within 1e-4, and the
      interventions change the logits.
  trace_ref.py compare CIRC.jsonl REF.json [--tol X]
      compares circ-trace --all-edges --json output with the reference:
      the node list (kinds, layers, features, positions) equal; every
      activation, pre-activation, bias and edge weight within X (default
      1e-4) relative to the largest of its target's |pre|, |bias| and
      |weights| (circ computes in float32); the kept nodes and edges equal, except at most 0.5% of
      edges whose score is within 1e-3 of the threshold; exactness (incoming
      edges + bias = pre) in both within X.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dict_ref import load_set  # noqa: E402
from gpt2_ref import load_model  # noqa: E402
from stio import write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)


def opts(argv, d):
    o = dict(d)
    for i in range(0, len(argv), 2):
        o[argv[i][2:].replace("-", "_")] = argv[i + 1]
    return o


def make_model(d, argv):
    o = opts(argv, {"layers": "2", "embd": "32", "heads": "4", "vocab": "50", "ctx": "16",
                    "seed": "0", "std": "0.2"})
    L, C, H, V, P = (int(o[k]) for k in ("layers", "embd", "heads", "vocab", "ctx"))
    s = float(o["std"])
    rs = np.random.RandomState(int(o["seed"]))
    t = {"transformer.wte.weight": rs.normal(0, s, (V, C)),
         "transformer.wpe.weight": rs.normal(0, s, (P, C))}
    for l in range(L):
        p = "transformer.h.%d." % l
        t[p + "ln_1.weight"] = 1 + rs.normal(0, 0.1, C)
        t[p + "ln_1.bias"] = rs.normal(0, 0.05, C)
        t[p + "attn.c_attn.weight"] = rs.normal(0, s, (C, 3 * C))
        t[p + "attn.c_attn.bias"] = rs.normal(0, 0.05, 3 * C)
        t[p + "attn.c_proj.weight"] = rs.normal(0, s / 2, (C, C))
        t[p + "attn.c_proj.bias"] = rs.normal(0, 0.05, C)
        t[p + "ln_2.weight"] = 1 + rs.normal(0, 0.1, C)
        t[p + "ln_2.bias"] = rs.normal(0, 0.05, C)
        t[p + "mlp.c_fc.weight"] = rs.normal(0, s, (C, 4 * C))
        t[p + "mlp.c_fc.bias"] = rs.normal(0, 0.05, 4 * C)
        t[p + "mlp.c_proj.weight"] = rs.normal(0, s / 2, (4 * C, C))
        t[p + "mlp.c_proj.bias"] = rs.normal(0, 0.05, C)
    t["transformer.ln_f.weight"] = 1 + rs.normal(0, 0.1, C)
    t["transformer.ln_f.bias"] = rs.normal(0, 0.05, C)
    os.makedirs(d, exist_ok=True)
    json.dump({"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": C, "vocab_size": V,
               "n_positions": P, "n_ctx": P, "layer_norm_epsilon": 1e-5,
               "activation_function": "gelu_new"}, open(d + "/config.json", "w"))
    write_safetensors(d + "/model.safetensors", t)


def centered(x):
    return x - x.mean(-1, keepdim=True)


def inv_sigma(x, eps):
    return 1 / torch.sqrt((centered(x) ** 2).mean(-1, keepdim=True) + eps)


def gelu_new(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def hook_kind(d):
    point = d.hook_in.split(".", 2)[2]
    if point in ("hook_resid_mid", "hook_mlp_in"):
        return "resid"
    if point == "mlp.hook_in" or (point == "ln2.hook_normalized" and not d.fold_ln):
        return "norm_wb"
    if point == "ln2.hook_normalized":
        return "norm"
    raise SystemExit("transcoder input hook %s not supported" % d.hook_in)


def clean_run(model_dir, set_dir, ids):
    """The prompt's forward: frozen patterns and scales, activations, errors."""
    cfg, w = load_model(model_dir)
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    tok = torch.tensor(ids)
    T = len(ids)
    tcs = [None] * L
    for d in load_set(set_dir):
        tcs[int(d.hook_out.split(".")[1])] = d

    def p(l, k):
        return w["h.%d.%s" % (l, k)]

    x = w["wte.weight"][tok] + w["wpe.weight"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    frozen = []
    acts, errs = [], []
    for l in range(L):
        s1 = inv_sigma(x, eps)
        h = centered(x) * s1 * p(l, "ln_1.weight") + p(l, "ln_1.bias")
        q, k, v = (h @ p(l, "attn.c_attn.weight") + p(l, "attn.c_attn.bias")).split(C, -1)
        q, k, v = (a.view(T, H, D).transpose(0, 1) for a in (q, k, v))
        A = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(mask, -math.inf), -1)
        x = x + (A @ v).transpose(0, 1).reshape(T, C) @ p(l, "attn.c_proj.weight") + p(l, "attn.c_proj.bias")
        s2 = inv_sigma(x, eps)
        nrm = centered(x) * s2
        mo = gelu_new((nrm * p(l, "ln_2.weight") + p(l, "ln_2.bias")) @ p(l, "mlp.c_fc.weight")
                      + p(l, "mlp.c_fc.bias")) @ p(l, "mlp.c_proj.weight") + p(l, "mlp.c_proj.bias")
        d = tcs[l]
        if d is None:
            acts.append(None)
            errs.append(mo)
        else:
            kind = hook_kind(d)
            xin = {"resid": x, "norm": nrm,
                   "norm_wb": nrm * p(l, "ln_2.weight") + p(l, "ln_2.bias")}[kind]
            f = d.encode(xin)
            acts.append(f)
            errs.append(mo - d.decode(f, xin))
        frozen.append((s1, A, s2))
        x = x + mo
    sf = inv_sigma(x, eps)
    logits = (centered(x) * sf * w["ln_f.weight"] + w["ln_f.bias"]) @ w["lm_head.weight"].T
    return dict(cfg=cfg, w=w, p=p, L=L, H=H, C=C, D=D, T=T, tok=tok, tcs=tcs, frozen=frozen,
                acts=acts, errs=errs, sf=sf, logits=logits)


def frozen_attn(r, l, x):
    """x plus layer l's attention with the frozen pattern and ln_1 scale."""
    p, C, H, D, T = r["p"], r["C"], r["H"], r["D"], r["T"]
    s1, A, _ = r["frozen"][l]
    h = centered(x) * s1 * p(l, "ln_1.weight") + p(l, "ln_1.bias")
    v = (h @ p(l, "attn.c_attn.weight")[:, 2 * C:] + p(l, "attn.c_attn.bias")[2 * C:])
    v = v.view(T, H, D).transpose(0, 1)
    return x + (A @ v).transpose(0, 1).reshape(T, C) @ p(l, "attn.c_proj.weight") + p(l, "attn.c_proj.bias")


def tc_input(r, l, x):
    p, d = r["p"], r["tcs"][l]
    nrm = centered(x) * r["frozen"][l][2]
    return {"resid": x, "norm": nrm,
            "norm_wb": nrm * p(l, "ln_2.weight") + p(l, "ln_2.bias")}[hook_kind(d)]


def final_logits(r, x):
    w = r["w"]
    return (centered(x[-1]) * r["sf"][-1] * w["ln_f.weight"] + w["ln_f.bias"]) @ w["lm_head.weight"].T


def intervene(argv):
    """The replacement model re-run with features set (=) or scaled (*):
    errors, patterns and scales frozen, later features recomputed."""
    model, dset, ids = argv[:3]
    ivs = []
    for spec in argv[3:]:
        m = re.fullmatch(r"tc(\d+)\.f(\d+)@(\d+)([=*])(.+)", spec)
        ivs.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), float(m.group(5))))
    r = clean_run(model, dset, [int(i) for i in ids.split(",")])
    w, T = r["w"], r["T"]
    x = w["wte.weight"][r["tok"]] + w["wpe.weight"][:T]
    for l in range(r["L"]):
        x = frozen_attn(r, l, x)
        d = r["tcs"][l]
        if d is not None:
            xin = tc_input(r, l, x)
            f = d.encode(xin)
            for (il, fi, t, op, v) in ivs:
                if il == l:
                    f[t, fi] = f[t, fi] * v if op == "*" else v
            x = x + d.decode(f, xin)
        x = x + r["errs"][l]
    json.dump({"clean": r["logits"][-1].tolist(), "logits": final_logits(r, x).tolist()}, sys.stdout)


LOGIT_TOKENS = None  # graph --logit-tokens: the targets given by id
LOGIT_DIFFS = None  # graph --logit-diff: the targets logit[a] - logit[b], pairs (a, b)


def top_logits(logits, max_logits, logit_prob):
    """circuit-tracer's logit targets: the most probable, until their summed
    probability reaches logit_prob (at most max_logits), or the tokens
    given (LOGIT_TOKENS, in their order): ids, probabilities."""
    probs = torch.softmax(logits, -1)
    if LOGIT_DIFFS is not None:  # circuit-tracer's custom targets, weight 1
        return list(LOGIT_DIFFS), torch.ones(len(LOGIT_DIFFS), dtype=probs.dtype)
    if LOGIT_TOKENS is not None:
        i = torch.tensor(LOGIT_TOKENS)
        return i, probs[i]
    top_p, top_i = torch.topk(probs, min(max_logits, probs.shape[0]))
    cut = int((torch.cumsum(top_p, 0) < logit_prob).sum()) + 1
    return top_i[:cut], top_p[:cut]


def assemble(replacement, e0, acts, errs, ids, top_i, top_p):
    """The graph of a replacement model given as replacement(emb, fs, es) ->
    (per-layer pre-activations or None, demeaned logits), whose leaves are
    the token embeddings e0 (T, C), each layer's activations (None: no
    transcoder) and errors: the node list and the adjacency, one
    autograd.grad per target; biases from the model with every leaf zero."""
    L, T = len(acts), len(ids)
    emb = e0.clone().requires_grad_(True)
    fs = [(torch.zeros(T, 1) if a is None else a.clone()).requires_grad_(True) for a in acts]
    es = [e.clone().requires_grad_(True) for e in errs]
    pres, dl = replacement(emb, fs, es)
    with torch.no_grad():
        zpres, zdl = replacement(torch.zeros_like(emb), [torch.zeros_like(f) for f in fs],
                                 [torch.zeros_like(e) for e in es])

    feats = []  # (layer, pos, feature) in circuit-tracer's order
    for l in range(L):
        if acts[l] is not None:
            for t, f in torch.nonzero(acts[l]).tolist():
                feats.append((l, t, f))
    nodes = [{"kind": "feature", "layer": l, "feature": f, "pos": t,
              "act": float(acts[l][t, f]), "pre": float(pres[l][t, f]),
              "bias": float(zpres[l][t, f])} for l, t, f in feats]
    nodes += [{"kind": "error", "layer": l, "feature": -1, "pos": t, "act": 0.0}
              for l in range(L) for t in range(T)]
    nodes += [{"kind": "input", "layer": -1, "feature": ids[t], "pos": t, "act": 0.0}
              for t in range(T)]
    def value(v, i):  # a target's value in the logits v: a logit or a difference
        return v[i[0]] - v[i[1]] if isinstance(i, tuple) else v[i]

    nodes += [{"kind": "logit", "layer": -1, "pos": T - 1, "act": float(pp),
               "pre": float(value(dl, i)), "bias": float(value(zdl, i)),
               **({"feature": i[0], "minus": i[1]} if isinstance(i, tuple) else {"feature": int(i)})}
              for i, pp in zip(top_i, top_p)]
    n, nf = len(nodes), len(feats)
    adj = torch.zeros(n, n)
    targets = [pres[l][t, f] for l, t, f in feats] + [value(dl, i) for i in top_i]
    for r, y in enumerate(targets):
        row = r if r < nf else n - len(top_i) + (r - nf)
        g = torch.autograd.grad(y, [emb] + fs + es, retain_graph=True, allow_unused=True)
        ge, gf, gerr = g[0], g[1:1 + L], g[1 + L:]
        for j, (l, t, f) in enumerate(feats):
            if gf[l] is not None:
                adj[row, j] = gf[l][t, f] * acts[l][t, f]
        for l in range(L):
            if gerr[l] is not None:
                adj[row, nf + l * T:nf + (l + 1) * T] = (gerr[l] * errs[l]).sum(-1)
        if ge is not None:
            adj[row, nf + L * T:nf + L * T + T] = (ge * e0).sum(-1)
    return nodes, adj, len(top_i), T, nf


def build(model_dir, set_dir, ids, max_logits, logit_prob):
    r = clean_run(model_dir, set_dir, ids)
    w, p, L, T, tcs, acts, errs, tok = (r[k] for k in ("w", "p", "L", "T", "tcs", "acts", "errs", "tok"))
    top_i, top_p = top_logits(r["logits"][-1], max_logits, logit_prob)

    # the replacement model as a function of its leaves
    def replacement(emb, fs, es):
        x = emb + w["wpe.weight"][:T]
        pres = []
        for l in range(L):
            x = frozen_attn(r, l, x)
            d = tcs[l]
            if d is None:
                pres.append(None)
                x = x + es[l]
                continue
            pres.append((tc_input(r, l, x) * d.scale) @ d.w["W_enc"] + d.w["b_enc"])
            x = x + (fs[l] @ d.w["W_dec"] + d.w["b_dec"]) / d.scale + es[l]
        lg = final_logits(r, x)
        return pres, lg - lg.mean()

    return assemble(replacement, w["wte.weight"][tok], acts, errs, ids, top_i, top_p)


# ---- pruning, from circuit-tracer's documented algorithm ----

def normalise(a):
    a = a.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def series(a, wgt):
    cur = wgt @ a
    tot = cur.clone()
    for _ in range(a.shape[0] + 1):
        if not cur.any():
            return tot
        cur = cur @ a
        tot += cur
    raise SystemExit("influence does not vanish")


def threshold(scores, th):
    s = torch.sort(scores, descending=True).values
    cum = torch.cumsum(s, 0) / s.sum()
    i = int(torch.searchsorted(cum, torch.tensor(th)))
    return s[min(i, len(s) - 1)]


def prune(adj, n_logit, n_tok, nf, probs, node_th, edge_th):
    n = adj.shape[0]
    wgt = torch.zeros(n)
    wgt[n - n_logit:] = probs
    infl = series(normalise(adj), wgt)
    keep = infl >= threshold(infl, node_th)
    keep[n - n_logit - n_tok:] = True
    pr = adj.clone()
    pr[~keep] = 0
    pr[:, ~keep] = 0
    na = normalise(pr)
    sc = na * (series(na, wgt) + wgt)[:, None]
    eth = threshold(sc.flatten(), edge_th)
    ek = sc >= eth
    ns = n - n_logit - n_tok
    while True:
        old = keep.clone()
        keep[:ns] &= ek[:, :ns].any(0)
        keep[:nf] &= ek[:nf].any(1)
        if torch.equal(old, keep):
            break
        ek[~keep] = False
        ek[:, ~keep] = False
    order = torch.argsort(infl, descending=True)
    cum = torch.zeros(n)
    cum[order] = torch.cumsum(infl[order], 0) / infl.sum()
    return keep, ek & keep[:, None] & keep[None, :], cum, sc, eth


def select(nodes, adj, nl, nf, m, batch):
    """circuit-tracer's max_feature_nodes, from its documented algorithm:
    the logits' rows first; then, until m features are visited, rank the
    features by their influence computed from the rows visited so far
    (|row| normalised to sum 1, at least 1e-8; from the logits'
    probabilities, repeatedly p <- p A' summed until it vanishes;
    descending, ties by node order) and visit the best unvisited, up to
    4 batches at a time. The graph keeps the visited features; a target's
    edges from the others are summed into its "dropped"."""
    n = len(nodes)
    rows = list(range(n - nl, n))  # node of each visited row, in order
    seen = set()
    probs = torch.tensor([nd["act"] for nd in nodes[n - nl:]])
    while len(seen) < m:
        a = adj[rows].abs()
        a = a / a.sum(1, keepdim=True).clamp(min=1e-8)
        p = torch.zeros(n)
        p[n - nl:] = probs
        infl = torch.zeros(n)
        while True:
            p = p[rows] @ a
            if not p.any():
                break
            infl += p
        order = sorted(range(nf), key=lambda i: (-float(infl[i]), i))
        want = min(4 * batch, m - len(seen))
        got = [i for i in order if i not in seen][:want]
        seen.update(got)
        rows += got
    keep = [i for i in range(n) if i >= nf or i in seen]
    drop = [i for i in range(nf) if i not in seen]
    out = []
    for i in keep:
        nd = dict(nodes[i])
        if "pre" in nd:
            nd["dropped"] = float(adj[i, drop].sum())
        out.append(nd)
    return out, adj[keep][:, keep], len(seen)


def graph(argv, build_fn=None):
    """Prints the graph (build_fn: a family's build, default GPT-2's)."""
    model, dset, ids = argv[:3]
    o = opts(argv[3:], {"max_logits": "10", "logit_prob": "0.95", "node_threshold": "0.8",
                        "edge_threshold": "0.98", "max_feature_nodes": "0", "batch": "256",
                        "logit_tokens": "", "logit_diff": ""})
    global LOGIT_TOKENS, LOGIT_DIFFS
    if o["logit_tokens"]:
        LOGIT_TOKENS = [int(t) for t in o["logit_tokens"].split(",")]
    if o["logit_diff"]:
        LOGIT_DIFFS = [tuple(int(t) for t in p.split(":")) for p in o["logit_diff"].split(",")]
    nodes, adj, nl, T, nf = (build_fn or build)(model, dset, [int(i) for i in ids.split(",")],
                                                int(o["max_logits"]), float(o["logit_prob"]))
    m = int(o["max_feature_nodes"])
    if 0 < m < nf:
        nodes, adj, nf = select(nodes, adj, nl, nf, m, int(o["batch"]))
    probs = torch.tensor([nd["act"] for nd in nodes[len(nodes) - nl:]])
    keep, ek, cum, sc, eth = prune(adj, nl, T, nf, probs, float(o["node_threshold"]),
                                   float(o["edge_threshold"]))
    for i, nd in enumerate(nodes):
        nd["keep"] = bool(keep[i])
        nd["influence"] = float(cum[i])
    near = ((sc - eth).abs() <= 1e-3 * eth).nonzero().tolist()
    json.dump({"nodes": nodes, "adj": adj.tolist(), "edge_keep": ek.nonzero().tolist(),
               "near_threshold": near}, sys.stdout)


def compare(argv):
    cpath, rpath = argv[:2]
    tol = float(opts(argv[2:], {"tol": "1e-4"})["tol"])
    ref = json.load(open(rpath))
    rn, radj = ref["nodes"], torch.tensor(ref["adj"])
    lines = [json.loads(l) for l in open(cpath)]
    hdr = lines[0]
    assert hdr["kind"] == "attribution-graph", hdr["kind"]
    cn = [r for r in lines[1:] if "node" in r]
    ce = [r for r in lines[1:] if "edge" in r]
    bad = []
    if len(cn) != len(rn):
        raise SystemExit("node count: circ %d, reference %d" % (len(cn), len(rn)))
    n = len(rn)
    for i, (c, r) in enumerate(zip(cn, rn)):
        same = (c["kind"] == r["kind"] and c["layer"] == r["layer"] and c["pos"] == r["pos"]
                and c.get("feature", c.get("token")) == r["feature"]
                and c.get("minus", -1) == r.get("minus", -1))
        if not same:
            raise SystemExit("node %d: circ %s, reference %s" % (i, c, r))
        a = c.get("activation", c.get("prob", c.get("target_weight")))
        if abs(a - r["act"]) > tol * max(1, abs(r["act"])):
            bad.append("node %s: activation %g vs %g" % (c["node"], a, r["act"]))
        for k in ("pre", "bias", "dropped"):
            if k in r and abs(c[k] - r[k]) > tol * max(1, abs(r["pre"])):
                bad.append("node %s: %s %g vs %g" % (c["node"], k, c[k], r[k]))
    cadj = torch.zeros(n, n)
    for e in ce:
        cadj[e["target"], e["source"]] = e["weight"]
    scale = radj.abs().amax(1, keepdim=True)
    for i, r in enumerate(rn):
        if "pre" in r:
            scale[i] = max(float(scale[i]), abs(r["pre"]), abs(r["bias"]))
    scale = scale.clamp(min=1e-12)
    err = ((cadj - radj).abs() / scale).amax()
    if err > tol:
        i, j = divmod(int(((cadj - radj).abs() / scale).argmax()), n)
        bad.append("edge %s->%s: %g vs %g (relative to its row's largest %g)" % (
            cn[j]["node"], cn[i]["node"], cadj[i, j], radj[i, j], scale[i, 0]))
    for name, adj, nodes in (("circ", cadj, cn), ("reference", radj, rn)):
        for i, nd in enumerate(nodes):
            if "pre" in nd:
                s = float(adj[i].sum()) + nd["bias"] + nd.get("dropped", 0.0)
                if abs(s - nd["pre"]) > tol * max(1, abs(nd["pre"])):
                    bad.append("%s: node %d: edges + bias %g != pre %g" % (name, i, s, nd["pre"]))
    kc = [c["keep"] for c in cn]
    kr = [r["keep"] for r in rn]
    nk = sum(a != b for a, b in zip(kc, kr))
    ck = {(e["target"], e["source"]) for e in ce if e["keep"]}
    rk = {tuple(p) for p in ref["edge_keep"]}
    near = {tuple(p) for p in ref["near_threshold"]}
    diff = (ck ^ rk) - near
    if nk:
        bad.append("%d kept nodes differ" % nk)
    if len(diff) > 0.005 * max(1, len(rk)):
        bad.append("%d kept edges differ (of %d)" % (len(diff), len(rk)))
    for c, r in zip(cn, rn):
        if abs(c["influence"] - r["influence"]) > 1e-3:
            bad.append("node %s: influence %g vs %g" % (c["node"], c["influence"], r["influence"]))
            break
    print("nodes %d, features %d, edges %d, kept nodes %d, kept edges %d, max edge error %.3g" % (
        n, hdr["n_features"], len(ce), sum(kc), len(ck), float(err)))
    if bad:
        print("\n".join(bad[:20]))
        sys.exit(1)


def strongest(argv):
    """Prints, for each LAYER@POS, the name of the most active feature there
    in circ-trace's JSON lines (standard input)."""
    ns = [json.loads(l) for l in sys.stdin if '"node"' in l]
    out = []
    for spec in argv:
        l, t = (int(v) for v in spec.split("@"))
        out.append(max((n for n in ns if n["kind"] == "feature" and n["layer"] == l
                        and n["pos"] == t), key=lambda n: n["activation"])["node"])
    print(" ".join(out))


def check_intervene(argv):
    """circ-trace --intervene's record against this script's intervene
    output: K top tokens before and after, logits within 1e-4 (relative
    above 1) and probabilities within 1e-5, the metric logit[ANSWER] -
    logit[WRONG] within 1e-4, and the interventions change the logits."""
    lines = [json.loads(l) for l in open(argv[0])]
    rec, ref = lines[1], json.load(open(argv[1]))
    k, ans, wrong = (int(v) for v in argv[2:5])
    for key, rk in (("top", "logits"), ("clean_top", "clean")):
        lg = ref[rk]
        assert len(rec[key]) == k
        z = sum(math.exp(v - max(lg)) for v in lg)
        for t in rec[key]:
            assert abs(t["logit"] - lg[t["token"]]) < 1e-4 * max(1, abs(lg[t["token"]])), (key, t)
            assert abs(t["p"] - math.exp(lg[t["token"]] - max(lg)) / z) < 1e-5, (key, t)
    assert abs(rec["metric"] - (ref["logits"][ans] - ref["logits"][wrong])) < 1e-4
    assert abs(rec["clean_metric"] - (ref["clean"][ans] - ref["clean"][wrong])) < 1e-4
    assert max(abs(a - b) for a, b in zip(ref["logits"], ref["clean"])) > 1e-3


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "make-model":
        make_model(argv[0], argv[1:])
    elif cmd == "graph":
        graph(argv)
    elif cmd == "intervene":
        intervene(argv)
    elif cmd == "compare":
        compare(argv)
    elif cmd == "strongest":
        strongest(argv)
    elif cmd == "check-intervene":
        check_intervene(argv)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
