#!/usr/bin/python3
"""Receiver gradients of the family test models (tests/data/families), from
an independent float64 PyTorch forward in which every receiver reads its
own input: the residual plus a delta of its own (zero), so that autograd's
gradient at the delta is the receiver's gradient.

    /usr/bin/python3 tests/ref/family_recv.py [DIR]   (default tests/data/families)
    /usr/bin/python3 tests/ref/family_recv.py scores MODEL OUT [grouped] [raw]
        exact and EAP scores of every edge (resample ablation, logit_diff)
        on three random examples: OUT/tokens.jsonl and OUT/ref.json, which
        tests/ref/patch_ref.py compare reads
    /usr/bin/python3 tests/ref/family_recv.py circuit MODEL TOKENS EDGES [grouped] [raw]
        logit_diff of each example with the edges of EDGES ({"edge": name}
        lines) patched: what circ-patch --edges computes (metric_circuit)
    /usr/bin/python3 tests/ref/family_recv.py postnorm MODEL
        circ's head nodes (shares of the post-attention norm's output)
        against EAP-IG's and MIB's (raw, the norm on the receiver's side)
    /usr/bin/python3 tests/ref/family_recv.py outgrad MODEL OUT [grouped]
        receiver gradients when every node has its own output gradient
        (circ_bwd.out_hook): OUT (safetensors) "tokens" I32 (1, T), "grads"
        (R, T, C), receiver i of a stage holding the gradient at its input of
        sum over the stage's nodes u of <g_u, out_u>, g_u[t, c] =
        sin(0.37 u + 0.91 t + 0.13 c + 0.5) rounded to float32 (what
        tests/unit/test_family_outgrad.c gives); the logits' row is zero

Receivers, numbered as circ's topology numbers them (lib/topology.h): per
layer, for each query head h its q, k and v (grouped: the k and v of a
key/value head on the first head of its group only), then the MLP's; the
logits last. A q/k/v receiver's input goes through the block's norm and its
own head's slice of the projection (k and v: the slice of h's group), the
q/k norm (over the head, or over the whole projection of that input), and
RoPE; the MLP's through its norm and the MLP. Parallel blocks (GPT-NeoX):
the MLP reads the block's input.

For each model directory it writes grads.safetensors: "tokens" I32 (1, T),
"w" (T, V) the metric's weights (metric = sum w * logits over every
position), "grads" (R, T, C), and, for grouped-query attention, "grads_grouped"
(R', T, C) for the grouped topology. Seeded: the same file on every run.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families as fam  # noqa: E402
from stio import read_safetensors, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
T = 8


def weights(d):
    """name -> float64 tensor of every file of d (one file or shards)."""
    W = {}
    for f in sorted(os.listdir(d)):
        if f.startswith("model") and f.endswith(".safetensors"):
            for k, v in read_safetensors(os.path.join(d, f), float64=True).items():
                W[k] = torch.from_numpy(v.copy())
    return W


def load(d):
    """The architecture (families.arch_of), tensor names and float64 weights
    of family model d."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    names = fam.HF_NAMES.get(cfg["model_type"], fam.HF_NAMES["default"])
    return fam.arch_of(cfg), names, weights(d)


def ref_tokens(d):
    """d's reference.safetensors and its first sequence's T tokens."""
    ref = read_safetensors(os.path.join(d, "reference.safetensors"))
    return ref, torch.from_numpy(ref["tokens"][0, :T].astype("int64"))


def receivers(a, grouped):
    """[(layer, kind, head)] in circ's order; kind 'q', 'k', 'v', 'mlp', 'logits'."""
    H, K = a["n_head"], a["n_kv_head"]
    per = H // K if grouped else 1
    out = []
    for l in range(a["n_layer"]):
        for h in range(H):
            out.append((l, "q", h))
            if h % per == 0:
                out.append((l, "k", h))
                out.append((l, "v", h))
        out.append((l, "mlp", -1))
    out.append((a["n_layer"], "logits", -1))
    return out


