#!/usr/bin/python3
"""Independent PyTorch reference for circ's patching and attribution.

A GPT-2 written from the formulas (float64), decomposed the way circ's graph
is: every receiver (each head's q, k and v input, each MLP input, the logits)
reads the residual plus, for each patched upstream node u, (ref_u - cur_u).
Nothing here comes from circ's C code.

  patch_ref.py make DIR [--layers L --heads H --embd C --vocab V --ctx P
                        --T T --n N --seed S --metric M]
      writes DIR/model (config.json, model.safetensors: random weights),
      DIR/tokens.jsonl (a token stream) and DIR/ref.json (reference values:
      clean/ref metrics, exact, eap and eap-ig scores per edge, and the
      faithfulness of a random circuit written to DIR/circuit.jsonl)
  patch_ref.py compare REF.json KEY SCORES.jsonl [--atol A --rtol R]
      compares a `circ cat` of a scores stream with the reference
"""
import json, math, sys, argparse

from stio import write_safetensors

# compare reads JSON alone: it need not pay PyTorch's 2-3 s import
if __name__ != "__main__" or sys.argv[1:2] != ["compare"]:
    import torch

    torch.set_default_dtype(torch.float64)


class Model:
    def __init__(self, L, H, C, V, P, seed):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s, sd=0.02: (torch.randn(*s, generator=g) * sd)
        self.L, self.H, self.C, self.V, self.P, self.D = L, H, C, V, P, C // H
        self.F = 4 * C
        self.p = {"wte.weight": r(V, C, sd=0.5), "wpe.weight": r(P, C, sd=0.3)}
        for l in range(L):
            pre = f"h.{l}."
            self.p[pre + "ln_1.weight"] = 1 + r(C, sd=0.1)
            self.p[pre + "ln_1.bias"] = r(C, sd=0.1)
            self.p[pre + "attn.c_attn.weight"] = r(C, 3 * C, sd=0.3)
            self.p[pre + "attn.c_attn.bias"] = r(3 * C, sd=0.1)
            self.p[pre + "attn.c_proj.weight"] = r(C, C, sd=0.3)
            self.p[pre + "attn.c_proj.bias"] = r(C, sd=0.1)
            self.p[pre + "ln_2.weight"] = 1 + r(C, sd=0.1)
            self.p[pre + "ln_2.bias"] = r(C, sd=0.1)
            self.p[pre + "mlp.c_fc.weight"] = r(C, self.F, sd=0.3)
            self.p[pre + "mlp.c_fc.bias"] = r(self.F, sd=0.1)
            self.p[pre + "mlp.c_proj.weight"] = r(self.F, C, sd=0.2)
            self.p[pre + "mlp.c_proj.bias"] = r(C, sd=0.1)
        self.p["ln_f.weight"] = 1 + r(C, sd=0.1)
        self.p["ln_f.bias"] = r(C, sd=0.1)
        # round to float32 so that both sides use the same weights
        self.p = {k: v.to(torch.float32).to(torch.float64) for k, v in self.p.items()}

    def save(self, d):
        import os
        os.makedirs(d, exist_ok=True)
        write_safetensors(d + "/model.safetensors", {"transformer." + k: v for k, v in self.p.items()})
        json.dump({"model_type": "gpt2", "n_layer": self.L, "n_head": self.H, "n_embd": self.C,
                   "vocab_size": self.V, "n_positions": self.P, "n_ctx": self.P,
                   "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"},
                  open(d + "/config.json", "w"))

    # numbering (circ's): upstream 0 input, then per layer heads then mlp
    def n_up(self):
        return 1 + self.L * (self.H + 1)

    def head(self, l, h):
        return 1 + l * (self.H + 1) + h

    def mlp(self, l):
        return 1 + l * (self.H + 1) + self.H

    def recvs(self):
        """(name, upstream count, kind, layer, head, c) in circ's receiver order."""
        out = []
        for l in range(self.L):
            for h in range(self.H):
                for c, ch in enumerate("qkv"):
                    out.append((f"a{l}.h{h}<{ch}>", 1 + l * (self.H + 1), "qkv", l, h, c))
            out.append((f"m{l}", 1 + l * (self.H + 1) + self.H, "mlp", l, None, None))
        out.append(("logits", self.n_up(), "logits", self.L, None, None))
        return out

    def node_name(self, u):
        if u == 0:
            return "input"
        l, k = divmod(u - 1, self.H + 1)
        return f"a{l}.h{k}" if k < self.H else f"m{l}"

    def edges(self):
        es = []
        for ri, (rn, n_in, *_rest) in enumerate(self.recvs()):
            for u in range(n_in):
                es.append((f"{self.node_name(u)}->{rn}", ri, u))
        return es

    @staticmethod
    def ln(x, w, b):
        m = x.mean(-1, keepdim=True)
        v = ((x - m) ** 2).mean(-1, keepdim=True)
        return (x - m) / torch.sqrt(v + 1e-5) * w + b

    @staticmethod
    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def run(self, tokens, patch=None, ref=None, input_embed=None, probes=None, act_delta=None):
        """tokens (T). patch: set of (recv index, upstream) edges patched, with ref
        outputs ref[u] (T, C). probes: dict recv index -> zero tensor added to the
        receiver's input (for gradients). act_delta: (unit nodes, delta) added to
        every receiver after the unit. Returns logits (T, V), node outputs."""
        p, T, C, H, D = self.p, len(tokens), self.C, self.H, self.D
        patch = patch or set()
        outs = [None] * self.n_up()
        x = p["wte.weight"][tokens] if input_embed is None else input_embed
        outs[0] = x
        resid = x + p["wpe.weight"][:T]
        recvs = self.recvs()
        def recv_input(ri, resid):
            inp = resid
            for u in range(recvs[ri][1]):
                if (ri, u) in patch:
                    inp = inp + (ref[u] - outs[u])
            if act_delta is not None and act_delta[0] < ri_stage(ri):
                inp = inp + act_delta[1]
            if probes is not None and ri in probes:
                inp = inp + probes[ri]
            return inp
        def ri_stage(ri):
            _, _, kind, l, _, _ = recvs[ri]
            return 2 * l if kind == "qkv" else 2 * l + 1 if kind == "mlp" else 2 * self.L
        ri = 0
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        for l in range(self.L):
            pre = f"h.{l}."
            W, bb = p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]
            Wo = p[pre + "attn.c_proj.weight"]
            head_outs = []
            for h in range(H):
                qkv = []
                for c in range(3):
                    inp = recv_input(ri, resid)
                    ri += 1
                    a = self.ln(inp, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
                    cols = slice(c * C + h * D, c * C + (h + 1) * D)
                    qkv.append(a @ W[:, cols] + bb[cols])
                q, k, v = qkv
                att = (q @ k.T) / math.sqrt(D)
                att = att.masked_fill(~mask, float("-inf")).softmax(-1)
                z = att @ v
                o = z @ Wo[h * D:(h + 1) * D, :]
                head_outs.append(o)
            for h in range(H):
                outs[self.head(l, h)] = head_outs[h]
            resid = resid + sum(head_outs) + p[pre + "attn.c_proj.bias"]
            inp = recv_input(ri, resid)
            ri += 1
            a = self.ln(inp, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
            hmid = self.gelu(a @ p[pre + "mlp.c_fc.weight"] + p[pre + "mlp.c_fc.bias"])
            o = hmid @ p[pre + "mlp.c_proj.weight"] + p[pre + "mlp.c_proj.bias"]
            outs[self.mlp(l)] = o
            resid = resid + o
        inp = recv_input(ri, resid)
        logits = self.ln(inp, p["ln_f.weight"], p["ln_f.bias"]) @ p["wte.weight"].T
        return logits, outs


def metric(kind, logits, ex, clean_logp=None):
    pos = ex["pos"] if isinstance(ex["pos"], list) else [ex["pos"]]
    m = 0
    for i, t in enumerate(pos):
        z = logits[t]
        lp = z.log_softmax(-1)
        if kind == "logit_diff":
            if len(pos) == 1:
                m = m + z[ex["answer"]].mean() - z[ex["wrong"]].mean()
            else:
                m = m + (z[ex["answer"][i]] - z[ex["wrong"][i]]) / len(pos)
        elif kind == "prob_diff":
            pr = lp.exp()
            m = m + pr[ex["answer"]].sum() - pr[ex["wrong"]].sum()
        elif kind == "logprob":
            if len(pos) == 1:
                m = m + torch.logsumexp(lp[ex["answer"]], 0)
            else:
                m = m + lp[ex["answer"][i]] / len(pos)
        elif kind == "kl":
            P = clean_logp[i]
            m = m + (P.exp() * (P - lp)).sum() / len(pos)
    return m


def loss_of(kind, m):
    return m if kind == "kl" else -m


def acdc_ref(M, exs, kind, tau):
    """ACDC by brute force: every test is a full patched forward. Loss: kl
    from the clean model (kind kl) or -metric. Receivers from logits down,
    incoming edges from the latest upstream node down; a receiver whose
    node reaches nothing is skipped. Returns the kept edge names (before
    dangling-edge removal, which circ does after; the test compares after
    removing dangling edges on both sides with circ-prune's own rule)."""
    with torch.no_grad():
        data = []
        for ex in exs:
            lc, oc = M.run(ex["clean"])
            lr, orf = M.run(ex["corrupt"])
            pos = ex["pos"] if isinstance(ex["pos"], list) else [ex["pos"]]
            clp = torch.stack([lc[t].log_softmax(-1) for t in pos])
            data.append((ex, orf, clp))
        edges = M.edges()
        removed = set()
        def loss():
            tot = 0.0
            for ex, orf, clp in data:
                lp_, _ = M.run(ex["clean"], patch=removed, ref=orf)
                tot += loss_of(kind, metric(kind, lp_, ex, clp).item())
            return tot / len(data)
        cur = loss()
        recvs = M.recvs()
        kept_out = lambda node: node == "logits" or any(
            M.node_name(u) == node and (ri, u) not in removed for _, ri, u in edges)
        for ri in range(len(recvs) - 1, -1, -1):
            rname = recvs[ri][0]
            node = rname.split("<")[0]
            ins = [(name, r2, u) for name, r2, u in edges if r2 == ri]
            if not kept_out(node):
                removed |= {(ri, u) for _, _, u in ins}
                continue
            for name, _, u in reversed(ins):
                removed.add((ri, u))
                after = loss()
                if after - cur < tau:
                    cur = after
                else:
                    removed.discard((ri, u))
        return [name for name, ri, u in edges if (ri, u) not in removed]


def make(args):
    torch.manual_seed(args.seed)
    M = Model(args.layers, args.heads, args.embd, args.vocab, args.ctx, args.seed)
    M.save(args.dir + "/model")
    g = torch.Generator().manual_seed(args.seed + 1)
    exs = []
    for i in range(args.n):
        clean = torch.randint(0, args.vocab, (args.T,), generator=g).tolist()
        corrupt = list(clean)
        for j in torch.randperm(args.T, generator=g)[: max(1, args.T // 3)].tolist():
            corrupt[j] = int(torch.randint(0, args.vocab, (1,), generator=g))
        ans, wrong = torch.randperm(args.vocab, generator=g)[:2].tolist()
        ex = {"id": i, "clean": clean, "corrupt": corrupt, "pos": args.T - 1, "answer": [ans], "wrong": [wrong]}
        if args.metric == "prob_diff":
            ex["answer"] = torch.randperm(args.vocab, generator=g)[:3].tolist()
            ex["wrong"] = [w for w in range(args.vocab) if w not in ex["answer"]][:4]
        exs.append(ex)
    with open(args.dir + "/tokens.jsonl", "w") as f:
        f.write(json.dumps({"format": "circ", "version": 1, "kind": "tokens", "metric": args.metric}) + "\n")
        for ex in exs:
            rec = dict(ex)
            rec["clean"] = {"dtype": "i32", "shape": [args.T], "data": ex["clean"]}
            rec["corrupt"] = {"dtype": "i32", "shape": [args.T], "data": ex["corrupt"]}
            f.write(json.dumps(rec) + "\n")
    kind = args.metric
    edges = M.edges()
    exact = [0.0] * len(edges)
    eap = [0.0] * len(edges)
    eapig = [0.0] * len(edges)
    igact = [0.0] * len(edges)
    exact_mean = [0.0] * len(edges)
    # mean ablation: each node's output averaged over every position of every clean prompt
    with torch.no_grad():
        acc = None
        for ex in exs:
            _, oc = M.run(ex["clean"])
            s_ = [o.sum(0) for o in oc]
            acc = s_ if acc is None else [a + b for a, b in zip(acc, s_)]
        means = [a / (len(exs) * args.T) for a in acc]
    mc_all, mr_all = [], []
    # a random circuit: each edge kept with probability 1/2
    keep = (torch.rand(len(edges), generator=g) < 0.5).tolist()
    mcirc_all = []
    for ex in exs:
        with torch.no_grad():
            lc, oc = M.run(ex["clean"])
            lr, orf = M.run(ex["corrupt"])
        pos = ex["pos"] if isinstance(ex["pos"], list) else [ex["pos"]]
        clp = torch.stack([lc[t].log_softmax(-1) for t in pos])
        mc = metric(kind, lc, ex, clp).item()
        mr = metric(kind, lr, ex, clp).item()
        mc_all.append(mc)
        mr_all.append(mr)
        with torch.no_grad():
            for ei, (name, ri, u) in enumerate(edges):
                lp_, _ = M.run(ex["clean"], patch={(ri, u)}, ref=orf)
                exact[ei] += loss_of(kind, metric(kind, lp_, ex, clp).item()) - loss_of(kind, mc)
            patched = {(ri, u) for ei, (name, ri, u) in enumerate(edges) if not keep[ei]}
            lp_, _ = M.run(ex["clean"], patch=patched, ref=orf)
            mcirc_all.append(metric(kind, lp_, ex, clp).item())
        with torch.no_grad():
            mref = [means[u].expand(args.T, M.C) for u in range(M.n_up())]
            for ei, (name, ri, u) in enumerate(edges):
                lp_, _ = M.run(ex["clean"], patch={(ri, u)}, ref=mref)
                exact_mean[ei] += loss_of(kind, metric(kind, lp_, ex, clp).item()) - loss_of(kind, mc)
        diff = [orf[u] - oc[u] for u in range(M.n_up())]
        def grads(input_embed=None, act_delta=None):
            probes = {ri: torch.zeros(len(ex["clean"]), M.C, requires_grad=True) for ri in range(len(M.recvs()))}
            lg, _ = M.run(ex["clean"], probes=probes, input_embed=input_embed, act_delta=act_delta)
            loss_of(kind, metric(kind, lg, ex, clp)).backward()
            return {ri: pr.grad for ri, pr in probes.items()}
        G = grads()
        for ei, (name, ri, u) in enumerate(edges):
            eap[ei] += (diff[u] * G[ri]).sum().item()
        steps = args.steps
        Gs = None
        for k in range(steps):
            a = k / steps
            x = orf[0] + a * (oc[0] - orf[0])
            Gk = grads(input_embed=x.detach())
            Gs = Gk if Gs is None else {ri: Gs[ri] + Gk[ri] for ri in Gs}
        for ei, (name, ri, u) in enumerate(edges):
            eapig[ei] += (diff[u] * Gs[ri]).sum().item() / steps
        # eap-ig-activations: one unit (input, a layer's heads, an MLP) interpolated at a time
        units = [([0], -1)]
        for l in range(M.L):
            units.append(([M.head(l, h) for h in range(M.H)], 2 * l))
            units.append(([M.mlp(l)], 2 * l + 1))
        for nodes, stage in units:
            Gs = None
            for k in range(1, steps + 1):
                a = k / steps
                delta = sum((1 - a) * (orf[u] - oc[u]) for u in nodes).detach()
                Gk = grads(act_delta=(stage, delta))
                Gs = Gk if Gs is None else {ri: Gs[ri] + Gk[ri] for ri in Gs}
            for ei, (name, ri, u) in enumerate(edges):
                if u in nodes:
                    igact[ei] += (diff[u] * Gs[ri]).sum().item() / steps
    n = len(exs)
    mM, m0, mC = sum(mc_all) / n, sum(mr_all) / n, sum(mcirc_all) / n
    acdc = acdc_ref(M, exs, kind, args.tau) if args.tau > 0 else None
    with open(args.dir + "/circuit.jsonl", "w") as f:
        f.write(json.dumps({"format": "circ", "version": 1, "kind": "circuit",
                            "graph": {"n_layer": M.L, "n_head": M.H, "level": "edge"},
                            "source": {"method": "random", "mode": "test"}, "n_edges_total": len(edges)}) + "\n")
        for ei, (name, ri, u) in enumerate(edges):
            if keep[ei]:
                f.write(json.dumps({"edge": name}) + "\n")
    ref = {"metric": kind, "n_edges": len(edges), "edges": [e[0] for e in edges],
           "metric_clean": mc_all, "metric_ref": mr_all,
           "exact": [s / n for s in exact], "eap": [s / n for s in eap], "eap-ig": [s / n for s in eapig],
           "eap-ig-activations": [s / n for s in igact], "exact-mean": [s / n for s in exact_mean], "acdc": acdc,
           "circuit": {"metric_model": mM, "metric_empty": m0, "metric_circuit": mC,
                       "faithfulness": (mC - m0) / (mM - m0)}}
    json.dump(ref, open(args.dir + "/ref.json", "w"))


def undangle(edges):
    """Drops edges not on a path input -> logits (nodes named without <q|k|v>)."""
    edges = set(edges)
    while True:
        parts = [(e, e.split("->")[0], e.split("->")[1].split("<")[0]) for e in edges]
        reach = {"input"}
        changed = True
        while changed:
            changed = False
            for e, u, v in parts:
                if u in reach and v not in reach:
                    reach.add(v)
                    changed = True
        live = {"logits"}
        changed = True
        while changed:
            changed = False
            for e, u, v in parts:
                if v in live and u not in live:
                    live.add(u)
                    changed = True
        keep = {e for e, u, v in parts if u in reach and v in live}
        if keep == edges:
            return edges
        edges = keep


def compare(args):
    ref = json.load(open(args.ref))
    if args.key == "acdc":
        # the circuit after dangling-edge removal must equal the reference's
        got = {json.loads(l)["edge"] for i, l in enumerate(open(args.scores))
               if i > 0 and not l.startswith('{"$end"')}
        want = undangle(set(ref["acdc"]))
        if got != want:
            print(f"FAIL: acdc differs: circ only {sorted(got - want)[:8]}, reference only {sorted(want - got)[:8]}")
            sys.exit(1)
        print(f"acdc: circ and the reference keep the same {len(got)} edges")
        return
    want = dict(zip(ref["edges"], ref[args.key]))
    got = {}
    for i, line in enumerate(open(args.scores)):
        if i == 0:
            continue
        r = json.loads(line)
        if "$end" in r:  # the end record (stream.h)
            continue
        got[r["edge"]] = r["score"]
    if set(got) != set(want):
        print(f"edge sets differ: {len(got)} scored, {len(want)} in the reference; "
              f"missing {sorted(set(want) - set(got))[:5]} extra {sorted(set(got) - set(want))[:5]}")
        sys.exit(1)
    scale = max(abs(v) for v in want.values()) or 1.0
    worst, wname = 0.0, None
    for k, v in want.items():
        err = abs(got[k] - v) - args.rtol * abs(v)
        if err > worst:
            worst, wname = err, k
    print(f"{args.key}: {len(want)} edges, largest |score| {scale:.4g}, "
          f"worst excess error {worst:.3g} at {wname}")
    # a floor, for scores that vanish (eap on kl: the gradient is zero at the clean run)
    if worst > args.atol * max(scale, 1e-3):
        print(f"FAIL: {wname}: circ {got[wname]!r} reference {want[wname]!r}")
        sys.exit(1)


ap = argparse.ArgumentParser()
sub = ap.add_subparsers(dest="cmd", required=True)
mk = sub.add_parser("make")
mk.add_argument("dir")
for k, v in [("layers", 2), ("heads", 3), ("embd", 24), ("vocab", 40), ("ctx", 16), ("T", 7), ("n", 3), ("seed", 1), ("steps", 5)]:
    mk.add_argument("--" + k, type=int, default=v)
mk.add_argument("--metric", default="logit_diff")
mk.add_argument("--tau", type=float, default=0.0)
cp = sub.add_parser("compare")
cp.add_argument("ref")
cp.add_argument("key")
cp.add_argument("scores")
cp.add_argument("--atol", type=float, default=2e-4)
cp.add_argument("--rtol", type=float, default=1e-3)
if __name__ == "__main__":  # tests/ref/acdc_ref.py imports Model and metric
    args = ap.parse_args()
    make(args) if args.cmd == "make" else compare(args)
