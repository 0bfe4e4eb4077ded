#!/usr/bin/python3
"""Reference for circ's sparse feature circuits (lib/fcircuit), PyTorch float64.

Written from Marks et al. 2024 ("Sparse Feature Circuits") and the
definitions in lib/fcircuit.h, by another route than circ's: activations are
*replaced* in the forward (dict_ref.forward) by the decoding of leaf feature
tensors plus a leaf error tensor, and every gradient is autograd's; circ
uses receiver deltas, residual gradients and seeded backward passes.

  node effects, atp: one dictionary at a time is replaced by
      decode(f) + e with f, e leaves at their clean values; the loss
      (-logit_diff) is differentiated; effect = sum_t (delta . grad).
  node effects, ig: the same with f, e interpolated between clean and
      corrupt (alpha = k/steps, k = 0..steps-1), gradients averaged.
  edges U -> D: U replaced by leaves, the dictionaries strictly between U
      and D replaced by their own activation detached (held), D's value
      read through its encoder: a_d = f_d(y) or the error y - decode(f(y));
      sum_t left_d[t] a_d[t] differentiated with autograd against U's
      leaves, times U's deltas, summed.
  sink: the last dictionary's node effects; the others' clean gradient
      with the later dictionaries held.
  --positions keep (Marks et al.'s aggregation "none"): one node per
      feature and position ("resid0.f3@5"); the edge into a downstream
      node at position t is differentiated from that position's term
      alone, the upstream position s kept apart: every (s, t) is written,
      those the model cannot join (s > t, or s != t on a route without
      attention) come out 0 from autograd itself.

Usage:
  fcircuit_ref.py MODEL DICTSET TOKENS.jsonl [--ig STEPS] [--nodes-only]
                 [--positions keep]
      prints {"node": name, "sum": s} and {"edge": name, "sum": s} lines
      (sums over examples, positions summed unless kept).
  fcircuit_ref.py ablate MODEL DICTSET TOKENS.jsonl CIRCUIT.jsonl [--positions keep]
      Marks et al.'s run_with_ablations with mean ablation: the nodes of the
      circuit's {"node"} records kept, every other node (features, errors,
      input) set to its mean at its position over the clean prompts that
      reach it, each dictionary in
      forward order splitting the activation the earlier ones left; prints
      {"metric_model", "metric_empty", "metric_circuit", "metric_complement"}
      (means over examples of logit_diff). With --positions keep the circuit's
      nodes are '<node>@<t>' and each is kept at its own position only.
  fcircuit_ref.py compare CIRC.jsonl REF.jsonl [--rtol R]
      every node and edge of either within rtol (default 1e-3) of the
      reference, relative to the largest |value| of its kind (+ 1e-9);
      an edge circ left out must be 0 in the reference (to that bound).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# compare reads JSON alone: it need not pay PyTorch's 2-3 s import
if __name__ != "__main__" or sys.argv[1:2] != ["compare"]:
    import torch

    from dict_ref import forward, load_model, load_set  # noqa: E402

    torch.set_default_dtype(torch.float64)

ORDER = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_mlp_out": 2, "hook_resid_post": 3}
SHORT = {"hook_resid_pre": "resid_pre", "hook_attn_out": "attn", "hook_mlp_out": "mlp",
         "hook_resid_post": "resid"}


class Slot:
    def __init__(self, d, hook):
        self.d, self.hook = d, hook
        layer, point = int(hook.split(".")[1]), hook.split(".", 2)[2]
        self.layer, self.point = layer, point
        self.key = layer * 4 + ORDER[point]
        self.resid = point in ("hook_resid_pre", "hook_resid_post")
        self.name = "input" if d is None else "%s%d" % (SHORT[point], layer)
        self.S = 0 if d is None else d.w["W_dec"].shape[0]

    def enc(self, x):
        return x[:, :0] if self.d is None else self.d.encode(x)

    def dec(self, f, x):
        return torch.zeros_like(x) if self.d is None else self.d.decode(f, x)

    def node(self, i):
        if self.d is None:
            return "input"
        return "%s.err" % self.name if i == self.S else "%s.f%d" % (self.name, i)


def slots_of(set_dir):
    ds = load_set(set_dir)
    sl = [Slot(d, d.hook_in) for d in ds]
    if not any(s.point == "hook_resid_pre" and s.layer == 0 for s in sl):
        sl.append(Slot(None, "blocks.0.hook_resid_pre"))
    return sorted(sl, key=lambda s: s.key)


def resid_below(sl, k):
    for j in range(k - 1, -1, -1):
        if sl[j].resid:
            return j
    return 0


def loss_of(logits, ex):
    pos = ex["pos"] if isinstance(ex["pos"], list) else [ex["pos"]]
    ans, wrong = ex["answer"], ex["wrong"]
    tot = 0
    for i, p in enumerate(pos):
        a = ans if len(pos) == 1 else [ans[i]]
        w = wrong if len(pos) == 1 else [wrong[i]]
        tot = tot + logits[p, a].mean() - logits[p, w].mean()
    return -tot / len(pos)  # the loss: -logit_diff


def run(model, tok, ex, repl):
    logits, _ = forward(model, tok, lambda name, a: repl.get(name, lambda x: None)(a))
    return loss_of(logits, ex)


def example(model, sl, ex, ig, nodes_only, nodes, edges, keep=False):
    clean = torch.tensor(ex["clean"]["data"])
    corrupt = torch.tensor(ex["corrupt"]["data"])
    _, cc = forward(model, clean)
    _, cp = forward(model, corrupt)
    st = []
    for s in sl:
        xc, xp = cc[s.hook], cp[s.hook]
        fc, fp = s.enc(xc), s.enc(xp)
        ec, ep = xc - s.dec(fc, xc), xp - s.dec(fp, xp)
        st.append(dict(xc=xc, fc=fc, ec=ec, df=fp - fc, de=ep - ec))

    def leaves(s, a, k):  # features and error at alpha a, as leaves
        f = (st[k]["fc"] + a * st[k]["df"]).clone().requires_grad_()
        e = (st[k]["ec"] + a * st[k]["de"]).clone().requires_grad_()
        return f, e

    # node gradients (left vectors) and effects
    left = []
    for k, s in enumerate(sl):
        alphas = [i / ig for i in range(ig)] if ig else [0.0]
        gf, ge = 0, 0
        for a in alphas:
            f, e = leaves(s, a, k)
            loss = run(model, clean, ex, {s.hook: lambda x, f=f, e=e, s=s: s.dec(f, x) + e})
            g = torch.autograd.grad(loss, [f, e], allow_unused=True)
            gf = gf + (g[0] if g[0] is not None else torch.zeros_like(f))
            ge = ge + g[1]
        gf, ge = gf / len(alphas), ge / len(alphas)
        left.append((gf, ge))
        if keep:  # (T, S + 1): per position
            eff = torch.cat([st[k]["df"] * gf, (st[k]["de"] * ge).sum(-1, keepdim=True)], 1)
            names = [s.node(i) + "@%d" % t for t in range(eff.shape[0])
                     for i in range(s.S + 1)]
            eff = list(eff.reshape(-1))
        else:
            eff = list((st[k]["df"] * gf).sum(0)) + [(st[k]["de"] * ge).sum()]
            names = [s.node(i) for i in range(s.S + 1)]
        for n, v in zip(names, eff):
            nodes[n] = nodes.get(n, 0.0) + float(v)
        st[k]["eff"] = eff
        st[k]["names"] = names
    if nodes_only:
        return

    def add(name, v):
        edges[name] = edges.get(name, 0.0) + float(v)

    def upstream_edges(k, up, f, e, val, dname):
        if not val.requires_grad:
            return
        g = torch.autograd.grad(val, [f, e], retain_graph=True, allow_unused=True)
        gfu = g[0] if g[0] is not None else torch.zeros_like(f)
        geu = g[1] if g[1] is not None else torch.zeros_like(e)
        if keep:
            vals = torch.cat([st[up]["df"] * gfu,
                              (st[up]["de"] * geu).sum(-1, keepdim=True)], 1).reshape(-1)
        else:
            vals = list((st[up]["df"] * gfu).sum(0)) + [(st[up]["de"] * geu).sum()]
        for n, v in zip(st[up]["names"], vals):
            add("%s->%s" % (n, dname), v)

    for dn in range(1, len(sl)):
        D = sl[dn]
        lo = resid_below(sl, dn)
        for up in range(lo, dn):
            f, e = leaves(sl[up], 0.0, up)
            repl = {sl[up].hook: lambda x, f=f, e=e, s=sl[up]: s.dec(f, x) + e}
            for j in range(up + 1, dn):
                repl[sl[j].hook] = lambda x: x.detach()
            cap = {}

            def grab(x, cap=cap):
                cap["y"] = x
                return None
            repl[D.hook] = grab
            forward(model, clean, lambda name, a: repl.get(name, lambda x: None)(a))
            y = cap["y"]
            g = D.enc(y)
            yres = y - D.dec(g, y)
            gf, ge = left[dn]
            for d in range(D.S):
                a = gf[:, d] * g[:, d]
                if keep:
                    for t in range(a.shape[0]):
                        upstream_edges(dn, up, f, e, a[t], D.node(d) + "@%d" % t)
                else:
                    upstream_edges(dn, up, f, e, a.sum(), D.node(d))
            a = (ge * yres).sum(-1)
            if keep:
                for t in range(a.shape[0]):
                    upstream_edges(dn, up, f, e, a[t], D.node(D.S) + "@%d" % t)
            else:
                upstream_edges(dn, up, f, e, a.sum(), D.node(D.S))
    # sink
    last, lo = len(sl) - 1, resid_below(sl, len(sl))
    for n, v in zip(st[last]["names"], st[last]["eff"]):
        add("%s->logits" % n, v)
    for up in range(lo, last):
        f, e = leaves(sl[up], 0.0, up)
        repl = {sl[up].hook: lambda x, f=f, e=e, s=sl[up]: s.dec(f, x) + e}
        for j in range(up + 1, len(sl)):
            repl[sl[j].hook] = lambda x: x.detach()
        loss = run(model, clean, ex, repl)
        upstream_edges(None, up, f, e, loss, "logits")


def main_ref(argv):
    model = load_model(argv[0])
    sl = slots_of(argv[1])
    ig = int(argv[argv.index("--ig") + 1]) if "--ig" in argv else 0
    nodes_only = "--nodes-only" in argv
    keep = "--positions" in argv and argv[argv.index("--positions") + 1] == "keep"
    nodes, edges = {}, {}
    for line in open(argv[2]):
        ex = json.loads(line)
        if "clean" not in ex:
            continue
        example(model, sl, ex, ig, nodes_only, nodes, edges, keep)
    for k, v in nodes.items():
        print(json.dumps({"node": k, "sum": v}))
    for k, v in edges.items():
        print(json.dumps({"edge": k, "sum": v}))


def main_ablate(argv):
    model = load_model(argv[0])
    sl = slots_of(argv[1])
    exs = [json.loads(l) for l in open(argv[2])]
    exs = [x for x in exs if "clean" in x]
    keep = set()
    per_pos = "--positions" in argv and argv[argv.index("--positions") + 1] == "keep"
    for line in open(argv[3]):
        r = json.loads(line)
        if "node" in r:
            keep.add(r["node"])
    # means per position over the examples that reach it
    P = max(len(ex["clean"]["data"]) for ex in exs)
    sums = [[0, 0] for _ in sl]
    cnt = torch.zeros(P, 1)
    for ex in exs:
        _, cache = forward(model, torch.tensor(ex["clean"]["data"]))
        T = len(ex["clean"]["data"])
        for k, s in enumerate(sl):
            x = cache[s.hook]
            f = s.enc(x)
            pad = lambda a: torch.cat([a, torch.zeros(P - T, a.shape[1])])
            sums[k][0] = sums[k][0] + pad(f)
            sums[k][1] = sums[k][1] + pad(x - s.dec(f, x))
        cnt[:T] += 1
    means = [(a / cnt.clamp(min=1), b / cnt.clamp(min=1)) for a, b in sums]

    def metric(ex, kept):
        def repl(name, x):
            for k, s in enumerate(sl):
                if s.hook != name or kept is None:
                    continue
                f = s.enc(x)
                e = x - s.dec(f, x)
                T = x.shape[0]
                e = e.clone()
                for t in range(T):
                    at = "@%d" % t if per_pos else ""
                    for i in range(s.S):
                        if s.node(i) + at not in kept:
                            f[t, i] = means[k][0][t, i]
                    if s.node(s.S) + at not in kept:
                        e[t] = means[k][1][t]
                return s.dec(f, x) + e
            return None
        logits, _ = forward(model, torch.tensor(ex["clean"]["data"]), repl)
        return -float(loss_of(logits, ex))
    P = max(len(ex["clean"]["data"]) for ex in exs)
    every = {s.node(i) + ("@%d" % t if per_pos else "") for s in sl for i in range(s.S + 1)
             for t in range(P if per_pos else 1)}
    out = {}
    for key, kept in (("metric_model", None), ("metric_empty", set()),
                      ("metric_circuit", keep), ("metric_complement", every - keep)):
        out[key] = sum(metric(ex, kept) for ex in exs) / len(exs)
    print(json.dumps(out))


def main_compare(argv):
    rtol = float(argv[argv.index("--rtol") + 1]) if "--rtol" in argv else 1e-3

    def read(p):
        out = {"node": {}, "edge": {}}
        for line in open(p):
            r = json.loads(line)
            for kind in out:
                if kind in r:
                    out[kind][r[kind]] = r["sum"]
        return out
    c, r = read(argv[0]), read(argv[1])
    bad = 0
    for kind in ("node", "edge"):
        if not r[kind]:
            continue
        scale = max(abs(v) for v in r[kind].values()) + 1e-9
        for name in set(c[kind]) | set(r[kind]):
            if name not in r[kind]:
                print("%s %s: in circ's output, not in the reference" % (kind, name))
                bad += 1
                continue
            cv, rv = c[kind].get(name, 0.0), r[kind][name]
            if abs(cv - rv) > rtol * scale:
                print("%s %s: circ %.9g reference %.9g" % (kind, name, cv, rv))
                bad += 1
        print("%s: %d compared, largest |value| %.4g" % (kind, len(r[kind]), scale))
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        main_compare(sys.argv[2:])
    elif sys.argv[1] == "ablate":
        main_ablate(sys.argv[2:])
    else:
        main_ref(sys.argv[1:])