def node_names(a):
    """Upstream nodes in circ's order: input, per layer its heads then its MLP."""
    out = ["input"]
    for l in range(a["n_layer"]):
        out += ["a%d.h%d" % (l, h) for h in range(a["n_head"])] + ["m%d" % l]
    return out


def recv_name(r):
    l, kind, h = r
    return {"q": "a%d.h%d<q>", "k": "a%d.h%d<k>", "v": "a%d.h%d<v>"}[kind] % (l, h) \
        if kind in "qkv" else ("m%d" % l if kind == "mlp" else "logits")


def n_in(a, r):
    """Upstream nodes feeding receiver r (a prefix of the node order)."""
    l, kind, _ = r
    H = a["n_head"]
    if kind == "logits":
        return 1 + a["n_layer"] * (H + 1)
    if kind == "mlp" and not a["parallel_residual"]:
        return 1 + l * (H + 1) + H
    return 1 + l * (H + 1)


def head_proj(a, W, p, xi, kind, h):
    """Head h's D values of kind ('q', 'k', 'v') for input xi (T, d) of the
    layer of prefix p: the block's norm (none with norms after the blocks),
    its slice of the projection (k and v: its group's), the q/k norm."""
    d, H, D, K = a["n_embd"], a["n_head"], a["head_dim"], a["n_kv_head"]
    eps, off, per = a["norm_eps"], a["norm_offset"], H // K
    j = "qkv".index(kind)
    if a["norm_placement"] != "post":
        key = p + "input_layernorm"
        if a["norm"] == "layernorm":
            xi = fam.layernorm(xi, W[key + ".weight"], W[key + ".bias"], eps)
        else:
            xi = fam.rms(xi, W[key + ".weight"], eps, off)
    if a["model_type"] == "gpt_neox":
        y = xi @ W[p + "attention.query_key_value.weight"].view(H, 3, D, d)[h, j].T
        if a["bias_qkv"]:
            y = y + W[p + "attention.query_key_value.bias"].view(H, 3, D)[h, j]
        return y
    Wm = W[p + "self_attn.%s_proj.weight" % kind]
    b = W.get(p + "self_attn.%s_proj.bias" % kind) if a["bias_qkv"] else None
    y = xi @ Wm.T + (b if b is not None else 0)
    g = h if kind == "q" else h // per
    if a["qk_norm"] == "whole" and kind != "v":
        y = fam.rms(y, W[p + "self_attn.%s_norm.weight" % kind], eps, off)
    y = y[:, g * D:(g + 1) * D]
    if a["qk_norm"] == "per_head" and kind != "v":
        y = fam.rms(y, W[p + "self_attn.%s_norm.weight" % kind], eps, off)
    return y


