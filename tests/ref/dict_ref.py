#!/usr/bin/python3
"""Reference for circ's sparse dictionaries (lib/dict), in PyTorch float64.

Written from SAELens's and circuit-tracer's published formulas, not from
their code (neither is installed): the architectures' encode and decode, a
GPT-2 forward (and every other family through tests/ref/families.py) with
TransformerLens-style hook points in which an activation
is *replaced* (an independent route from circ's receiver deltas), and the
measures circ-forward --dict reports.

Usage:
  dict_ref.py make DIR --arch A --hook H [--hook-out H] --d-in I --d-sae S
              [--d-out O] [--k K] [--skip] [--seed N] [--dtype F32|F16|BF16]
              [--apply-b-dec 0|1] [--scale X] [--fold-ln 0|1] [--identity]
      writes a SAELens directory (cfg.json, sae_weights.safetensors,
      activation_scaler.json with --scale) with random weights;
      A is standard, topk, jumprelu, gated, transcoder, skip_transcoder,
      jumprelu_transcoder; --identity (standard, S = 2 I) reconstructs exactly.
  dict_ref.py make-many FILE
      make, once per line of FILE ("DIR options...", words as a shell splits
      them), in one process.
  dict_ref.py make-ct DIR --layers L --d-in I --d-sae S [--jumprelu] [--skip]
              [--seed N] [--in-hook P] [--out-hook P]
      writes circuit-tracer per-layer transcoder files layer_<l>.safetensors
      (W_enc (S, I), W_dec (S, O), b_enc, b_dec, W_skip, threshold) and
      config.yaml.
  dict_ref.py harvest MODEL DICTSET TOKENS.jsonl
      prints, per example and dictionary, {"id", "dict", "f": [[...] per row]}
      (dense feature activations of the clean prompt).
  dict_ref.py eval MODEL DICTSET TOKENS.jsonl
      prints one JSON object per dictionary with the measures circ-forward
      --dict reports (dense threshold 0.1).
  dict_ref.py compare-eval CIRC.jsonl REF.jsonl
  dict_ref.py compare-harvest CIRC.jsonl REF.jsonl
      compare circ's JSON lines (circ-forward --dict, circ-harvest --dict)
      with this script's: every measure within 1e-4 relative (+1e-6
      absolute), histograms and row counts equal; every activation within
      1e-4 relative (+1e-5 absolute), the sparse structure well formed.
  dict_ref.py cfgcheck DIR
      checks DIR/cfg.json against SAELens's documented config keys and their
      JSON types; exits 1 naming the first key that differs.
"""
import json
import math
import os
import re
import shlex
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stio import read_safetensors, write_safetensors  # noqa: E402


# making, comparing and checking files need no PyTorch: they do not pay its
# 2-3 s import (the other references import this module to compute)
if __name__ != "__main__" or sys.argv[1:2] not in (
        ["make"], ["make-many"], ["make-ct"], ["compare-eval"], ["compare-harvest"], ["cfgcheck"]):
    import torch

    import families  # noqa: E402
    import family_recv  # noqa: E402
    from gpt2_ref import gelu, layer_norm, load_model as load_gpt2  # noqa: E402

    torch.set_default_dtype(torch.float64)

# SAELens's saved SAE config (SAE.save_model's cfg.json, the flat keys that
# 5.x writes and 6.x reads): key -> JSON types allowed.
SAELENS_KEYS = {
    "architecture": (str,), "d_in": (int,), "d_sae": (int,), "dtype": (str,),
    "device": (str,), "model_name": (str,), "hook_name": (str,), "hook_layer": (int,),
    "hook_head_index": (int, type(None)), "activation_fn_str": (str,),
    "activation_fn_kwargs": (dict,), "apply_b_dec_to_input": (bool,),
    "finetuning_scaling_factor": (bool,), "sae_lens_training_version": (str, type(None)),
    "prepend_bos": (bool,), "dataset_path": (str,), "dataset_trust_remote_code": (bool,),
    "context_size": (int,), "normalize_activations": (str,),
    "neuronpedia_id": (str, type(None)), "model_from_pretrained_kwargs": (dict,),
}
TRANSCODER_KEYS = {"d_out": (int,), "hook_name_out": (str,), "hook_layer_out": (int,),
                   "hook_head_index_out": (int, type(None))}


