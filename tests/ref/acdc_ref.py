#!/usr/bin/python3
"""ACDC in the reference implementation's order, re-implemented independently
of circ's C code, to check `circ-prune --acdc --acdc-order reference`.

The reference (ArthurConmy/Automatic-Circuit-Discovery) builds a graph of
hook points: the residual stream after the last block (its output node), per
block the MLP's input and output, each head's result, q, k and v and its q, k
and v inputs, and the embedding. Walking from the output backwards it adds
an ADDITION edge from each writer (embedding, head result, MLP output) to
every later reader (the output, MLP inputs, q/k/v inputs), in the order it
meets them; a DIRECT_COMPUTATION edge from each q/k/v input to the head's
q/k/v; PLACEHOLDER edges (never tested) from q/k/v to the head's result and
from the MLP input to its output. It then visits the hook points in reverse
forward order (per block: MLP output, MLP input, head results, v, k, q,
v inputs, k inputs, q inputs; each hook's heads in the order it added them),
skips (and cuts the incoming edges of) a node none of whose outgoing edges
is left, and tests each incoming edge in insertion order (its names mode
reverses the order of the writers' hook names, its indices mode the heads
within one). Here that graph is rebuilt with its own names and rules; the
forwards are tests/ref/patch_ref.py's exact patching (float64): an absent
ADDITION edge patches that one edge; an absent DIRECT edge patches every
edge into the head's q (k, v) input.

  acdc_ref.py MODEL_DIR TOKENS.jsonl DECISIONS.jsonl CIRCUIT.jsonl
              [--tau T] [--indices normal|reverse] [--names normal|reverse]
              [--convention acdc|eap-ig] [--metric M] [--ablation resample|zero]
              [--abs-change]
      TOKENS, DECISIONS and CIRCUIT are `circ-cat --no-header` outputs of the
      token stream, circ-prune's --log and its circuit. Exit 0 when circ made
      the same tests in the same order with the same decisions and kept the
      same edges (after dropping dangling edges on both sides); 1 otherwise,
      naming the first difference.
      MODEL_DIR may be a family model (tests/data/families, issue 16); its
      forwards are then tests/ref/family_recv.py's (float64, each receiver
      reading its own input, patched as patch_ref.py patches).
      --parallel absent|reference (parallel blocks, GPT-NeoX): the
      reference's graph gives every layer's heads an edge into that layer's
      MLP input (blocks.l.hook_mlp_in) whatever the block; in a parallel
      block the MLP reads the block's input, so those edges do not exist in
      the computation. "absent" (circ's graph, the default): they are not
      there and not tested. "reference": they are, as the reference has
      them: removing one adds the head's corrupted minus clean output to the
      MLP's input, which never held it (the reference's receiver hook does
      exactly this).
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from patch_ref import Model, metric, loss_of, undangle  # noqa: E402
from stio import read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
ADD, DIRECT, PLACEHOLDER = "addition", "direct", "placeholder"


def load_model(d):
    cfg = json.load(open(d + "/config.json"))
    M = Model.__new__(Model)
    M.L, M.H, M.C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    M.V, M.P, M.D = cfg["vocab_size"], cfg["n_positions"], M.C // M.H
    w = read_safetensors(d + "/model.safetensors", float64=True)
    M.p = {k.removeprefix("transformer."): torch.tensor(v) for k, v in w.items()}
    return M


class FamModel:
    """A family model (tests/data/families) with patch_ref.Model's face:
    L, H, recvs(), node_name(u), run(tokens, patch, ref) -> (logits, outs),
    on tests/ref/family_recv.py's forward."""

    def __init__(self, d):
        import family_recv as fr
        self.fr = fr
        self.a, self.names, self.W = fr.load(d)
        self.L, self.H = self.a["n_layer"], self.a["n_head"]
        self.parallel = bool(self.a["parallel_residual"])
        self.recv = fr.receivers(self.a, False)
        self.nodes = fr.node_names(self.a)

    def recvs(self):
        out = []
        for r in self.recv:
            l, kind, h = r
            qkv = kind in ("q", "k", "v")
            out.append((self.fr.recv_name(r), self.fr.n_in(self.a, r), "qkv" if qkv else kind, l,
                        h if qkv else None, "qkv".index(kind) if qkv else None))
        return out

    def node_name(self, u):
        return self.nodes[u]

    def run(self, tokens, patch=None, ref=None, input_embed=None):
        assert input_embed is None
        by = {}
        for ri, u in sorted(patch or ()):
            by.setdefault(ri, []).append(u)
        outs = []
        lg = self.fr.forward(self.a, self.W, self.names, torch.tensor(tokens), self.recv, None,
                             False, patch=by, ref=ref, outs=outs)
        return lg, outs


