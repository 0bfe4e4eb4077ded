#!/usr/bin/python3
"""Reference for circ's attribution graphs (lib/trace, circ-trace) on every
model family of tests/ref/families.py, PyTorch float64.

Written from the families' Hugging Face semantics (tests/ref/families.py)
and circuit-tracer's documented replacement model, not from circ's code.
The prompt's clean forward is this script's own, checked against
families.forward (logits equal within 1e-9); it records what the
replacement model freezes. The replacement model is then an autograd graph
whose leaves are the token embeddings (times Gemma's embedding scale), each
layer's transcoder activations and error vectors:
  - every norm's scale frozen at the prompt's value: LayerNorm
    (x - mean(x)) * s * w + b, RMSNorm x * s * (offset + w), with s the
    detached 1/sigma or 1/rms of the clean run's row; this includes the
    RMSNorm after the attention (Gemma 2, Gemma 3, OLMo 2);
  - the attention patterns detached (the clean run's softmax after RoPE,
    q/k norms, soft caps and sliding windows), so only the values carry
    gradient; grouped-query attention repeats each key/value head for its
    group;
  - the MLP replaced by the transcoder's output plus the error node, both
    at hook_mlp_out: the MLP's output after its post-MLP norm where there
    is one (TransformerLens's hook_mlp_out, which circuit-tracer's Gemma 2
    transcoders write), added to the residual as it is;
  - parallel blocks (GPT-NeoX): the transcoder reads the block's input
    (through the MLP's LayerNorm), so it sees nothing of its own layer's
    attention;
  - logit targets: the logits before Gemma 2's final soft cap (the
    unembedding's input is where circuit-tracer injects them), minus their
    mean over the vocabulary; the probabilities that pick them are the
    model's own (capped) ones.
A target's bias is the replacement model with every leaf zero. Pruning and
comparison are tests/ref/trace_ref.py's.

Usage:
  trace_family_ref.py graph MODEL DICTSET IDS [--max-logits N] [--logit-prob P]
               [--node-threshold X] [--edge-threshold X]
  trace_family_ref.py intervene MODEL DICTSET IDS SPEC...
  trace_family_ref.py compare CIRC.jsonl REF.json [--tol X]
      as tests/ref/trace_ref.py's commands (GPT-2 models are passed to it).
  trace_family_ref.py compare-adj ADJ.safetensors REF.json [--tol X]
      circ-trace --adjacency's dense matrix against the reference's, edge by
      edge, within X (default 1e-4) of the row's largest |weight|, |pre| and
      |bias|; the node table equal.
"""
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families as fam  # noqa: E402
import family_recv  # noqa: E402
import trace_ref  # noqa: E402
from dict_ref import load_set  # noqa: E402
from stio import read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)


def hook_kind(a, d):
    point = d.hook_in.split(".", 2)[2]
    if point in ("hook_resid_mid", "hook_mlp_in"):
        return "resid"
    if point == "mlp.hook_in" or point == "ln2.hook_normalized":
        if a["norm_placement"] == "post" and a["model_type"] != "gpt_neox":
            return "resid"  # OLMo 2: no norm before the MLP
        if point == "mlp.hook_in" or not d.fold_ln:
            return "norm_wb"
        return "norm"
    raise SystemExit("transcoder input hook %s not supported" % d.hook_in)