def opts(argv, defaults):
    o = dict(defaults)
    i = 0
    while i < len(argv):
        k = argv[i][2:].replace("-", "_")
        if isinstance(o.get(k), bool):
            o[k] = True
            i += 1
        else:
            o[k] = argv[i + 1]
            i += 2
    return o


def make(d, argv):
    o = opts(argv, {"arch": "standard", "hook": None, "hook_out": None, "d_in": 0, "d_sae": 0,
                    "d_out": 0, "k": 0, "seed": 0, "dtype": "F32", "apply_b_dec": "1",
                    "scale": None, "fold_ln": "1", "skip": False, "identity": False})
    I, S = int(o["d_in"]), int(o["d_sae"])
    arch = o["arch"]
    tc = "transcoder" in arch
    O = int(o["d_out"]) or I
    rs = np.random.RandomState(int(o["seed"]))
    base = {"skip_transcoder": "standard", "transcoder": "standard",
            "jumprelu_transcoder": "jumprelu"}.get(arch, arch)
    t = {"W_enc": rs.normal(0, 1 / math.sqrt(I), (I, S)),
         "W_dec": rs.normal(0, 1 / math.sqrt(S), (S, O))}
    if base != "gated":
        t["b_enc"] = rs.normal(0, 0.1, S)
    t["b_dec"] = rs.normal(0, 0.1, O)
    if base == "jumprelu":
        t["threshold"] = rs.uniform(0.0, 0.3, S)
    if base == "gated":
        t["b_gate"] = rs.normal(0, 0.1, S)
        t["b_mag"] = rs.normal(0, 0.1, S)
        t["r_mag"] = rs.normal(0, 0.2, S)
    if arch == "skip_transcoder":
        t["W_skip"] = rs.normal(0, 0.1 / math.sqrt(I), (O, I))
    if o["identity"]:  # relu(x) - relu(-x) = x: an exact reconstruction
        assert arch == "standard" and S == 2 * I
        t["W_enc"] = np.concatenate([np.eye(I), -np.eye(I)], 1)
        t["W_dec"] = np.concatenate([np.eye(I), -np.eye(I)], 0)
        t["b_enc"], t["b_dec"] = np.zeros(S), np.zeros(I)
    os.makedirs(d, exist_ok=True)
    layer = int(re.match(r"blocks\.(\d+)\.", o["hook"]).group(1))
    cfg = {"architecture": arch, "d_in": I, "d_sae": S, "dtype": "float32", "device": "cpu",
           "model_name": "tiny", "hook_name": o["hook"], "hook_layer": layer,
           "hook_head_index": None, "activation_fn_str": "topk" if arch == "topk" else "relu",
           "activation_fn_kwargs": {"k": int(o["k"])} if arch == "topk" else {},
           "apply_b_dec_to_input": o["apply_b_dec"] == "1" and not tc,
           "finetuning_scaling_factor": False, "sae_lens_training_version": None,
           "prepend_bos": True, "dataset_path": "", "dataset_trust_remote_code": False,
           "context_size": 16,
           "normalize_activations": "expected_average_only_in" if o["scale"] else "none",
           "neuronpedia_id": None,
           "model_from_pretrained_kwargs": {} if o["fold_ln"] == "1" else {"fold_ln": False}}
    if tc:
        cfg.update({"d_out": O, "hook_name_out": o["hook_out"],
                    "hook_layer_out": int(re.match(r"blocks\.(\d+)\.", o["hook_out"]).group(1)),
                    "hook_head_index_out": None})
    json.dump(cfg, open(d + "/cfg.json", "w"), indent=1)
    write_safetensors(d + "/sae_weights.safetensors", t, o["dtype"])
    if o["scale"]:
        json.dump({"scaling_factor": float(o["scale"])}, open(d + "/activation_scaler.json", "w"))