class Graph:
    """The reference's correspondence: nodes (hook name, index) and edges
    child -> {parent hook name -> {parent index -> [type, present]}}, both in
    insertion order."""

    def __init__(self, L, H, skip_own_mlp=False):
        """skip_own_mlp: no edge from a layer's heads to its own MLP input
        (parallel blocks as circ's graph has them)."""
        self.edges = OrderedDict()
        self.own_mlp = not skip_own_mlp
        self.nodes = OrderedDict()  # hook name -> [indices]
        out = (f"blocks.{L - 1}.hook_resid_post", None)
        self.output = out
        self.node(out)
        readers = [out]
        for l in range(L - 1, -1, -1):
            mlp_out, mlp_in = (f"blocks.{l}.hook_mlp_out", None), (f"blocks.{l}.hook_mlp_in", None)
            self.node(mlp_out)
            for r in readers:
                self.edge(mlp_out, r, ADD)
            self.node(mlp_in)
            self.edge(mlp_in, mlp_out, PLACEHOLDER)
            readers.append(mlp_in)
            new = []
            for h in range(H - 1, -1, -1):
                res = (f"blocks.{l}.attn.hook_result", h)
                self.node(res)
                for r in readers:
                    if not (skip_own_mlp and r == mlp_in):
                        self.edge(res, r, ADD)
                for c in "qkv":
                    x, xin = (f"blocks.{l}.attn.hook_{c}", h), (f"blocks.{l}.hook_{c}_input", h)
                    self.node(x)
                    self.node(xin)
                    self.edge(x, res, PLACEHOLDER)
                    self.edge(xin, x, DIRECT)
                    new.append(xin)
            readers += new
        emb = ("blocks.0.hook_resid_pre", None)
        self.embed = emb
        self.node(emb)
        for r in readers:
            self.edge(emb, r, ADD)
        # the visiting order: hook names in reverse forward order
        fwd = ["blocks.0.hook_resid_pre"]
        for l in range(L):
            fwd += [f"blocks.{l}.hook_{c}_input" for c in "qkv"]
            fwd += [f"blocks.{l}.attn.hook_{c}" for c in "qkv"]
            fwd += [f"blocks.{l}.attn.hook_result", f"blocks.{l}.hook_mlp_in", f"blocks.{l}.hook_mlp_out"]
        fwd.append(f"blocks.{L - 1}.hook_resid_post")
        self.visit = [(n, i) for n in reversed(fwd) for i in self.nodes[n]]

    def node(self, n):
        self.nodes.setdefault(n[0], []).append(n[1])
        self.edges[n] = OrderedDict()

    def edge(self, parent, child, kind):
        self.edges[child].setdefault(parent[0], OrderedDict())[parent[1]] = [kind, True]

    def remove(self, child, pname, pidx):
        del self.edges[child][pname][pidx]
        if not self.edges[child][pname]:
            del self.edges[child][pname]

    def connected(self, n):
        return any(n[1] in ps.get(n[0], {}) and ps[n[0]][n[1]][1] for ps in self.edges.values())

    def has(self, child, parent):
        e = self.edges[child].get(parent[0], {}).get(parent[1])
        return e is not None and e[1]


def writer(M, u):
    """circ's upstream node u as the reference's writer node."""
    if u == 0:
        return ("blocks.0.hook_resid_pre", None)
    l, k = divmod(u - 1, M.H + 1)
    return (f"blocks.{l}.attn.hook_result", k) if k < M.H else (f"blocks.{l}.hook_mlp_out", None)


def patched(M, G):
    """circ's (receiver, upstream) pairs patched in the state of G."""
    out = set()
    for ri, (_, n_in, kind, l, h, c) in enumerate(M.recvs()):
        if kind == "qkv":
            ch = "qkv"[c]
            reader = (f"blocks.{l}.hook_{ch}_input", h)
            if not G.has((f"blocks.{l}.attn.hook_{ch}", h), reader):  # the whole input
                out |= {(ri, u) for u in range(n_in)}
                continue
        elif kind == "mlp":
            reader = (f"blocks.{l}.hook_mlp_in", None)
            # parallel blocks in the reference's graph: its own layer's
            # heads, which the MLP does not read, patched all the same
            own = range(n_in, n_in + M.H) if getattr(M, "parallel", False) and G.own_mlp else ()
            out |= {(ri, u) for u in own if not G.has(reader, writer(M, u))}
        else:
            reader = G.output
        out |= {(ri, u) for u in range(n_in) if not G.has(reader, writer(M, u))}
    return out


def circ_name(M, child, pname, pidx):
    """The test's name in circ's terms: an edge, or a receiver (DIRECT)."""
    def node(n, i):
        if n == "blocks.0.hook_resid_pre":
            return "input"
        l = n.split(".")[1]
        return f"a{l}.h{i}" if "hook_result" in n else f"m{l}"
    cn, ci = child
    l = cn.split(".")[1]
    if "attn.hook_" in cn:  # a DIRECT edge into q, k or v
        return f"a{l}.h{ci}<{cn[-1]}>"
    recv = "logits" if "resid_post" in cn else f"m{l}" if "mlp_in" in cn else f"a{l}.h{ci}<{cn.split('_')[-2][-1]}>"
    return f"{node(pname, pidx)}->{recv}"