class Model:
    """One family model and the prompt's frozen quantities."""

    def __init__(self, model_dir, set_dir, ids):
        self.a, self.names, self.W = family_recv.load(model_dir)
        a = self.a
        self.tok = torch.tensor(ids)
        self.T = len(ids)
        self.L = a["n_layer"]
        self.tcs = [None] * self.L
        for d in load_set(set_dir):
            self.tcs[int(d.hook_out.split(".")[1])] = d
        self.frozen = None
        self.acts, self.errs, self.xin = [], [], []
        self.logits = self.run(None)  # the clean run: records self.frozen
        ref = fam.forward(a, self.W, self.names, self.tok)
        assert torch.allclose(self.logits, ref, atol=1e-9, rtol=0), \
            float((self.logits - ref).abs().max())

    # ---- pieces, clean (record) or frozen (read) ----

    def scale(self, key, x, rms):
        """The norm's 1/sigma or 1/rms of each row: computed and recorded in
        the clean run, the recorded (constant) one afterwards."""
        if self.frozen is not None:
            return self.frozen[key]
        xc = x if rms else x - x.mean(-1, keepdim=True)
        s = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + self.a["norm_eps"])
        self.rec[key] = s.detach()
        return s

    def norm(self, x, key, name, w=True):
        """The family's norm of x with weight and bias of tensor `name`
        (w False: weight 1, no bias, TransformerLens's hook_normalized)."""
        a, W = self.a, self.W
        rms = a["norm"] != "layernorm"
        s = self.scale(key, x, rms)
        if rms:
            return x * s * ((a["norm_offset"] + W[name + ".weight"]) if w else 1.0)
        y = (x - x.mean(-1, keepdim=True)) * s
        return y * W[name + ".weight"] + W[name + ".bias"] if w else y

    def post(self, x, key, name):
        """A norm after a block (always RMSNorm in these families)."""
        s = self.scale(key, x, True)
        return x * s * (self.a["norm_offset"] + self.W[name + ".weight"])

    def attn(self, l, h):
        a, W, T = self.a, self.W, self.T
        H, D, K = a["n_head"], a["head_dim"], a["n_kv_head"]
        p = self.names["layer"] % l
        eps, off = a["norm_eps"], a["norm_offset"]
        pos = torch.arange(T)

        def lin(x, key, bias):
            y = x @ W[key + ".weight"].T
            return y + W[key + ".bias"] if bias else y

        if a["model_type"] == "gpt_neox":
            qkv = lin(h, p + "attention.query_key_value", a["bias_qkv"]).view(T, H, 3 * D)
            q, k, v = (t.transpose(0, 1) for t in (qkv[..., :D], qkv[..., D:2 * D],
                                                    qkv[..., 2 * D:]))
        else:
            q = lin(h, p + "self_attn.q_proj", a["bias_qkv"])
            k = lin(h, p + "self_attn.k_proj", a["bias_qkv"])
            v = lin(h, p + "self_attn.v_proj", a["bias_qkv"])
            if a["qk_norm"] == "whole":
                q = fam.rms(q, W[p + "self_attn.q_norm.weight"], eps, off)
                k = fam.rms(k, W[p + "self_attn.k_norm.weight"], eps, off)
            q = q.view(T, H, D).transpose(0, 1)
            k = k.view(T, K, D).transpose(0, 1)
            v = v.view(T, K, D).transpose(0, 1)
            if a["qk_norm"] == "per_head":
                q = fam.rms(q, W[p + "self_attn.q_norm.weight"], eps, off)
                k = fam.rms(k, W[p + "self_attn.k_norm.weight"], eps, off)
        local = l in a["local_layers"]
        theta, scaling = a["rope_theta"], a["rope_scaling"]
        if local and a["rope_local_theta"]:
            theta, scaling = a["rope_local_theta"], None
        q = fam.rope(q, pos, a["rotary_dim"], theta, scaling)
        k = fam.rope(k, pos, a["rotary_dim"], theta, scaling)
        rep = H // k.shape[0]
        k = k.repeat_interleave(rep, 0)
        v = v.repeat_interleave(rep, 0)
        if self.frozen is not None:
            A = self.frozen[("A", l)]
        else:
            s = fam.capped_masked(a, q @ k.transpose(1, 2) * a["attn_scale"], pos, local)
            A = torch.softmax(s, -1)
            self.rec[("A", l)] = A.detach()
        z = (A @ v).transpose(0, 1).reshape(T, H * D)
        if a["model_type"] == "gpt_neox":
            return lin(z, p + "attention.dense", a["bias_o"])
        return lin(z, p + "self_attn.o_proj", a["bias_o"])

    def mlp(self, l, h):
        a, W = self.a, self.W
        p = self.names["layer"] % l

        def lin(x, key, bias):
            y = x @ W[key + ".weight"].T
            return y + W[key + ".bias"] if bias else y

        if a["model_type"] == "gpt_neox":
            u = fam.act(a["activation"], lin(h, p + "mlp.dense_h_to_4h", True))
            return lin(u, p + "mlp.dense_4h_to_h", True)
        g = fam.act(a["activation"], lin(h, p + "mlp.gate_proj", a["bias_mlp"]))
        return lin(g * lin(h, p + "mlp.up_proj", a["bias_mlp"]), p + "mlp.down_proj",
                   a["bias_mlp"])

    def tc_input(self, l, x, key_pre, n2):
        """What layer l's transcoder reads of the residual x at its MLP."""
        kind = hook_kind(self.a, self.tcs[l])
        if kind == "resid":
            return x
        return self.norm(x, key_pre, n2, w=kind == "norm_wb")

    # ---- the forward ----

    def run(self, repl, emb=None):
        """The clean run (repl None) or the replacement model: repl(l, xin)
        returns layer l's MLP output from the transcoder's input xin (None
        without a transcoder); emb the (scaled) token embeddings."""
        a, W, names = self.a, self.W, self.names
        if repl is None:
            self.rec = {}
        x = W[names["embed"]][self.tok] * a["embed_scale"] if emb is None else emb
        par = a["model_type"] == "gpt_neox" and a["parallel_residual"]
        for l in range(self.L):
            p = names["layer"] % l
            n1, n2 = fam.block_norms(a, p)
            pre = a["norm_placement"] != "post" or a["model_type"] == "gpt_neox"
            x_attn_in = x
            ao = self.attn(l, self.norm(x, ("n1", l), n1) if pre else x)
            if a["model_type"] != "gpt_neox" and a["norm_placement"] != "pre":
                ao = self.post(ao, ("pa", l), p + "post_attention_layernorm")
            if not par:
                x = x + ao
            xm = x_attn_in if par else x  # the MLP's input residual
            d = self.tcs[l]
            xin = self.tc_input(l, xm, ("n2", l), n2) if d is not None else None
            if repl is None:
                h = self.norm(xm, ("n2", l), n2) if pre else xm
                mo = self.mlp(l, h)
                if a["model_type"] != "gpt_neox" and a["norm_placement"] != "pre":
                    mo = self.post(mo, ("pm", l), p + "post_feedforward_layernorm")
                self.xin.append(xin)
                if d is None:
                    self.acts.append(None)
                    self.errs.append(mo)
                else:
                    f = d.encode(xin)
                    self.acts.append(f)
                    self.errs.append(mo - d.decode(f, xin))
            else:
                mo = repl(l, xin)
            x = x + mo + (ao if par else 0)
        x = self.norm(x, ("final",), names["final_norm"])
        if repl is None:
            self.frozen = self.rec
        lm = W[names["lm_head"] if not a["tied_embeddings"] else names["embed"]]
        logits = x @ lm.T
        if repl is None and a["final_softcap"]:  # the model's own logits
            logits = torch.tanh(logits / a["final_softcap"]) * a["final_softcap"]
        return logits

    def capped(self, z):
        c = self.a["final_softcap"]
        return torch.tanh(z / c) * c if c else z