def make_ct(d, argv):
    o = opts(argv, {"layers": "1", "d_in": 0, "d_sae": 0, "seed": 0, "jumprelu": False,
                    "skip": False, "in_hook": None, "out_hook": None})
    I, S = int(o["d_in"]), int(o["d_sae"])
    rs = np.random.RandomState(int(o["seed"]))
    os.makedirs(d, exist_ok=True)
    for l in range(int(o["layers"])):
        t = {"W_enc": rs.normal(0, 1 / math.sqrt(I), (S, I)),
             "W_dec": rs.normal(0, 1 / math.sqrt(S), (S, I)),
             "b_enc": rs.normal(0, 0.1, S), "b_dec": rs.normal(0, 0.1, I)}
        if o["skip"]:
            t["W_skip"] = rs.normal(0, 0.1 / math.sqrt(I), (I, I))
        if o["jumprelu"]:
            t["activation_function.threshold"] = rs.uniform(0, 0.3, S)
        write_safetensors("%s/layer_%d.safetensors" % (d, l), t)
    with open(d + "/config.yaml", "w") as f:
        f.write("model_kind: transcoder_set\n")
        if o["in_hook"]:
            f.write("feature_input_hook: \"%s\"\n" % o["in_hook"])
        if o["out_hook"]:
            f.write("feature_output_hook: %s\n" % o["out_hook"])
        f.write("transcoders:\n")
        for l in range(int(o["layers"])):
            f.write("  - layer_%d.safetensors\n" % l)


# ---- dictionaries ----

