#!/usr/bin/python3
"""Reference for circ's transcoder circuits (lib/tcircuit, circ-paths),
PyTorch float64.

Written from the definitions of Dunefsky, Chlenski and Nanda (2024) as
man/circ-paths.1 states them, not from circ's code. circ pulls gradients
back from the target (upstream); this script pushes vectors forward
(downstream) through each route's linear maps, with the prompt's frozen
attention patterns and LayerNorm scales from trace_ref.py's clean run:
  a head hop (a, h, r -> q): y -> A[a][h][q][r] ((P y) s1[a][r] w1) W_V^h W_O^h
  the target read:          y -> R(y) . enc_i, R(y) = y | (P y) s2 | (P y) s2 w2
  a feature on a path:      y -> (R_j(y) . enc_j) dec_j   (linear in the path)
with P the centering, enc_i = scale W_enc[:, i], dec_j = W_dec[j] / scale.
On the other families (tests/ref/families.py, through
trace_family_ref.py's frozen clean run) the same, with the family's norms
(RMSNorm y s (offset + w), no centering), its key/value head per query head,
its embedding scale, the RMSNorm after the attention (Gemma 2, 3, OLMo 2:
y -> y s_pa[q] (offset + w_pa), at the destination), no norm before the
attention (OLMo 2), and parallel blocks (GPT-NeoX: a layer's MLP, so its
transcoder, reads the layer's input: no head of its own layer feeds it).
The input-invariant connections leave out A, s1, s2 and s_pa. The direct effect
(circ-trace's edge) is d pre_target / d eps for eps times the source vector
added at its point, every MLP output frozen: an autograd derivative.

Usage:
  tcircuit_ref.py routes MODEL DICTSET IDS UP DOWN
      prints {"routes": {route: attribution}, "total", "edge"}.
  tcircuit_ref.py paths MODEL DICTSET IDS TARGET BEAM DEPTH [abs]
      prints the beam search's paths: [{"path", "depth", "attribution",
      "elements": [attribution per element]}] in circ-paths' order.
  tcircuit_ref.py connections MODEL DICTSET FEATURE
      prints every connection {"connection|route": weight}.
  tcircuit_ref.py compare-routes CIRC.jsonl REF.json [--tol X]
  tcircuit_ref.py compare-paths CIRC.jsonl REF.json [--tol X]
  tcircuit_ref.py compare-connections CIRC.jsonl REF.json [--tol X]
      compare circ-paths --json output with this script's: every value
      within X (default 1e-5) of the largest |value| of the output; routes:
      the same set, and circ's total and the reference's edge within X;
      paths: the same paths in the same order (a swap allowed where the two
      attributions are within X); connections: every circ connection in the
      reference with its weight, and circ's top list the reference's (ties
      within X allowed).
"""
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_ref import centered, clean_run, frozen_attn, hook_kind  # noqa: E402
from dict_ref import load_set  # noqa: E402
import trace_family_ref as tfr  # noqa: E402
import families as fam  # noqa: E402

torch.set_default_dtype(torch.float64)


def parse_node(s):
    m = re.fullmatch(r"tc(\d+)\.f(\d+)@(\d+)", s)
    if m:
        return ("feature", int(m.group(1)), int(m.group(2)), int(m.group(3)))
    m = re.fullmatch(r"tc(\d+)\.err@(\d+)", s)
    if m:
        return ("error", int(m.group(1)), -1, int(m.group(2)))
    m = re.fullmatch(r"input@(\d+)", s)
    return ("input", -1, -1, int(m.group(1)))


def name(e):
    k, l, i, p = e[:4]
    if k == "feature":
        return "tc%d.f%d@%d" % (l, i, p)
    if k == "error":
        return "tc%d.err@%d" % (l, p)
    if k == "input":
        return "input@%d" % p
    return "L%dH%d:%d>%d" % (l, i, p, e[4])