def forward(a, W, names, tokens, recv, deltas, grouped, patch=None, ref=None, outs=None,
            raw_heads=False):
    """Logits (T, V); receiver i's input is the residual + deltas[i] (None:
    zero), plus ref[u] - outs[u] for each upstream u in patch[i]. outs, when
    a list, receives the node outputs (the patched run's).

    raw_heads (norms after the blocks only): EAP-IG's and MIB's nodes on
    TransformerLens (hannamw/EAP-IG src/eap/evaluate.py, evaluate_graph with
    use_normalization_before_and_after): a head's output is its own o_h,
    before the post-attention norm, and a receiver with patched heads of
    layer l reads post_norm_l(A_l + sum (ref_h - o_h)) - post_norm_l(A_l)
    on top of the residual, A_l the layer's summed heads in this run."""
    patch = patch or {}
    post = {}  # layer -> (A_l, its post norm), for raw_heads
    outs = [None] * (1 + a["n_layer"] * (a["n_head"] + 1)) if outs is None else outs
    while len(outs) < 1 + a["n_layer"] * (a["n_head"] + 1):
        outs.append(None)
    d, H, D, K = a["n_embd"], a["n_head"], a["head_dim"], a["n_kv_head"]
    eps, off = a["norm_eps"], a["norm_offset"]
    per = H // K
    pos = torch.arange(len(tokens))
    idx = {r: i for i, r in enumerate(recv)}
    neox = a["model_type"] == "gpt_neox"

    def norm(x, key):
        if a["norm"] == "layernorm":
            return fam.layernorm(x, W[key + ".weight"], W[key + ".bias"], eps)
        return fam.rms(x, W[key + ".weight"], eps, off)

    def inp(x, l, kind, h):
        if grouped and kind in ("k", "v"):
            h = h - h % per
        i = idx[(l, kind, h)]
        if deltas is not None:
            x = x + deltas[i]
        moved = {}
        for u in patch.get(i, ()):
            lu = (u - 1) // (a["n_head"] + 1)
            if raw_heads and u > 0 and (u - 1) % (a["n_head"] + 1) < a["n_head"]:
                moved[lu] = moved.get(lu, 0) + (ref[u] - outs[u])
            else:
                x = x + (ref[u] - outs[u])
        for lu, dA in moved.items():
            A, pn = post[lu]
            x = x + pn(A + dA) - pn(A)
        return x

    x = W[names["embed"]][tokens] * a["embed_scale"]
    outs[0] = x
    for l in range(a["n_layer"]):
        p = names["layer"] % l
        local = l in a["local_layers"]

        def proj(xi, kind, h):
            return head_proj(a, W, p, xi, kind, h)

        theta, scaling = a["rope_theta"], a["rope_scaling"]
        if local and a["rope_local_theta"]:
            theta, scaling = a["rope_local_theta"], None
        zs = []
        for h in range(H):
            q = fam.rope(proj(inp(x, l, "q", h), "q", h), pos, a["rotary_dim"], theta, scaling)
            k = fam.rope(proj(inp(x, l, "k", h), "k", h), pos, a["rotary_dim"], theta, scaling)
            v = proj(inp(x, l, "v", h), "v", h)
            s = fam.capped_masked(a, q @ k.T * a["attn_scale"], pos, local)
            zs.append(torch.softmax(s, -1) @ v)
        z = torch.cat(zs, -1)
        ow = W[p + ("attention.dense" if neox else "self_attn.o_proj") + ".weight"]
        ob = W.get(p + ("attention.dense" if neox else "self_attn.o_proj") + ".bias")
        heads = [zs[h] @ ow[:, h * D:(h + 1) * D].T for h in range(H)]
        attn = sum(heads) + (ob if a["bias_o"] else 0)
        if a["norm_placement"] in ("pre_post", "post"):
            # each head's share of the normed sum: its output times the
            # norm's scale (there is no o_proj bias in these families)
            scale = torch.rsqrt((attn * attn).mean(-1, keepdim=True) + eps) * \
                (off + W[p + "post_attention_layernorm.weight"])
            post[l] = (attn, lambda t, key=p + "post_attention_layernorm": norm(t, key))
            if not raw_heads:
                heads = [o * scale for o in heads]
            attn = norm(attn, p + "post_attention_layernorm")
        for h in range(H):
            outs[1 + l * (H + 1) + h] = heads[h]
        m_in = inp(x, l, "mlp", -1)  # parallel blocks: the block's input
        if not a["parallel_residual"]:
            x = x + attn
            m_in = inp(x, l, "mlp", -1)
        if neox:
            h1 = norm(m_in, p + "post_attention_layernorm")
            u = fam.act(a["activation"], h1 @ W[p + "mlp.dense_h_to_4h.weight"].T +
                        W[p + "mlp.dense_h_to_4h.bias"])
            mlp = u @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
        else:
            if a["norm_placement"] == "pre":
                h1 = norm(m_in, p + "post_attention_layernorm")
            elif a["norm_placement"] == "pre_post":
                h1 = norm(m_in, p + "pre_feedforward_layernorm")
            else:
                h1 = m_in

            def lin(t, key):
                y = t @ W[p + key + ".weight"].T
                return y + W[p + key + ".bias"] if a["bias_mlp"] else y
            g = fam.act(a["activation"], lin(h1, "mlp.gate_proj"))
            mlp = lin(g * lin(h1, "mlp.up_proj"), "mlp.down_proj")
            if a["norm_placement"] in ("pre_post", "post"):
                mlp = norm(mlp, p + "post_feedforward_layernorm")
        outs[1 + l * (H + 1) + H] = mlp
        if a["parallel_residual"]:
            x = x + attn + mlp
        else:
            x = x + mlp
    x = inp(x, a["n_layer"], "logits", -1)
    x = norm(x, names["final_norm"])
    logits = x @ W[names["embed"] if a["tied_embeddings"] else names["lm_head"]].T
    if a["final_softcap"]:
        logits = torch.tanh(logits / a["final_softcap"]) * a["final_softcap"]
    return logits