class Dict:
    """One dictionary in SAELens's terms (circuit-tracer files converted)."""

    def __init__(self, cfg, w, path):
        self.cfg, self.w, self.path = cfg, {k: torch.tensor(v) for k, v in w.items()}, path
        a = cfg["architecture"]
        self.tc = "transcoder" in a or "hook_name_out" in cfg
        self.arch = {"transcoder": "standard", "skip_transcoder": "standard",
                     "jumprelu_transcoder": "jumprelu"}.get(a, a)
        self.k = cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k")
        self.apply_b_dec = cfg.get("apply_b_dec_to_input", not self.tc)
        self.scale = cfg.get("scaling_factor", 1.0)
        self.fold_ln = cfg.get("model_from_pretrained_kwargs", {}).get("fold_ln", True)
        self.hook_in = cfg["hook_name"]
        self.hook_out = cfg.get("hook_name_out", self.hook_in)

    def encode(self, x):
        w = self.w
        xs = x * self.scale
        if self.apply_b_dec:
            xs = xs - w["b_dec"]
        h = xs @ w["W_enc"]
        if self.arch == "gated":
            gate = h + w["b_gate"]
            mag = torch.relu(xs @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"])
            return (gate > 0).double() * mag
        pre = h + w["b_enc"]
        if self.arch == "standard":
            return torch.relu(pre)
        if self.arch == "jumprelu":
            return torch.relu(pre) * (pre > w["threshold"]).double()
        if self.arch == "topk":
            v, i = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
        raise SystemExit("unknown architecture " + self.arch)

    def decode(self, f, x):
        out = f @ self.w["W_dec"] + self.w["b_dec"]
        if "W_skip" in self.w:
            out = out + (x * self.scale) @ self.w["W_skip"].T
        return out / self.scale


def load_dict(d):
    cfg = json.load(open(d + "/cfg.json"))
    if os.path.exists(d + "/activation_scaler.json"):
        cfg["scaling_factor"] = json.load(open(d + "/activation_scaler.json"))["scaling_factor"]
    return Dict(cfg, read_safetensors(d + "/sae_weights.safetensors", float64=True), d)


def load_set(d):
    if os.path.exists(d + "/cfg.json"):
        return [load_dict(d)]
    out = []
    hin, hout = "hook_resid_mid", "hook_mlp_out"
    if os.path.exists(d + "/config.yaml"):
        for line in open(d + "/config.yaml"):
            m = re.match(r"feature_(input|output)_hook:\s*[\"']?([^\"'\s]+)", line)
            if m and m.group(1) == "input":
                hin = m.group(2)
            elif m:
                hout = m.group(2)
    for name in sorted(os.listdir(d)):
        p = d + "/" + name
        m = re.fullmatch(r"layer_(\d+)\.safetensors", name)
        if os.path.isdir(p) and os.path.exists(p + "/cfg.json"):
            out.append(load_dict(p))
        elif m:
            w = read_safetensors(p, float64=True)
            w["W_enc"] = w["W_enc"].T
            if "activation_function.threshold" in w:
                w["threshold"] = w.pop("activation_function.threshold")
            l = int(m.group(1))
            arch = "jumprelu_transcoder" if "threshold" in w else "transcoder"
            cfg = {"architecture": arch, "hook_name": "blocks.%d.%s" % (l, hin),
                   "hook_name_out": "blocks.%d.%s" % (l, hout), "apply_b_dec_to_input": False}
            out.append(Dict(cfg, w, p))
    return out


# ---- the model with hook points ----

ALIAS = {"mlp.hook_in": "ln2.hook_normalized_w", "mlp.hook_out": "hook_mlp_out"}


def load_model(d):
    """GPT-2 (gpt2_ref's weights) or another family (tests/ref/families.py's
    forward, with the same hook points)."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    if cfg.get("model_type", "gpt2") == "gpt2":
        return load_gpt2(d)
    return ("family",) + family_recv.load(d)


def forward(model, tok, replace=None):
    """Logits (T, V) and {hook: activation} of one sequence; replace(name, act)
    may return a replacement for any hook's activation."""
    if model[0] == "family":
        cache = {}

        def fhook(name, a):
            cache[name] = a
            r = replace(name, a) if replace else None
            return a if r is None else r

        _, a, names, W = model
        return families.forward(a, W, names, tok, fhook), cache
    cfg, w = model
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = cfg.get("activation_function", "gelu_new")
    T = tok.shape[0]
    cache = {}

    def hook(name, a):
        cache[name] = a
        if replace:
            r = replace(name, a)
            if r is not None:
                return r
        return a

    x = w["wte.weight"][tok] + w["wpe.weight"][:T]
    for l in range(L):
        p, b = "h.%d." % l, "blocks.%d." % l
        x = hook(b + "hook_resid_pre", x)
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = (h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(C, -1)
        q, k, v = (t.view(T, H, D).transpose(0, 1) for t in (q, k, v))
        s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
            torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        z = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, C)
        z = hook(b + "attn.hook_z", z)
        attn_out = hook(b + "hook_attn_out", z @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"])
        x = hook(b + "hook_resid_mid", x + attn_out)
        x_in = hook(b + "hook_mlp_in", x)
        mu = x_in.mean(-1, keepdim=True)
        var = ((x_in - mu) ** 2).mean(-1, keepdim=True)
        nrm = (x_in - mu) / torch.sqrt(var + eps)
        hook(b + "ln2.hook_normalized", nrm)
        hn = hook(b + "ln2.hook_normalized_w", nrm * w[p + "ln_2.weight"] + w[p + "ln_2.bias"])
        mo = gelu(hn @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], act) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        mo = hook(b + "hook_mlp_out", mo)
        x = hook(b + "hook_resid_post", x + mo)
    logits = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps) @ w["lm_head.weight"].T
    return logits, cache


def hook_key(d, name):
    layer, point = re.match(r"(blocks\.\d+\.)(.*)", name).groups()
    point = ALIAS.get(point, point)
    if point == "ln2.hook_normalized" and not d.fold_ln:
        point = "ln2.hook_normalized_w"
    return layer + point


def examples(path):
    for line in open(path):
        rec = json.loads(line)
        if "clean" in rec:
            yield rec["id"], torch.tensor(rec["clean"]["data"])


def harvest(model_dir, set_dir, tokens):
    model, ds = load_model(model_dir), load_set(set_dir)
    for ex, tok in examples(tokens):
        _, cache = forward(model, tok)
        for k, d in enumerate(ds):
            f = d.encode(cache[hook_key(d, d.hook_in)])
            print(json.dumps({"id": ex, "dict": k, "f": f.tolist()}))