def run(M, exs, tau, indices, names, acdc_conv, kind="kl", zero=False, abs_change=False,
        parallel="absent"):
    fam = isinstance(M, FamModel)
    if fam:
        acdc_conv = False  # rotary: no positional embedding, one convention
    else:
        wpe = M.p["wpe.weight"]
    if acdc_conv:  # the input node is token plus position
        M.p = dict(M.p, **{"wpe.weight": torch.zeros_like(wpe)})
    def embed(toks):
        if not acdc_conv:
            return None
        return M.p["wte.weight"][toks] + wpe[: len(toks)]
    data = []
    with torch.no_grad():
        for ex in exs:
            lc, _ = M.run(ex["clean"], input_embed=embed(ex["clean"]))
            _, orf = M.run(ex["corrupt"], input_embed=embed(ex["corrupt"]))
            if zero:  # every node's reference output is 0
                orf = [torch.zeros_like(o) for o in orf]
            pos = ex["pos"] if isinstance(ex["pos"], list) else [ex["pos"]]
            data.append((ex, orf, torch.stack([lc[t].log_softmax(-1) for t in pos])))
    def loss(G):
        pset, tot = patched(M, G), 0.0
        with torch.no_grad():
            for ex, orf, clp in data:
                lg, _ = M.run(ex["clean"], patch=pset, ref=orf, input_embed=embed(ex["clean"]))
                tot += loss_of(kind, metric(kind, lg, ex, clp).item())
        return tot / len(data)
    G = Graph(M.L, M.H, skip_own_mlp=getattr(M, "parallel", False) and parallel == "absent")
    cur, tests = loss(G), []
    for k, n in enumerate(G.visit):
        if k > 0 and n != G.embed and not G.connected(n):
            for pname in list(G.edges[n]):
                for pidx in list(G.edges[n][pname]):
                    G.remove(n, pname, pidx)
            continue
        pnames = list(G.edges[n])
        if names == "reverse":
            pnames.reverse()
        for pname in pnames:
            pidxs = list(G.edges[n][pname])
            if indices == "reverse":
                pidxs.reverse()
            for pidx in pidxs:
                e = G.edges[n][pname][pidx]
                if e[0] == PLACEHOLDER:
                    continue
                e[1] = False
                after = loss(G)
                change = abs(after - cur) if abs_change else after - cur
                kept = not (change < tau)
                if kept:
                    e[1] = True
                else:
                    G.remove(n, pname, pidx)
                    cur = after
                tests.append((circ_name(M, n, pname, pidx), kept))
    kept_edges = [f"{M.node_name(u)}->{rn}" for ri, (rn, n_in, *_r) in enumerate(M.recvs())
                  for u in range(n_in) if (ri, u) not in patched(M, G)]
    return tests, undangle(kept_edges)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("decisions")
    ap.add_argument("circuit")
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--indices", choices=["normal", "reverse"], default="normal")
    ap.add_argument("--names", choices=["normal", "reverse"], default="normal")
    ap.add_argument("--convention", choices=["acdc", "eap-ig"], default="acdc")
    ap.add_argument("--metric", choices=["kl", "logit_diff", "prob_diff", "logprob"], default="kl")
    ap.add_argument("--ablation", choices=["resample", "zero"], default="resample")
    ap.add_argument("--abs-change", action="store_true")
    ap.add_argument("--parallel", choices=["absent", "reference"], default="absent")
    a = ap.parse_args()
    mt = json.load(open(a.model + "/config.json")).get("model_type", "gpt2")
    M = load_model(a.model) if mt == "gpt2" else FamModel(a.model)
    exs = []
    for line in open(a.tokens):
        r = json.loads(line)
        r["clean"], r["corrupt"] = r["clean"]["data"], r["corrupt"]["data"]
        exs.append(r)
    want, want_circ = run(M, exs, a.tau, a.indices, a.names, a.convention == "acdc", a.metric,
                          a.ablation == "zero", a.abs_change, a.parallel)
    got = [(r.get("edge") or r["receiver"], r["kept"]) for r in map(json.loads, open(a.decisions))]
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            print(f"FAIL: test {i + 1}: reference order {w[0]} kept={w[1]}, circ {g[0]} kept={g[1]}")
            sys.exit(1)
    if len(want) != len(got):
        print(f"FAIL: the reference order makes {len(want)} tests, circ {len(got)}")
        sys.exit(1)
    got_circ = {json.loads(l)["edge"] for l in open(a.circuit)}
    if got_circ != want_circ:
        print(f"FAIL: circuits differ: circ only {sorted(got_circ - want_circ)}, "
              f"reference order only {sorted(want_circ - got_circ)}")
        sys.exit(1)
    whole = sum(1 for t in want if "->" not in t[0])
    print(f"acdc reference order: the same {len(want)} tests ({whole} of whole q/k/v inputs) "
          f"and decisions, the same {len(got_circ)} edges kept")


if __name__ == "__main__":
    main()