class Prompt:
    def __init__(self, model, dset, ids):
        r = clean_run(model, dset, ids)
        self.r = r
        self.__dict__.update({k: r[k] for k in ("w", "p", "L", "H", "C", "D", "T", "tcs", "acts", "errs")})
        self.ids = ids
        w, T = self.w, self.T
        # the residual at each layer's input, and the MLP outputs (decode + error)
        x = w["wte.weight"][r["tok"]] + w["wpe.weight"][:T]
        self.pre, self.mo = [], []
        for l in range(self.L):
            self.pre.append(x)
            d = self.tcs[l]
            mo = self.errs[l] if d is None else self.errs[l] + (self.acts[l] @ d.w["W_dec"] + d.w["b_dec"]) / d.scale
            self.mo.append(mo)
            x = frozen_attn(r, l, x) + mo

    def head_out(self, a, h, q, r, y, frozen=True):
        """y (C) at head (a, h)'s source r, through its OV to destination q."""
        p, C, D = self.p, self.C, self.D
        s1, A, _ = self.r["frozen"][a]
        z = centered(y) * p(a, "ln_1.weight")
        if frozen:
            z = z * s1[r, 0] * A[h, q, r]
        v = z @ p(a, "attn.c_attn.weight")[:, 2 * C + h * D:2 * C + (h + 1) * D]
        return v @ p(a, "attn.c_proj.weight")[h * D:(h + 1) * D]

    def head_full(self, a, h, q, r):
        """The head's whole output at q from source r on the prompt."""
        p, C, D = self.p, self.C, self.D
        s1, A, _ = self.r["frozen"][a]
        ln = centered(self.pre[a][r]) * s1[r, 0] * p(a, "ln_1.weight") + p(a, "ln_1.bias")
        sl = slice(2 * C + h * D, 2 * C + (h + 1) * D)
        v = ln @ p(a, "attn.c_attn.weight")[:, sl] + p(a, "attn.c_attn.bias")[sl]
        return A[h, q, r] * (v @ p(a, "attn.c_proj.weight")[h * D:(h + 1) * D])

    def read(self, l, i, t, y, frozen=True):
        """Feature i of layer l reading y (C) at position t: R(y) . enc_i."""
        d = self.tcs[l]
        kind = hook_kind(d)
        if kind != "resid":
            y = centered(y)
            if frozen:
                y = y * self.r["frozen"][l][2][t, 0]
            if kind == "norm_wb":
                y = y * self.p(l, "ln_2.weight")
        return float(y @ d.w["W_enc"][:, i] * d.scale)

    def dec(self, l, j):
        d = self.tcs[l]
        return d.w["W_dec"][j] / d.scale

    def embed(self, v):
        return self.w["wte.weight"][v]

    def source(self, e):
        k, l, i, t = e[:4]
        if k == "feature":
            return float(self.acts[l][t, i]) * self.dec(l, i)
        if k == "error":
            return self.errs[l][t]
        return self.embed(self.ids[t])

    def through(self, y, chain, tgt):
        """y pushed through chain (elements upstream first, after the source)
        and read by the target feature tgt."""
        for e in chain:
            if e[0] == "head":
                y = self.head_out(e[1], e[2], e[4], e[3], y)
            else:  # an intermediate feature, linear in the path
                y = self.read(e[1], e[2], e[3], y) * self.dec(e[1], e[2])
        return self.read(tgt[1], tgt[2], tgt[3], y)

    def edge(self, src, tgt):
        """circ-trace's direct effect: autograd through the frozen model."""
        eps = torch.zeros(1, requires_grad=True)
        w, T = self.w, self.T
        k, sl, _, sp = src
        x = w["wte.weight"][torch.tensor(self.ids)] + w["wpe.weight"][:T]
        v = self.source(src)
        if k == "input":
            x = x + torch.nn.functional.one_hot(torch.tensor(sp), T)[:, None] * eps * v
        for l in range(tgt[1]):
            x = frozen_attn(self.r, l, x) + self.mo[l]
            if l == sl:
                x = x + torch.nn.functional.one_hot(torch.tensor(sp), T)[:, None] * eps * v
        x = frozen_attn(self.r, tgt[1], x)
        d = self.tcs[tgt[1]]
        kind = hook_kind(d)
        y = x[tgt[3]]
        if kind != "resid":
            y = centered(y) * self.r["frozen"][tgt[1]][2][tgt[3], 0]
            if kind == "norm_wb":
                y = y * self.p(tgt[1], "ln_2.weight") + self.p(tgt[1], "ln_2.bias")
        pre = (y * d.scale) @ d.w["W_enc"][:, tgt[2]]
        return float(torch.autograd.grad(pre, eps)[0])