def evaluate(model_dir, set_dir, tokens):
    model, ds = load_model(model_dir), load_set(set_dir)
    for k, d in enumerate(ds):
        sse = rows = l0 = 0.0
        targets = []
        fire = None
        ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        kl = ce_rows = 0.0
        for ex, tok in examples(tokens):
            logits, cache = forward(model, tok)
            x = cache[hook_key(d, d.hook_in)]
            target = cache[hook_key(d, d.hook_out)]
            f = d.encode(x)
            out = d.decode(f, x)
            sse += ((out - target) ** 2).sum().item()
            targets.append(target)
            rows += x.shape[0]
            l0 += (f != 0).sum().item()
            fire = (f != 0).sum(0) if fire is None else fire + (f != 0).sum(0)
            out_key = hook_key(d, d.hook_out)
            sp, _ = forward(model, tok, lambda n, a: out if n == out_key else None)
            zl, _ = forward(model, tok, lambda n, a: torch.zeros_like(a) if n == out_key else None)
            nxt = tok[1:]
            T = tok.shape[0]
            for name, lg in (("clean", logits), ("spliced", sp), ("zero", zl)):
                ce[name] += torch.nn.functional.cross_entropy(lg[:T - 1], nxt, reduction="sum").item()
            lc, ls = torch.log_softmax(logits[:T - 1], -1), torch.log_softmax(sp[:T - 1], -1)
            kl += (lc.exp() * (lc - ls)).sum().item()
            ce_rows += T - 1
        tg = torch.cat(targets)
        var = ((tg - tg.mean(0)) ** 2).sum().item()
        dens = fire.double() / rows
        S = dens.shape[0]
        hist = [0] * 16
        for v in dens.tolist():
            if v > 0:
                hist[min(15, max(0, int(math.floor((math.log10(v) + 8) / 0.5))))] += 1
        cc, cs, cz = ce["clean"] / ce_rows, ce["spliced"] / ce_rows, ce["zero"] / ce_rows
        print(json.dumps({
            "dict": k, "rows": int(rows), "mse": sse / (rows * tg.shape[1]), "fvu": sse / var,
            "l0": l0 / rows, "dead_frac": (dens == 0).sum().item() / S,
            "dense_frac": (dens > 0.1).sum().item() / S, "density_hist": hist,
            "ce_clean": cc, "ce_spliced": cs, "ce_zero": cz,
            "ce_loss_recovered": (cz - cs) / (cz - cc), "kl": kl / ce_rows}))


def intervene(model_dir, set_dir, tokens, specs):
    """circ-forward --dict --intervene's reference: each example's logit
    difference with the edits (<dict index>:<feature>@<pos>=V or *F) applied
    to one dictionary's features at every prompt, its error kept."""
    model, ds = load_model(model_dir), load_set(set_dir)
    edits = []
    for sp in specs:
        m = re.match(r"(\d+):(\d+)@(\d+)([=*])(.+)$", sp)
        edits.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), float(m.group(5))))
    d = ds[edits[0][0]]
    for line in open(tokens):
        rec = json.loads(line)
        if "clean" not in rec:
            continue
        tok = torch.tensor(rec["clean"]["data"])
        _, cache = forward(model, tok)
        x = cache[hook_key(d, d.hook_in)]
        target = cache[hook_key(d, d.hook_out)]
        f = d.encode(x)
        f2 = f.clone()
        for _, i, t, op, v in edits:
            f2[t, i] = f2[t, i] * v if op == "*" else v
        out = target + d.decode(f2, x) - d.decode(f, x)
        key = hook_key(d, d.hook_out)
        lg, _ = forward(model, tok, lambda n, a: out if n == key else None)
        row = lg[rec["pos"]]
        md = sum(row[a] for a in rec["answer"]) / len(rec["answer"]) - \
            sum(row[w] for w in rec["wrong"]) / len(rec["wrong"])
        print(json.dumps({"id": rec["id"], "metric": float(md)}))


def cfgcheck(d):
    cfg = json.load(open(d + "/cfg.json"))
    want = dict(SAELENS_KEYS)
    if "transcoder" in cfg.get("architecture", ""):
        want.update(TRANSCODER_KEYS)
    for k, types in want.items():
        if k not in cfg:
            raise SystemExit("cfgcheck: key '%s' missing" % k)
        v = cfg[k]
        if not any(type(v) is t for t in types):  # bool is not int here
            raise SystemExit("cfgcheck: key '%s': %s is not %s" % (k, type(v).__name__,
                                                                   "/".join(t.__name__ for t in types)))
    if cfg["architecture"] == "topk" and not isinstance(cfg["activation_fn_kwargs"].get("k"), int):
        raise SystemExit("cfgcheck: key 'activation_fn_kwargs': no integer k for topk")
    if cfg["normalize_activations"] not in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        raise SystemExit("cfgcheck: key 'normalize_activations': unknown value")
    print("ok")