def intervene(argv):
    """The replacement model re-run with features set (=) or scaled (*)."""
    model, dset, ids = argv[:3]
    ivs = []
    for spec in argv[3:]:
        m = re.fullmatch(r"tc(\d+)\.f(\d+)@(\d+)([=*])(.+)", spec)
        ivs.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4),
                    float(m.group(5))))
    r = Model(model, dset, [int(i) for i in ids.split(",")])

    def repl(l, xin):
        d = r.tcs[l]
        if d is None:
            return r.errs[l]
        f = d.encode(xin)
        for (il, fi, t, op, v) in ivs:
            if il == l:
                f[t, fi] = f[t, fi] * v if op == "*" else v
        return d.decode(f, xin) + r.errs[l]

    out = r.capped(r.run(repl))
    json.dump({"clean": r.logits[-1].tolist(), "logits": out[-1].tolist()}, sys.stdout)


def build(model_dir, set_dir, ids, max_logits, logit_prob):
    r = Model(model_dir, set_dir, ids)
    L, tcs, acts, errs = r.L, r.tcs, r.acts, r.errs
    top_i, top_p = trace_ref.top_logits(r.logits[-1], max_logits, logit_prob)

    def replacement(emb, fs, es):
        pres = [None] * L

        def repl(l, xin):
            d = tcs[l]
            if d is None:
                return es[l]
            pres[l] = (xin * d.scale) @ d.w["W_enc"] + d.w["b_enc"]
            return (fs[l] @ d.w["W_dec"] + d.w["b_dec"]) / d.scale + es[l]

        lg = r.run(repl, emb)[-1]
        return pres, lg - lg.mean()

    # the clean pre-activations, independently of the replacement model
    cpre = [None if tcs[l] is None else
            (r.xin[l] * tcs[l].scale) @ tcs[l].w["W_enc"] + tcs[l].w["b_enc"] for l in range(L)]
    e0 = r.W[r.names["embed"]][r.tok] * r.a["embed_scale"]
    out = trace_ref.assemble(replacement, e0, acts, errs, ids, top_i, top_p)
    for nd in out[0]:
        if nd["kind"] == "feature":
            c = float(cpre[nd["layer"]][nd["pos"], nd["feature"]])
            assert abs(c - nd["pre"]) < 1e-9 * max(1, abs(c)), (nd, c)
    return out