class FamPrompt:
    """Prompt's interface above for a model of another family."""

    def __init__(self, model, dset, ids):
        hin = {}

        class M(tfr.Model):
            def attn(self2, l, h):  # records the attention's (normed) input
                if self2.frozen is None:
                    hin[l] = h.detach()
                return super().attn(l, h)

        self.m = m = M(model, dset, ids)
        a = self.a = m.a
        self.W, self.hin, self.ids = m.W, hin, ids
        self.L, self.T, self.C = m.L, m.T, a["n_embd"]
        self.H, self.D, self.K = a["n_head"], a["head_dim"], a["n_kv_head"]
        self.tcs, self.acts, self.errs = m.tcs, m.acts, m.errs
        self.neox = a["model_type"] == "gpt_neox"
        self.par = self.neox and a["parallel_residual"]
        self.rms = a["norm"] != "layernorm"
        self.has_pa = not self.neox and a["norm_placement"] != "pre"
        self.has_n1 = a["norm_placement"] != "post" or self.neox
        self.mo = [m.errs[l] if d is None else m.errs[l] + d.decode(m.acts[l], m.xin[l])
                   for l, d in enumerate(m.tcs)]

    def pfx(self, l):
        return self.m.names["layer"] % l

    def nweight(self, name):
        w = self.W[name + ".weight"]
        return self.a["norm_offset"] + w if self.rms else w

    def fz(self, key, t):
        return self.m.frozen[key][t, 0]

    def wv(self, a, h):
        """Rows of head h's value map (D, C) and its bias (D)."""
        p, D = self.pfx(a), self.D
        if self.neox:
            sl = slice(h * 3 * D + 2 * D, h * 3 * D + 3 * D)
            k = p + "attention.query_key_value"
        else:
            g = h // (self.H // self.K)
            sl = slice(g * D, (g + 1) * D)
            k = p + "self_attn.v_proj"
        b = self.W[k + ".bias"][sl] if self.a["bias_qkv"] else torch.zeros(D)
        return self.W[k + ".weight"][sl], b

    def wo(self, a, h):
        """Head h's columns of the output map (C, D)."""
        k = self.pfx(a) + ("attention.dense" if self.neox else "self_attn.o_proj")
        return self.W[k + ".weight"][:, h * self.D:(h + 1) * self.D]

    def head_out(self, a, h, q, r, y, frozen=True):
        """y (C) at head (a, h)'s source r, through its OV to destination q."""
        z = y
        if self.has_n1:
            n1 = fam.block_norms(self.a, self.pfx(a))[0]
            z = (z if self.rms else centered(z)) * self.nweight(n1)
            if frozen:
                z = z * self.fz(("n1", a), r)
        if frozen:
            z = z * self.m.frozen[("A", a)][h, q, r]
        o = self.wo(a, h) @ (self.wv(a, h)[0] @ z)
        return self.pa(a, q, o, frozen)

    def pa(self, a, q, o, frozen=True):
        if not self.has_pa:
            return o
        o = o * self.nweight(self.pfx(a) + "post_attention_layernorm")
        return o * self.fz(("pa", a), q) if frozen else o

    def head_full(self, a, h, q, r):
        """The head's whole output at q from source r on the prompt."""
        v, b = self.wv(a, h)
        o = self.m.frozen[("A", a)][h, q, r] * (self.wo(a, h) @ (v @ self.hin[a][r] + b))
        return self.pa(a, q, o)

    def read(self, l, i, t, y, frozen=True):
        """Feature i of layer l reading y (C) at position t: R(y) . enc_i."""
        d = self.tcs[l]
        kind = tfr.hook_kind(self.a, d)
        if kind != "resid":
            y = y if self.rms else centered(y)
            if frozen:
                y = y * self.fz(("n2", l), t)
            if kind == "norm_wb":
                y = y * self.nweight(fam.block_norms(self.a, self.pfx(l))[1])
        return float(y @ d.w["W_enc"][:, i] * d.scale)

    def embed(self, v):
        return self.W[self.m.names["embed"]][v] * self.a["embed_scale"]

    dec, source, through = Prompt.dec, Prompt.source, Prompt.through

    def edge(self, src, tgt):
        """circ-trace's direct effect: autograd through the frozen model
        (trace_family_ref's replacement run, every MLP output frozen)."""
        eps = torch.zeros(1, requires_grad=True)
        k, sl, _, sp = src
        inj = torch.nn.functional.one_hot(torch.tensor(sp), self.T)[:, None] * eps * self.source(src)
        emb = self.embed(torch.tensor(self.ids)) + (inj if k == "input" else 0)
        pre = []

        def repl(l, xin):
            if l == tgt[1]:
                d = self.tcs[l]
                pre.append((xin[tgt[3]] * d.scale) @ d.w["W_enc"][:, tgt[2]])
            return self.mo[l] + (inj if l == sl else 0)

        self.m.run(repl, emb)
        return float(torch.autograd.grad(pre[0], eps)[0])


