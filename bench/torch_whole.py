#!/usr/bin/python3
"""The PyTorch side of bench/whole.sh: whole commands as a researcher would
write them in plain PyTorch 1.13 (no TransformerLens), for the same result
as the circ command beside them.

Usage:
  torch_whole.py run MODE MODEL_DIR TOKENS N THREADS OUT [options]
  torch_whole.py check MODE OURS CIRC_JSONL
MODE: forward, eap, eap-ig, eap-ig-activations, exact, acdc, curve.
`run` is what the shell times end to end (import torch, the safetensors
memory-mapped as the safetensors library does, the tokens, the work, the
output); it prints "inner SECONDS", the work alone (the inner loop: from
the loaded model and tokens to the result in memory). `check` compares OUT
with circ's output as `circ-cat --json --no-header` prints it and prints
"check REL WHAT": max |difference| / max |value|, or for acdc the decisions
that differ. Options of run: --logits (forward: write every read row's
full logits to OUT.npy), --steps K (eap-ig*, default 5), --level edge|node
(exact), --tau T (acdc), --scores JSONL (curve: circ's scores, ranked as
circ-patch --curve ranks them), --batch B (attribution batches, default 16
as circ's).

What each mode computes (GPT-2 nodes as circ numbers them: the input (token
embedding), then per layer its heads (without the c_proj bias) and its MLP;
receivers per layer each head's q, k and v input, then the MLP input, then
the logits; scores are effects on the loss -metric, summed over examples,
divided by their number):
  forward   one no_grad forward of all N prompts (fused c_attn, F.layer_norm,
            tanh GELU, logits at the read rows only); per example the metric
            (logit_diff: mean over read rows), top-5 probabilities; with
            --logits also every read row's logits.
  eap       per batch: the corrupted forward (no_grad) keeping node outputs;
            the clean forward with every receiver's input its own tensor
            (each head's q, k, v input the residual expanded per head with its
            own ln_1, the MLP inputs and the final residual, retain_grad),
            one backward of -metric; scores = (corrupt - clean outputs) .
            receiver gradients, one matrix product per layer.
  eap-ig    the same with the gradients averaged over `steps` runs whose
            token embedding is corrupt + k/steps (clean - corrupt),
            k = 0..steps-1 (circ's eap-ig, lib/attrib.h).
  eap-ig-activations  per unit (the input; each layer's heads; each MLP) and
            k = 1..steps: the clean run with the unit's output moved to
            k/steps clean + (1 - k/steps) corrupt; the unit's edges score with
            the gradients averaged over its runs.
  exact     per receiver, every incoming edge patched alone, the edges
            batched as a batch dimension, each run resumed at the receiver's
            layer from the cached clean residual (level node: a head's q, k
            and v inputs patched together).
  acdc      (simpler than circ's: no incremental reuse inside a stage, one
            batch of all N prompts) ACDC as lib/acdc.h states it: receivers
            from the logits down, a receiver whose node has no kept outgoing
            edge is dropped, each incoming edge from the latest node down is
            patched and stays patched if the loss (KL from the clean model)
            rises by less than tau. Each test is one patched forward from the
            receiver's stage up, the stages below being the clean run; a
            receiver's input is the run's residual minus the patched edges'
            (current - corrupt) outputs (one matrix product per layer).
  curve     (simpler: every circuit run from layer 0) the top floor(f * E)
            edges of the scores by signed score kept, every other edge patched,
            at circ-patch's default fractions; mean metric per circuit.
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import load_mmap  # noqa: E402

FRACTIONS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def read_tokens(path, n):
    clean, corrupt, pos, ans, wrong = [], [], [], [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "format" in r:
                continue
            p = r["pos"] if isinstance(r["pos"], list) else [r["pos"]]
            assert len(r["answer"]) in (1, len(p)) and len(r["wrong"]) == len(r["answer"]), \
                "one answer and one wrong id, or one per read row"
            clean.append(r["clean"]["data"])
            corrupt.append(r["corrupt"]["data"])
            pos.append(p)
            ans.append(r["answer"] * (len(p) // len(r["answer"])))
            wrong.append(r["wrong"] * (len(p) // len(r["wrong"])))
            if len(clean) == n:
                break
    return (torch.tensor(clean), torch.tensor(corrupt), torch.tensor(pos), torch.tensor(ans),
            torch.tensor(wrong))


class GPT2:
    def __init__(self, cfg, w):
        self.L, self.H, self.C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
        self.D = self.C // self.H
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        self.wte, self.wpe = w["wte.weight"], w["wpe.weight"]
        self.lnf = (w["ln_f.weight"], w["ln_f.bias"])
        self.U = 1 + self.L * (self.H + 1)
        self.R = self.L * (3 * self.H + 1) + 1
        L, H, C, D = self.L, self.H, self.C, self.D
        self.p = []
        for l in range(L):
            q = {k[len("h.%d." % l):]: v for k, v in w.items() if k.startswith("h.%d." % l)}
            q["Wc"] = q["attn.c_attn.weight"].view(C, 3, H, D)  # per component, per head
            q["bc"] = q["attn.c_attn.bias"].view(3, H, D)
            q["Wo"] = q["attn.c_proj.weight"].view(H, D, C)
            self.p.append(q)

    def u0(self, l):
        return 1 + l * (self.H + 1)

    def ln1(self, p, x):
        return Fn.layer_norm(x, (self.C,), p["ln_1.weight"], p["ln_1.bias"], self.eps)

    def attend(self, q, k, v):
        T = q.shape[-2]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        a = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
        return a.masked_fill(mask, float("-inf")).softmax(-1) @ v  # (B, H, T, D)

    def attn_fused(self, p, x):
        """Layer attention on residual x (B, T, C): z (B, H, T, D)."""
        B, T, C = x.shape
        qkv = torch.addmm(p["attn.c_attn.bias"], self.ln1(p, x).view(-1, C), p["attn.c_attn.weight"])
        q, k, v = qkv.view(B, T, 3, self.H, self.D).permute(2, 0, 3, 1, 4)
        return self.attend(q, k, v)

    def attn_out(self, p, z):
        B, H, T, D = z.shape
        return torch.addmm(p["attn.c_proj.bias"], z.transpose(1, 2).reshape(B * T, -1),
                           p["attn.c_proj.weight"]).view(B, T, -1)

    def heads_out(self, p, z):
        return torch.einsum("bhtd,hdc->hbtc", z, p["Wo"])  # (H, B, T, C), no bias

    def mlp(self, p, x):
        B, T, C = x.shape
        h = Fn.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], self.eps)
        m = Fn.gelu(torch.addmm(p["mlp.c_fc.bias"], h.view(-1, C), p["mlp.c_fc.weight"]), approximate="tanh")
        return torch.addmm(p["mlp.c_proj.bias"], m, p["mlp.c_proj.weight"]).view(B, T, C)

    def logits(self, x, pos):
        """Logits at the read rows: x (B, T, C), pos (B, P) -> (B, P, V)."""
        xr = x[torch.arange(x.shape[0])[:, None], pos]
        return Fn.layer_norm(xr, (self.C,), *self.lnf, self.eps) @ self.wte.T

    def forward(self, tok, pos):
        x = self.wte[tok] + self.wpe[:tok.shape[1]]
        for p in self.p:
            x = x + self.attn_out(p, self.attn_fused(p, x))
            x = x + self.mlp(p, x)
        return self.logits(x, pos)

    def forward_nodes(self, emb, pos, out=None, sign=1.0, cache=None):
        """No-grad forward from the embedding emb (B, T, C): adds sign * each
        node's output into out (U, B, T, C); cache (a list) receives the
        residual before every stage and the final one."""
        T = emb.shape[1]
        x = emb + self.wpe[:T]
        if out is not None:
            out[0] += sign * emb
        for l, p in enumerate(self.p):
            u0 = self.u0(l)
            if cache is not None:
                cache.append(x)
            z = self.attn_fused(p, x)
            if out is not None:
                out[u0:u0 + self.H] += sign * self.heads_out(p, z)
            x = x + self.attn_out(p, z)
            if cache is not None:
                cache.append(x)
            m = self.mlp(p, x)
            if out is not None:
                out[u0 + self.H] += sign * m
            x = x + m
        if cache is not None:
            cache.append(x)
        return self.logits(x, pos)

    def forward_split(self, emb, pos, out=None, unit=None, delta=None):
        """The clean forward with gradients to every receiver's input: returns
        the logits and the receivers' input tensors (retain_grad): per layer
        (q, k, v) each (B, T, H, C), the MLP input; the final residual. out
        (U, B, T, C): each node's output subtracted (no_grad). unit/delta:
        delta (B, T, C) added to the residual after unit (0: the input, 2l+1:
        layer l's heads, 2l+2: its MLP)."""
        B, T, C = emb.shape
        H = self.H
        emb = emb.detach().requires_grad_(True)
        x = emb + self.wpe[:T]
        if out is not None:
            out[0] -= emb.detach()
        if unit == 0:
            x = x + delta
        recv = []
        for l, p in enumerate(self.p):
            u0 = self.u0(l)
            qkv = []
            ins = []
            for c in range(3):
                xin = x[:, :, None, :].expand(B, T, H, C)
                xin.retain_grad()
                ins.append(xin)
                h = self.ln1(p, xin)
                qkv.append(torch.einsum("bthc,chd->bhtd", h, p["Wc"][:, c]) + p["bc"][c][None, :, None, :])
            z = self.attend(*qkv)
            if out is not None:
                with torch.no_grad():
                    out[u0:u0 + H] -= self.heads_out(p, z.detach())
            x = x + self.attn_out(p, z)
            if unit == 2 * l + 1:
                x = x + delta
            xm = x + 0
            xm.retain_grad()
            m = self.mlp(p, xm)
            if out is not None:
                out[u0 + H] -= m.detach()
            x = x + m
            if unit == 2 * l + 2:
                x = x + delta
            recv.append((ins, xm))
        xf = x + 0
        xf.retain_grad()
        return self.logits(xf, pos), recv, xf


def metric(logits, ans, wrong):
    """logit_diff per example: mean over the read rows (ans, wrong (B, P))."""
    return (logits.gather(2, ans[:, :, None]) - logits.gather(2, wrong[:, :, None]))[:, :, 0].mean(1)


def kl(logits, clean_logp):
    lp = torch.log_softmax(logits.double(), -1)
    return (clean_logp.exp() * (clean_logp - lp)).sum(-1).mean(1)


def edge_names(L, H, level):
    def node(u):
        if u == 0:
            return "input"
        l, j = divmod(u - 1, H + 1)
        return "m%d" % l if j == H else "a%d.h%d" % (l, j)

    names = []
    for l in range(L):
        n_in = 1 + l * (H + 1)
        for h in range(H):
            for c in ("<q>", "<k>", "<v>") if level == "edge" else ("",):
                names += ["%s->a%d.h%d%s" % (node(u), l, h, c) for u in range(n_in)]
        names += ["%s->m%d" % (node(u), l) for u in range(n_in + H)]
    names += ["%s->logits" % node(u) for u in range(1 + L * (H + 1))]
    return names


def scores_to_edges(S, L, H):
    """S (U, R) edge-level sums -> a flat array in circ's edge order."""
    out = []
    for r in range(S.shape[1]):
        l, j = divmod(r, 3 * H + 1)
        n_in = S.shape[0] if r == S.shape[1] - 1 else 1 + l * (H + 1) + (H if j == 3 * H else 0)
        out.append(S[:n_in, r])
    return torch.cat(out)


# ---------------------------------------------------------------- attribution

def add_scores(g, S, diff, recv, xf, us=None):
    """S[u, r] += diff_u . grad_r for the receivers' retained gradients;
    us: only nodes in range(*us) (eap-ig-activations), else all."""
    U, B, T, C = diff.shape
    H, btc = g.H, B * T * C
    lo, hi = us if us else (0, U)
    for l, (ins, xm) in enumerate(recv):
        n_in = g.u0(l)
        r0 = l * (3 * H + 1)
        a, b = lo, min(hi, n_in)
        if a < b:
            G = torch.stack([t.grad for t in ins], 3).permute(0, 1, 4, 2, 3).reshape(btc, 3 * H)
            S[a:b, r0:r0 + 3 * H] += (diff[a:b].reshape(b - a, btc) @ G).double()
        b = min(hi, n_in + H)
        if a < b:
            S[a:b, r0 + 3 * H] += (diff[a:b].reshape(b - a, btc) @ xm.grad.reshape(btc)).double()
    S[lo:hi, -1] += (diff[lo:hi].reshape(hi - lo, btc) @ xf.grad.reshape(btc)).double()


def run_eap(g, clean, corrupt, pos, ans, wrong, method, steps, batch):
    U, R, C = g.U, g.R, g.C
    S = torch.zeros(U, R, dtype=torch.float64)
    for i0 in range(0, clean.shape[0], batch):
        sl = slice(i0, i0 + batch)
        tc, tr, ps = clean[sl], corrupt[sl], pos[sl]
        B, T = tc.shape
        diff = torch.zeros(U, B, T, C)  # corrupt - clean node outputs
        with torch.no_grad():
            g.forward_nodes(g.wte[tr], ps, diff, 1.0)
        if method == "eap":
            logits, recv, xf = g.forward_split(g.wte[tc], ps, out=diff)
            (-metric(logits, ans[sl], wrong[sl]).sum()).backward()
            add_scores(g, S, diff, recv, xf)
            continue
        with torch.no_grad():
            g.forward_nodes(g.wte[tc], ps, diff, -1.0)
        def mean_grads(runs):
            """Runs each (embedding, unit, delta) with one backward; the
            receivers' gradients averaged, as add_scores takes them."""
            acc = None
            for emb, unit, delta in runs:
                logits, recv, xf = g.forward_split(emb, ps, unit=unit, delta=delta)
                (-metric(logits, ans[sl], wrong[sl]).sum()).backward()
                grads = [t.grad for ins, xm in recv for t in ins + [xm]] + [xf.grad]
                if acc is None:
                    acc = grads
                else:
                    for x_, y_ in zip(acc, grads):
                        x_ += y_
            acc = [_G(t / len(runs)) for t in acc]
            return [(acc[4 * l:4 * l + 3], acc[4 * l + 3]) for l in range(g.L)], acc[-1]

        if method == "eap-ig":
            ec, er = g.wte[tc], g.wte[tr]
            recv, xf = mean_grads([(er + (k / steps) * (ec - er), None, None) for k in range(steps)])
            add_scores(g, S, diff, recv, xf)
            continue
        # eap-ig-activations: units 0 (input), 2l+1 (layer l's heads), 2l+2 (its MLP)
        for unit in range(2 * g.L + 1):
            if unit == 0:
                us = (0, 1)
            else:
                l, j = divmod(unit - 1, 2)
                us = (g.u0(l), g.u0(l) + g.H) if j == 0 else (g.u0(l) + g.H, g.u0(l) + g.H + 1)
            dsum = diff[us[0]:us[1]].sum(0)
            recv, xf = mean_grads([(g.wte[tc], unit, (1 - k / steps) * dsum) for k in range(1, steps + 1)])
            add_scores(g, S, diff, recv, xf, us)
    return scores_to_edges(S, g.L, g.H) / clean.shape[0]


class _G:
    """A stand-in for a tensor whose .grad is given."""

    def __init__(self, grad):
        self.grad = grad


def run_exact(g, clean, corrupt, pos, ans, wrong, level, max_rows=8192):
    L, H, C = g.L, g.H, g.C
    B, T = clean.shape
    with torch.no_grad():
        ref = torch.zeros(g.U, B, T, C)
        g.forward_nodes(g.wte[corrupt], pos, ref, 1.0)
        cl = torch.zeros(g.U, B, T, C)
        cache = []
        m0 = metric(g.forward_nodes(g.wte[clean], pos, cl, 1.0, cache), ans, wrong)
        d = ref - cl
        chunk = max(1, max_rows // (B * T))

        def finish(x, l0, nv):
            """x (nv * B, T, C) the residual before layer l0's MLP; the rest."""
            p = g.p[l0]
            x = x + g.mlp(p, x)
            for p in g.p[l0 + 1:]:
                x = x + g.attn_out(p, g.attn_fused(p, x))
                x = x + g.mlp(p, x)
            lg = g.logits(x, pos.repeat(nv, 1))
            return metric(lg, ans.repeat(nv, 1), wrong.repeat(nv, 1)).view(nv, B)

        sums = []
        for l in range(L):
            n_in = g.u0(l)
            x0 = cache[2 * l]
            qkv0 = torch.addmm(g.p[l]["attn.c_attn.bias"], g.ln1(g.p[l], x0).view(-1, C),
                               g.p[l]["attn.c_attn.weight"]).view(B, T, 3, H, g.D)
            for h in range(H):
                for comps in ([0], [1], [2]) if level == "edge" else ([0, 1, 2],):
                    s = torch.empty(n_in, dtype=torch.float64)
                    for v0 in range(0, n_in, chunk):
                        dv = d[v0:min(v0 + chunk, n_in)]
                        nv = dv.shape[0]
                        qkv = qkv0.repeat(nv, 1, 1, 1, 1)
                        xin = (x0[None] + dv).view(nv * B, T, C)
                        hh = g.ln1(g.p[l], xin)
                        for c in comps:
                            qkv[:, :, c, h] = hh @ g.p[l]["Wc"][:, c, h] + g.p[l]["bc"][c, h]
                        q, k, v = qkv.permute(2, 0, 3, 1, 4)
                        z = g.attend(q, k, v)
                        x = x0.repeat(nv, 1, 1) + g.attn_out(g.p[l], z)
                        s[v0:v0 + nv] = -(finish(x, l, nv) - m0).sum(1).double()
                    sums.append(s)
            s = torch.empty(n_in + H, dtype=torch.float64)
            for v0 in range(0, n_in + H, chunk):
                dv = d[v0:min(v0 + chunk, n_in + H)]
                nv = dv.shape[0]
                xmid = cache[2 * l + 1]
                x = xmid.repeat(nv, 1, 1) + g.mlp(g.p[l], (xmid[None] + dv).view(nv * B, T, C))
                for p in g.p[l + 1:]:
                    x = x + g.attn_out(p, g.attn_fused(p, x))
                    x = x + g.mlp(p, x)
                lg = g.logits(x, pos.repeat(nv, 1))
                s[v0:v0 + nv] = -(metric(lg, ans.repeat(nv, 1), wrong.repeat(nv, 1)).view(nv, B) - m0).sum(1).double()
            sums.append(s)
        s = torch.empty(g.U, dtype=torch.float64)
        for v0 in range(0, g.U, chunk):
            dv = d[v0:v0 + chunk]
            nv = dv.shape[0]
            lg = g.logits((cache[-1][None] + dv).view(nv * B, T, C), pos.repeat(nv, 1))
            s[v0:v0 + nv] = -(metric(lg, ans.repeat(nv, 1), wrong.repeat(nv, 1)).view(nv, B) - m0).sum(1).double()
        sums.append(s)
    return torch.cat(sums) / B


# ------------------------------------------------------ patched runs (acdc, curve)

class Patched:
    """Runs with a set of patched edges (resample ablation): a receiver's input
    is the run's residual minus, over its patched edges, (current - corrupt)
    output of the upstream node. P[r] (n_in(r),) per edge-level receiver r."""

    def __init__(self, g, clean, corrupt, pos):
        self.g, self.pos = g, pos
        B, T = clean.shape
        with torch.no_grad():
            self.ref = torch.zeros(g.U, B, T, g.C)
            g.forward_nodes(g.wte[corrupt], pos, self.ref, 1.0)
            cl = torch.zeros(g.U, B, T, g.C)
            self.cache = []
            self.clean_logits = g.forward_nodes(g.wte[clean], pos, cl, 1.0, self.cache)
            self.dclean = cl - self.ref
            self.D = self.dclean.clone()  # (current - corrupt) outputs of the last run
        self.low = g.U  # D[low:] may hold the last run's nodes, not the clean run's
        self.n_in = [(g.u0(r // (3 * g.H + 1)) + (g.H if r % (3 * g.H + 1) == 3 * g.H else 0))
                     if r < g.R - 1 else g.U for r in range(g.R)]

    def stage(self, r):
        H = self.g.H
        if r == self.g.R - 1:
            return 2 * self.g.L
        l, j = divmod(r, 3 * H + 1)
        return 2 * l + (1 if j == 3 * H else 0)

    def run(self, P, s0):
        """Logits with patch masks P (list per receiver of float tensors),
        from stage s0 (the stages below are the clean run)."""
        g = self.g
        H, C = g.H, g.C
        U, B, T, _ = self.D.shape
        btc = B * T * C
        D = self.D
        first = g.u0(s0 // 2) + (H if s0 % 2 else 0)  # the input and every node below s0
        if self.low < first:
            D[self.low:first] = self.dclean[self.low:first]
        self.low = first
        x = self.cache[s0]
        with torch.no_grad():
            for l in range(s0 // 2, g.L):
                p = g.p[l]
                u0, r0 = g.u0(l), l * (3 * H + 1)
                if 2 * l >= s0:
                    M = torch.stack([P[r] for r in range(r0, r0 + 3 * H)], 1)  # (n_in, 3H)
                    delta = (M.T @ D[:u0].reshape(u0, btc)).view(H, 3, B, T, C)
                    qkv = []
                    for c in range(3):
                        xin = x[None] - delta[:, c]  # (H, B, T, C)
                        hh = g.ln1(p, xin)
                        qkv.append(torch.einsum("hbtc,chd->bhtd", hh, p["Wc"][:, c]) + p["bc"][c][None, :, None, :])
                    z = g.attend(*qkv)
                    D[u0:u0 + H] = g.heads_out(p, z) - self.ref[u0:u0 + H]
                    x = x + g.attn_out(p, z)
                n = u0 + H
                xin = x - (P[r0 + 3 * H] @ D[:n].reshape(n, btc)).view(B, T, C)
                m = g.mlp(p, xin)
                D[n] = m - self.ref[n]
                x = x + m
            xf = x - (P[-1] @ D.reshape(U, btc)).view(B, T, C)
            return g.logits(xf, self.pos)


def run_acdc(g, clean, corrupt, pos, tau):
    pt = Patched(g, clean, corrupt, pos)
    clean_logp = torch.log_softmax(pt.clean_logits.double(), -1)
    P = [torch.zeros(n) for n in pt.n_in]
    H = g.H

    def loss(s0):
        return kl(pt.run(P, s0), clean_logp).mean().item()

    def node_of(r):
        if r == g.R - 1:
            return None
        l, j = divmod(r, 3 * H + 1)
        return g.u0(l) + (H if j == 3 * H else j // 3)

    def has_output(u):
        if u is None:
            return True
        return any(u < len(P[r]) and P[r][u] == 0 for r in range(g.R))

    cur = loss(2 * g.L)
    log = []
    for r in range(g.R - 1, -1, -1):
        if not has_output(node_of(r)):
            P[r][:] = 1
            continue
        s0 = pt.stage(r)
        for u in range(pt.n_in[r] - 1, -1, -1):
            P[r][u] = 1
            after = loss(s0)
            kept = not (after - cur < tau)
            log.append((r, u, cur, after, kept))
            if kept:
                P[r][u] = 0
            else:
                cur = after
    return log


def run_curve(g, clean, corrupt, pos, ans, wrong, score):
    pt = Patched(g, clean, corrupt, pos)
    E = score.shape[0]
    order = np.argsort(-score, kind="stable")
    out = []
    for f in FRACTIONS:
        keep = np.zeros(E, dtype=bool)
        keep[order[:int(math.floor(f * E))]] = True
        flat = torch.from_numpy(1.0 - keep.astype(np.float32))
        P, i = [], 0
        for n in pt.n_in:
            P.append(flat[i:i + n])
            i += n
        out.append(metric(pt.run(P, 0), ans, wrong).mean().item())
    return out


# ---------------------------------------------------------------- main

def main_run(args):
    mode, model_dir, tokens, n, threads, out = args[:6]
    opt = {"--steps": "5", "--level": "edge", "--tau": "0.01", "--batch": "16"}
    rest = args[6:]
    logits_out = "--logits" in rest
    rest = [a for a in rest if a != "--logits"]
    for i in range(0, len(rest), 2):
        opt[rest[i]] = rest[i + 1]
    torch.set_num_threads(int(threads))
    cfg, w = load_mmap(model_dir)
    g = GPT2(cfg, w)
    clean, corrupt, pos, ans, wrong = read_tokens(tokens, int(n))
    score = None
    if mode == "curve":
        with open(opt["--scores"]) as f:
            score = np.array([json.loads(line)["score"] for line in f])
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            lg = g.forward(clean, pos)
            m = metric(lg, ans, wrong)
            pr = torch.softmax(lg[:, 0], -1)
            top_p, top_i = pr.topk(5, -1)
    elif mode in ("eap", "eap-ig", "eap-ig-activations"):
        res = run_eap(g, clean, corrupt, pos, ans, wrong, mode, int(opt["--steps"]), int(opt["--batch"]))
    elif mode == "exact":
        res = run_exact(g, clean, corrupt, pos, ans, wrong, opt["--level"])
    elif mode == "acdc":
        res = run_acdc(g, clean, corrupt, pos, float(opt["--tau"]))
    elif mode == "curve":
        res = run_curve(g, clean, corrupt, pos, ans, wrong, score)
    else:
        sys.exit("torch_whole.py: unknown mode " + mode)
    print("inner %.6f" % (time.perf_counter() - t0), flush=True)
    if mode == "forward":
        with open(out, "w") as f:
            for i in range(clean.shape[0]):
                f.write(json.dumps({"id": i, "metric": m[i].item(), "correct": bool(top_i[i, 0] == ans[i, 0]),
                                    "top": [{"token": int(t), "p": float(q)} for t, q in zip(top_i[i], top_p[i])]})
                        + "\n")
        if logits_out:
            np.save(out + ".npy", lg.numpy())
    elif mode == "acdc":
        with open(out, "w") as f:
            for r, u, before, after, kept in res:
                f.write(json.dumps({"r": r, "u": u, "before": before, "after": after, "kept": kept}) + "\n")
    elif mode == "curve":
        with open(out, "w") as f:
            for fr, m in zip(FRACTIONS, res):
                f.write(json.dumps({"fraction": fr, "metric": m}) + "\n")
    else:
        np.save(out, res.numpy())


def main_check(args):
    mode, ours, theirs = args[:3]
    level = args[3] if len(args) > 3 else "edge"
    with open(theirs) as f:
        circ = [json.loads(line) for line in f if line.strip()]

    def rel(a, b):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))

    if mode == "forward":
        with open(ours) as f:
            mine = [json.loads(line) for line in f]
        r = rel([x["metric"] for x in mine], [x["metric"] for x in circ])
        what = "metric of %d examples" % len(mine)
        if os.path.exists(ours + ".npy") and "logits" in circ[0]:
            lg = np.load(ours + ".npy")
            c0 = circ[0]["logits"]
            r = max(r, rel(lg[0].reshape(-1), c0["data"]))
            what += ", logits of example 0"
        print("check %.3g %s" % (r, what))
    elif mode in ("eap", "eap-ig", "eap-ig-activations", "exact"):
        mine = np.load(ours)
        sc = {x["edge"]: x["score"] for x in circ}
        # L and H from circ's last two edges (m{L-1}->logits, a{L-1}.h{H-1}->logits)
        L = int(circ[-1]["edge"].split("->")[0][1:]) + 1
        H = int(circ[-2]["edge"].split(".h")[1].split("->")[0]) + 1
        names = edge_names(L, H, level)
        assert names and len(sc) == len(names), "edge counts differ"
        print("check %.3g scores of %d edges" % (rel(mine, [sc[n] for n in names]), len(names)))
    elif mode == "acdc":
        with open(ours) as f:
            mine = [json.loads(line) for line in f]
        bad = sum(a["kept"] != b["kept"] for a, b in zip(mine, circ)) + abs(len(mine) - len(circ))
        r = rel([x["after"] for x in mine[:len(circ)]], [x["after"] for x in circ[:len(mine)]])
        print("check %.3g loss after each of %d tests; %d decisions differ" % (r, len(circ), bad))
        if bad:
            sys.exit(1)
    elif mode == "curve":
        with open(ours) as f:
            mine = [json.loads(line) for line in f]
        pts = [x for x in circ if "fraction" in x]
        assert [x["fraction"] for x in pts] == [x["fraction"] for x in mine], "fractions differ"
        print("check %.3g metric at %d curve points" % (rel([x["metric"] for x in mine], [x["metric"] for x in pts]),
                                                          len(pts)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        main_run(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "check":
        main_check(sys.argv[2:])
    else:
        sys.exit(__doc__)