def grads(a, W, names, tokens, w, grouped):
    recv = receivers(a, grouped)
    deltas = [torch.zeros(len(tokens), a["n_embd"], requires_grad=True) for _ in recv]
    m = (forward(a, W, names, tokens, recv, deltas, grouped) * w).sum()
    m.backward()
    return torch.stack([dl.grad for dl in deltas])


def post_jvp(a, W, names, l, A, v):
    """The Jacobian of layer l's norm after attention at A, applied to v."""
    key = names["layer"] % l + "post_attention_layernorm.weight"
    return torch.autograd.functional.jvp(
        lambda t: fam.rms(t, W[key], a["norm_eps"], a["norm_offset"]), A, v)[1]


def scores(d, out, grouped, n=3, T=7, seed=5, raw=False):
    """Exact and EAP scores (resample ablation, logit_diff) of every edge of
    family model d on n random examples: writes out/tokens.jsonl and
    out/ref.json (the layout tests/ref/patch_ref.py compare reads). raw:
    raw head nodes (forward's raw_heads; circ's --head-nodes raw), a head
    edge's EAP taking the norm's Jacobian at the clean sum times its raw
    difference."""
    a, names, W = load(d)
    V = a["vocab_size"]
    recv = receivers(a, grouped)
    nodes = node_names(a)
    edges = [(nodes[u] + "->" + recv_name(r), i, u) for i, r in enumerate(recv)
             for u in range(n_in(a, r))]
    g = torch.Generator().manual_seed(seed)
    exs = []
    for i in range(n):
        clean = torch.randint(0, V, (T,), generator=g).tolist()
        corrupt = list(clean)
        for j in torch.randperm(T, generator=g)[: max(1, T // 3)].tolist():
            corrupt[j] = int(torch.randint(0, V, (1,), generator=g))
        ans, wrong = torch.randperm(V, generator=g)[:2].tolist()
        exs.append({"id": i, "clean": clean, "corrupt": corrupt, "pos": T - 1,
                    "answer": [ans], "wrong": [wrong]})
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokens.jsonl"), "w") as f:
        f.write(json.dumps({"format": "circ", "version": 1, "kind": "tokens",
                            "metric": "logit_diff"}) + "\n")
        for ex in exs:
            rec = dict(ex)
            rec["clean"] = {"dtype": "i32", "shape": [T], "data": ex["clean"]}
            rec["corrupt"] = {"dtype": "i32", "shape": [T], "data": ex["corrupt"]}
            f.write(json.dumps(rec) + "\n")
    exact = [0.0] * len(edges)
    eap = [0.0] * len(edges)

    def loss(lg, ex):  # -logit_diff at the last position
        return -(lg[ex["pos"], ex["answer"][0]] - lg[ex["pos"], ex["wrong"][0]])
    for ex in exs:
        tc, tr = torch.tensor(ex["clean"]), torch.tensor(ex["corrupt"])
        oc, orf = [], []
        with torch.no_grad():
            lc = forward(a, W, names, tc, recv, None, grouped, outs=oc, raw_heads=raw)
            forward(a, W, names, tr, recv, None, grouped, outs=orf, raw_heads=raw)
            base = loss(lc, ex).item()
            for ei, (_, ri, u) in enumerate(edges):
                lp = forward(a, W, names, tc, recv, None, grouped, patch={ri: [u]}, ref=orf,
                             raw_heads=raw)
                exact[ei] += loss(lp, ex).item() - base
        deltas = [torch.zeros(T, a["n_embd"], requires_grad=True) for _ in recv]
        loss(forward(a, W, names, tc, recv, deltas, grouped), ex).backward()
        H = a["n_head"]
        diff = [orf[u] - oc[u] for u in range(len(oc))]
        if raw:
            for l in range(a["n_layer"]):
                hs = range(1 + l * (H + 1), 1 + l * (H + 1) + H)
                A = sum(oc[u] for u in hs)
                for u in hs:
                    diff[u] = post_jvp(a, W, names, l, A, diff[u])
        for ei, (_, ri, u) in enumerate(edges):
            eap[ei] += (diff[u] * deltas[ri].grad).sum().item()
    ref = {"metric": "logit_diff", "n_edges": len(edges), "edges": [e[0] for e in edges],
           "exact": [v / n for v in exact], "eap": [v / n for v in eap]}
    json.dump(ref, open(os.path.join(out, "ref.json"), "w"))
    print("%s: %d edges" % (d, len(edges)))


def circuit(d, tokens, edges, grouped, raw):
    """logit_diff of each example of token stream `tokens` (JSON lines, as
    scores writes it) with the edges named in `edges` (JSON lines of
    {"edge": name}) patched to the corrupted run's outputs, the others
    kept: one forward in which every receiver reads its own input."""
    a, names, W = load(d)
    recv = receivers(a, grouped)
    nodes = node_names(a)
    index = {nodes[u] + "->" + recv_name(r): (i, u) for i, r in enumerate(recv)
             for u in range(n_in(a, r))}
    patch = {}
    for line in open(edges):
        rec = json.loads(line)
        if "edge" in rec:
            i, u = index[rec["edge"]]
            patch.setdefault(i, []).append(u)
    out = []
    for line in open(tokens):
        ex = json.loads(line)
        if "clean" not in ex:
            continue
        tc = torch.tensor(ex["clean"]["data"])
        tr = torch.tensor(ex["corrupt"]["data"])
        with torch.no_grad():
            orf = []
            forward(a, W, names, tr, recv, None, grouped, outs=orf, raw_heads=raw)
            lg = forward(a, W, names, tc, recv, None, grouped, patch=patch, ref=orf,
                         raw_heads=raw)
        p = ex["pos"]
        out.append((lg[p, ex["answer"][0]] - lg[p, ex["wrong"][0]]).item())
    return out


def postnorm(d, n=2, T=7, seed=5, epss=(1.0, 0.01)):
    """The two definitions of a head's node output on a family with norms
    after the blocks (model d), resample ablation, logit_diff, n random
    examples, every edge out of a head and the MLP and input edges into the
    logits. Node outputs "share" (circ's: o_h rs(A) (off + w), summing to
    the normed attention output) or "raw" (EAP-IG's and MIB's: o_h, the
    norm applied on the receiver's side). For each eps (every node's
    reference output moved to clean + eps (ref - clean), in the
    definition's own outputs) it gives the exact scores of both, and three
    EAP scores: share (its diffs . receiver gradient), eapig (raw diffs .
    receiver gradient: what EAP-IG's attribute.py computes) and lin (the
    post norm's Jacobian at the clean sum times the raw diff, . receiver
    gradient: the first-order term of raw patching). Returns a dict."""
    a, names, W = load(d)
    V, H = a["vocab_size"], a["n_head"]
    recv = receivers(a, False)
    is_head = [u > 0 and (u - 1) % (H + 1) < H for u in range(1 + a["n_layer"] * (H + 1))]
    edges = [(i, u) for i, r in enumerate(recv) for u in range(n_in(a, r))
             if is_head[u] or r[1] == "logits"]
    g = torch.Generator().manual_seed(seed)
    res = {e: {"exact_share": [0.0] * len(edges), "exact_raw": [0.0] * len(edges),
               "eap_share": [0.0] * len(edges), "eap_eapig": [0.0] * len(edges),
               "eap_lin": [0.0] * len(edges)} for e in epss}
    layer_gap = 0.0

    def loss(lg, ex):
        return -(lg[T - 1, ex[2]] - lg[T - 1, ex[3]])
    for _ in range(n):
        clean = torch.randint(0, V, (T,), generator=g)
        corrupt = clean.clone()
        for j in torch.randperm(T, generator=g)[: max(1, T // 3)].tolist():
            corrupt[j] = int(torch.randint(0, V, (1,), generator=g))
        ans, wrong = torch.randperm(V, generator=g)[:2].tolist()
        ex = (clean, corrupt, ans, wrong)
        outs = {}
        with torch.no_grad():
            for raw in (False, True):
                oc, orf = [], []
                lc = forward(a, W, names, clean, recv, None, False, outs=oc, raw_heads=raw)
                forward(a, W, names, corrupt, recv, None, False, outs=orf, raw_heads=raw)
                outs[raw] = (oc, orf)
            base = loss(lc, ex).item()
            # every head of a layer patched into the logits: the same input
            # under both definitions (each sums to the corrupted normed output)
            for l in range(a["n_layer"]):
                hs = [1 + l * (H + 1) + h for h in range(H)]
                lg = [forward(a, W, names, clean, recv, None, False, patch={len(recv) - 1: hs},
                              ref=outs[raw][1], raw_heads=raw) for raw in (False, True)]
                layer_gap = max(layer_gap, (lg[0] - lg[1]).abs().max().item())
            for eps in epss:
                for raw, key in ((False, "exact_share"), (True, "exact_raw")):
                    oc, orf = outs[raw]
                    ref = [c + eps * (x - c) for c, x in zip(oc, orf)]
                    for ei, (ri, u) in enumerate(edges):
                        lp = forward(a, W, names, clean, recv, None, False, patch={ri: [u]},
                                     ref=ref, raw_heads=raw)
                        res[eps][key][ei] += (loss(lp, ex).item() - base) / n
        deltas = [torch.zeros(T, a["n_embd"], requires_grad=True) for _ in recv]
        loss(forward(a, W, names, clean, recv, deltas, False), ex).backward()
        (sc, sr), (rc, rr) = outs[False], outs[True]
        attn = {}
        with torch.no_grad():
            forward(a, W, names, clean, recv, None, False, outs=[], raw_heads=True)
        for ei, (ri, u) in enumerate(edges):
            gr = deltas[ri].grad
            s_share = ((sr[u] - sc[u]) * gr).sum().item()
            s_raw = ((rr[u] - rc[u]) * gr).sum().item()
            s_lin = s_raw
            if is_head[u]:
                l = (u - 1) // (H + 1)
                if l not in attn:
                    A = sum(rc[1 + l * (H + 1) + h] for h in range(H))
                    key = names["layer"] % l + "post_attention_layernorm"
                    attn[l] = (A, lambda t, key=key: fam.rms(t, W[key + ".weight"],
                                                            a["norm_eps"], a["norm_offset"]))
                A, pn = attn[l]
                _, jd = torch.autograd.functional.jvp(pn, A, rr[u] - rc[u])
                s_lin = (jd * gr).sum().item()
            for eps in epss:
                res[eps]["eap_share"][ei] += eps * s_share / n
                res[eps]["eap_eapig"][ei] += eps * s_raw / n
                res[eps]["eap_lin"][ei] += eps * s_lin / n

    def rel(x, y):
        return max(abs(p - q) for p, q in zip(x, y)) / max(abs(q) for q in y)
    heads = [ei for ei, (_, u) in enumerate(edges) if is_head[u]]
    other = [ei for ei, (_, u) in enumerate(edges) if not is_head[u]]
    out = {"model": d, "edges": len(edges), "head_edges": len(heads),
           "layer_patch_gap": layer_gap, "eps": list(epss)}
    for eps in epss:
        r = res[eps]
        sh = [r["exact_share"][i] for i in heads]
        rw = [r["exact_raw"][i] for i in heads]
        out[str(eps)] = {
            "exact_share_vs_raw_heads": rel(sh, rw),
            "exact_share_vs_raw_others": max([abs(r["exact_share"][i] - r["exact_raw"][i])
                                              for i in other] or [0.0]),
            "eap_share_vs_exact_share": rel(r["eap_share"], r["exact_share"]),
            "eap_eapig_vs_exact_raw": rel(r["eap_eapig"], r["exact_raw"]),
            "eap_lin_vs_exact_raw": rel(r["eap_lin"], r["exact_raw"]),
        }
    return out


def node_grad(u, T, C):
    """Node u's own output gradient (T, C) of the outgrad case."""
    t = torch.arange(T, dtype=torch.float64)[:, None]
    c = torch.arange(C, dtype=torch.float64)[None, :]
    return torch.sin(0.37 * u + 0.91 * t + 0.13 * c + 0.5).float().double()


def outgrad(d, out, grouped):
    """Receiver gradients of family model d when each node's output has its
    own gradient (see the module's docstring): written to out."""
    a, names, W = load(d)
    ref, tokens = ref_tokens(d)
    recv = receivers(a, grouped)
    H, C = a["n_head"], a["n_embd"]
    deltas = [torch.zeros(T, C, requires_grad=True) for _ in recv]
    outs = []
    forward(a, W, names, tokens, recv, deltas, grouped, outs=outs)
    grads = torch.zeros(len(recv), T, C)
    for l in range(a["n_layer"]):
        u0 = 1 + l * (H + 1)
        heads = ([i for i, r in enumerate(recv) if r[0] == l and r[1] != "mlp"],
                 range(u0, u0 + H))
        mlp = ([i for i, r in enumerate(recv) if r[0] == l and r[1] == "mlp"], [u0 + H])
        stages = [(heads[0] + mlp[0], list(heads[1]) + mlp[1])] if a["parallel_residual"] \
            else [heads, mlp]
        for ri, us in stages:
            s = sum((node_grad(u, T, C) * outs[u]).sum() for u in us)
            gs = torch.autograd.grad(s, [deltas[i] for i in ri], retain_graph=True,
                                     allow_unused=True)
            for i, g in zip(ri, gs):
                if g is not None:
                    grads[i] = g
    write_safetensors(out, {"tokens": ref["tokens"][:1, :T].astype("int32"), "grads": grads})


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "scores":
        # family_recv.py scores MODEL_DIR OUT_DIR [grouped] [raw]
        scores(sys.argv[2], sys.argv[3], "grouped" in sys.argv[4:], raw="raw" in sys.argv[4:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "circuit":
        # family_recv.py circuit MODEL_DIR TOKENS EDGES [grouped] [raw]
        print(json.dumps(circuit(sys.argv[2], sys.argv[3], sys.argv[4], "grouped" in sys.argv[5:],
                                 "raw" in sys.argv[5:])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "postnorm":
        # family_recv.py postnorm MODEL_DIR: the two head-node definitions
        print(json.dumps(postnorm(sys.argv[2])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "outgrad":
        # family_recv.py outgrad MODEL_DIR OUT_FILE [grouped]
        outgrad(sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "grouped")
        return
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/data/families"
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.exists(os.path.join(d, "config.json")):
            continue
        a, names, W = load(d)
        ref, tokens = ref_tokens(d)
        # the plain reference forward and this one agree (deltas zero)
        recv = receivers(a, False)
        zero = [torch.zeros(T, a["n_embd"]) for _ in recv]
        same = (forward(a, W, names, tokens, recv, zero, False) -
                fam.forward(a, W, names, tokens)).abs().max().item()
        assert same < 1e-9, (name, same)
        g = torch.Generator().manual_seed(11)
        w = torch.randn(T, a["vocab_size"], generator=g)
        out = {"tokens": ref["tokens"][:1, :T].astype("int32"), "w": w,
               "grads": grads(a, W, names, tokens, w, False)}
        if a["n_kv_head"] < a["n_head"]:
            out["grads_grouped"] = grads(a, W, names, tokens, w, True)
        write_safetensors(os.path.join(d, "grads.safetensors"), out)
        print("%s: %d receivers" % (name, out["grads"].shape[0]))


if __name__ == "__main__":
    main()