def compare_adj(argv):
    """circ-trace --adjacency's matrix against the reference's, edge by edge:
    within tol (default 1e-4) of the row's largest |weight|, |pre| and
    |bias| (the scale trace_ref.py compare uses); the node table equal."""
    apath, rpath = argv[:2]
    tol = float(trace_ref.opts(argv[2:], {"tol": "1e-4"})["tol"])
    ref = json.load(open(rpath))
    rn, radj = ref["nodes"], torch.tensor(ref["adj"])
    t = read_safetensors(apath)
    cadj = torch.from_numpy(t["adjacency"].astype("float64"))
    kinds = ["feature", "error", "input", "logit"]
    got = [(kinds[k], int(l), int(f), int(p)) for k, l, f, p in
           zip(t["node_kind"], t["node_layer"], t["node_feature"], t["node_pos"])]
    want = [(r["kind"], r["layer"], r["feature"], r["pos"]) for r in rn]
    if got != want:
        raise SystemExit("adjacency node table differs from the reference's")
    scale = radj.abs().amax(1, keepdim=True)
    for i, r in enumerate(rn):
        if "pre" in r:
            scale[i] = max(float(scale[i]), abs(r["pre"]), abs(r["bias"]))
    err = (cadj - radj).abs() / scale.clamp(min=1e-12)
    worst = float(err.max())
    print("adjacency %d x %d, non-zero %d, max edge error %.3g (tolerance %g)" % (
        cadj.shape[0], cadj.shape[1], int((cadj != 0).sum()), worst, tol))
    if worst > tol:
        i, j = divmod(int(err.argmax()), cadj.shape[0])
        raise SystemExit("edge %d->%d: %g vs %g" % (j, i, cadj[i, j], radj[i, j]))


def is_gpt2(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    return cfg.get("model_type", "gpt2") == "gpt2"


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd in ("graph", "intervene") and is_gpt2(argv[0]):
        return trace_ref.main()
    if cmd == "graph":
        trace_ref.graph(argv, build)
    elif cmd == "intervene":
        intervene(argv)
    elif cmd in ("compare", "check-intervene", "strongest"):
        trace_ref.main()
    elif cmd == "compare-adj":
        compare_adj(argv)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