def load_pair(cpath, rpath):
    """circ's records (header and end record dropped) and the reference's."""
    c = [json.loads(x) for x in open(cpath)][1:-1]
    r = [json.loads(x) for x in open(rpath)]
    if len(c) != len(r):
        raise SystemExit("compare: %d records, want %d" % (len(c), len(r)))
    return c, r


def compare_eval(cpath, rpath):
    c, r = load_pair(cpath, rpath)
    worst = 0.0
    for a, b in zip(c, r):
        if a["rows"] != b["rows"] or a["density_hist"]["counts"] != b["density_hist"]:
            raise SystemExit("compare: dict %d: rows or histogram differ: %s %s" % (
                a["dict"], (a["rows"], a["density_hist"]["counts"]), (b["rows"], b["density_hist"])))
        for k in ("mse", "fvu", "l0", "dead_frac", "dense_frac", "ce_clean", "ce_spliced",
                  "ce_zero", "ce_loss_recovered", "kl"):
            err = abs(a[k] - b[k])
            worst = max(worst, err / (1e-6 + abs(b[k])))
            if not err <= 1e-4 * abs(b[k]) + 1e-6:
                raise SystemExit("compare: dict %d: %s %r, reference %r" % (a["dict"], k, a[k], b[k]))
    print("ok: %d dictionaries, worst relative difference %.2g" % (len(c), worst))


def compare_harvest(cpath, rpath):
    c, r = load_pair(cpath, rpath)
    active = 0
    for a, b in zip(c, r):
        if (a["id"], a["dict"]) != (b["id"], b["dict"]):
            raise SystemExit("compare: record order: %r, want %r" % ((a["id"], a["dict"]), (b["id"], b["dict"])))
        T, f = a["T"], b["f"]
        rp, ft, ac = a["row_ptr"]["data"], a["feat"]["data"], a["act"]["data"]
        if len(f) != T or len(rp) != T + 1 or rp[0] != 0 or rp[-1] != len(ft) or len(ft) != len(ac):
            raise SystemExit("compare: id %d dict %d: malformed rows" % (a["id"], a["dict"]))
        dense = [[0.0] * len(f[0]) for _ in range(T)]
        for t in range(T):
            idx = ft[rp[t]:rp[t + 1]]
            if idx != sorted(set(idx)):
                raise SystemExit("compare: id %d: features not increasing" % a["id"])
            for j, v in zip(idx, ac[rp[t]:rp[t + 1]]):
                dense[t][j] = v
        for t in range(T):
            for j, want in enumerate(f[t]):
                if not abs(dense[t][j] - want) <= 1e-4 * abs(want) + 1e-5:
                    raise SystemExit("compare: id %d dict %d row %d feature %d: %r, reference %r" % (
                        a["id"], a["dict"], t, j, dense[t][j], want))
                active += want != 0
    print("ok: %d records, %d active features" % (len(c), active))


def main():
    a = sys.argv[1:]
    if len(a) >= 2 and a[0] == "make":
        make(a[1], a[2:])
    elif len(a) == 2 and a[0] == "make-many":
        for line in open(a[1]):
            w = shlex.split(line)
            if w:
                make(w[0], w[1:])
    elif len(a) >= 2 and a[0] == "make-ct":
        make_ct(a[1], a[2:])
    elif len(a) == 4 and a[0] == "harvest":
        harvest(*a[1:])
    elif len(a) == 4 and a[0] == "eval":
        evaluate(*a[1:])
    elif len(a) == 3 and a[0] == "compare-eval":
        compare_eval(a[1], a[2])
    elif len(a) == 3 and a[0] == "compare-harvest":
        compare_harvest(a[1], a[2])
    elif len(a) >= 5 and a[0] == "intervene":
        intervene(a[1], a[2], a[3], a[4:])
    elif len(a) == 2 and a[0] == "cfgcheck":
        cfgcheck(a[1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