def is_gpt2(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    return cfg.get("model_type", "gpt2") == "gpt2"


def prompt(model, dset, ids):
    P = Prompt(model, dset, ids) if is_gpt2(model) else FamPrompt(model, dset, ids)
    P.par = getattr(P, "par", False)
    return P


def routes(argv):
    P = prompt(argv[0], argv[1], [int(i) for i in argv[2].split(",")])
    src, tgt = parse_node(argv[3]), parse_node(argv[4])
    out = {}
    v = P.source(src)
    sl = src[1]

    def rec(chain, layer_min, pos):
        # chain: hops so far (upstream first), its last destination pos;
        # next hop: a layer above layer_min, source pos, any destination
        if pos == tgt[3]:
            key = ",".join(name(e) for e in chain) or "resid"
            out[key] = P.through(v, chain, tgt)
        for a in range(layer_min + 1, tgt[1] + 1 - P.par):
            for h in range(P.H):
                for q in range(pos, tgt[3] + 1):
                    rec(chain + [("head", a, h, pos, q)], a, q)

    rec([], sl, src[3])
    json.dump({"routes": out, "total": sum(out.values()), "edge": P.edge(src, tgt)}, sys.stdout)


def contributors(P, up, c, mid, t):
    """Candidate elements feeding a path whose upstream end reads at layer c
    (its MLP input when mid, else its attention input), position t."""
    out = []
    for l in range(c):
        if P.tcs[l] is not None:
            for j in torch.nonzero(P.acts[l][t]).flatten().tolist():
                out.append(("feature", l, j, t, t))
    for l in range(c):
        out.append(("error", l, -1, t, t))
    for a in range(c + 1 if mid and not P.par else c):
        for h in range(P.H):
            for r in range(t + 1):
                out.append(("head", a, h, r, t))
    out.append(("input", -1, P.ids[t], t, t))
    return out


def value(P, e):
    if e[0] == "head":
        return P.head_full(e[1], e[2], e[4], e[3])
    if e[0] == "input":
        return P.embed(e[2])
    return P.source(e)


def paths(argv):
    P = prompt(argv[0], argv[1], [int(i) for i in argv[2].split(",")])
    tgt = parse_node(argv[3])
    beam, depth = int(argv[4]), int(argv[5])
    by_abs = len(argv) > 6 and argv[6] == "abs"
    key = (lambda a: abs(a)) if by_abs else (lambda a: a)
    cur = [[tgt]]  # elements downstream first
    res = []
    for it in range(1, depth + 1):
        allc = []
        for path in cur:
            end = path[-1]
            if end[0] not in ("feature", "head"):
                continue
            if end[0] == "feature":
                c, mid, t = end[1], True, end[3]
            else:
                c, mid, t = end[1], False, end[3]
            cands = []
            chain = list(reversed(path[1:]))  # the elements between, upstream first
            for e in contributors(P, path, c, mid, t):
                a = P.through(value(P, e), chain, tgt)
                cands.append((key(a), len(allc) + len(cands), path + [e], a))
            cands.sort(key=lambda z: (-z[0], z[1]))
            allc += cands[:beam]
        allc.sort(key=lambda z: (-z[0], z[1]))
        cur = [z[2] for z in allc[:beam]]
        for path in cur:
            up = list(reversed(path))
            attrs = []
            for k in range(len(up) - 1):
                attrs.append(P.through(value(P, up[k]), up[k + 1:-1], tgt))
            attrs.append(float(P.acts[tgt[1]][tgt[3], tgt[2]]))
            res.append({"names": [name(e) for e in up], "depth": it, "attribution": attrs[0],
                        "elements": attrs})
    json.dump(res, sys.stdout)


def connections(argv):
    vocab = json.load(open(os.path.join(argv[0], "config.json")))["vocab_size"]
    P = prompt(argv[0], argv[1], [0])  # weights only; nothing frozen is used
    m = re.fullmatch(r"tc(\d+)\.f(\d+)", argv[2])
    l, i = int(m.group(1)), int(m.group(2))
    out = {}
    me = "tc%d.f%d" % (l, i)

    def rd(l2, i2, y):
        return P.read(l2, i2, 0, y, frozen=False)

    def ov(a, h, y):
        return P.head_out(a, h, 0, 0, y, frozen=False)

    for lp in range(l):
        if P.tcs[lp] is None:
            continue
        for j in range(P.tcs[lp].w["W_dec"].shape[0]):
            y = P.dec(lp, j)
            src = "tc%d.f%d" % (lp, j)
            out["%s->%s|resid" % (src, me)] = rd(l, i, y)
            for a in range(lp + 1, l + 1 - P.par):
                for h in range(P.H):
                    out["%s->%s|L%dH%d" % (src, me, a, h)] = rd(l, i, ov(a, h, y))
    for v in range(vocab):
        y = P.embed(v)
        src = "input.%d" % v
        out["%s->%s|resid" % (src, me)] = rd(l, i, y)
        for a in range(l + 1 - P.par):
            for h in range(P.H):
                out["%s->%s|L%dH%d" % (src, me, a, h)] = rd(l, i, ov(a, h, y))
    y0 = P.dec(l, i)
    for l2 in range(l + 1, P.L):
        if P.tcs[l2] is None:
            continue
        for i2 in range(P.tcs[l2].w["W_enc"].shape[1]):
            dst = "tc%d.f%d" % (l2, i2)
            out["%s->%s|resid" % (me, dst)] = rd(l2, i2, y0)
            for a in range(l + 1, l2 + 1 - P.par):
                for h in range(P.H):
                    out["%s->%s|L%dH%d" % (me, dst, a, h)] = rd(l2, i2, ov(a, h, y0))
    json.dump(out, sys.stdout)


def records(path):
    recs = [json.loads(x) for x in open(path)]
    return [r for r in recs[1:] if "$end" not in r]


def tol_of(argv):
    return float(argv[1]) if len(argv) > 1 and argv[0] == "--tol" else 1e-5


def compare_routes(argv):
    c, ref, tol = records(argv[0]), json.load(open(argv[1])), tol_of(argv[2:])
    rts = {r["route"]: r["attribution"] for r in c if "route" in r}
    tot = [r for r in c if "total" in r][0]
    big = max([abs(x) for x in ref["routes"].values()] + [abs(ref["edge"]), 1e-12])
    assert set(rts) == set(ref["routes"]), (sorted(set(rts) ^ set(ref["routes"]))[:5])
    worst = max([abs(rts[k] - ref["routes"][k]) for k in rts] + [0]) / big
    assert worst <= tol, "route attribution off by %g of the largest" % worst
    assert tot["n_routes"] == len(rts)
    d_ref = abs(ref["total"] - ref["edge"]) / big
    d_c = abs(tot["total"] - ref["edge"]) / big
    assert d_ref <= 1e-9, "reference: sum over routes %g != edge %g" % (ref["total"], ref["edge"])
    assert d_c <= tol, "circ: sum over routes %g != edge %g" % (tot["total"], ref["edge"])
    print("routes: %d, worst %.2e, total vs edge %.2e (of %.3g)" % (len(rts), worst, d_c, big))


def compare_paths(argv):
    c, ref, tol = records(argv[0]), json.load(open(argv[1])), tol_of(argv[2:])
    assert len(c) == len(ref), "%d paths, reference %d" % (len(c), len(ref))
    big = max(abs(x) for r in ref for x in r["elements"])
    worst = 0
    for k, (a, b) in enumerate(zip(c, ref)):
        names = [e["name"] for e in a["elements"]]
        if names != b["names"]:
            # a near-tie may swap two neighbours of the same depth
            nb = [r for r in ref if r["depth"] == a["depth"] and r["names"] == names]
            assert nb and abs(nb[0]["attribution"] - b["attribution"]) <= tol * big, \
                "path %d: %s, reference %s" % (k, names, b["names"])
            b = nb[0]
        assert a["depth"] == b["depth"]
        for x, y in zip([e["attribution"] for e in a["elements"]], b["elements"]):
            worst = max(worst, abs(x - y) / big)
        assert abs(a["attribution"] - b["attribution"]) <= tol * big
    assert worst <= tol, "path attribution off by %g of the largest" % worst
    print("paths: %d, worst %.2e (of %.3g)" % (len(c), worst, big))


def compare_connections(argv):
    c, ref, tol = records(argv[0]), json.load(open(argv[1])), tol_of(argv[2:])
    big = max(abs(x) for x in ref.values())
    worst = 0
    for r in c:
        k = "%s|%s" % (r["connection"], r["route"])
        assert k in ref, "connection %s not in the reference" % k
        worst = max(worst, abs(r["weight"] - ref[k]) / big)
    assert worst <= tol, "connection weight off by %g of the largest" % worst
    for up in ("upstream", "downstream"):
        mine = [r for r in c if r["direction"] == up]
        me = mine[0]["target" if up == "upstream" else "source"] if mine else None
        side = sorted((abs(v) for k, v in ref.items()
                       if me and (k.split("|")[0].split("->")[1 if up == "upstream" else 0] == me)),
                      reverse=True)
        if not mine:
            continue
        n = len(mine)
        # circ's k-th strongest equals the reference's k-th strongest
        for k in range(n):
            assert abs(abs(mine[k]["weight"]) - side[k]) <= tol * big, (up, k)
    print("connections: %d, worst %.2e (of %.3g)" % (len(c), worst, big))


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    {"routes": routes, "paths": paths, "connections": connections,
     "compare-routes": compare_routes, "compare-paths": compare_paths,
     "compare-connections": compare_connections}[cmd](argv)


if __name__ == "__main__":
    main()
