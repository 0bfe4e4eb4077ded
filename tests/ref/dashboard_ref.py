"""Independent reference for circ-render --dashboard --format jsonl.

usage: dashboard_ref.py check CIRC.jsonl REF_HARVEST.jsonl MODEL DICTSET TOKENS.jsonl N K W L

REF_HARVEST is dict_ref.py harvest's output (PyTorch, float64: dense
feature activations per position). From it, the model's unembedding and the
dictionaries' W_dec (read with stio), this recomputes: the N features active
at the most positions (ties: smaller dictionary, then feature), each one's
count, its K top examples (largest per-example maximum, ties: smaller id;
first position of the maximum) with the W-token window and its activations,
its histogram's total, and the L tokens whose logits W_dec[f] . W_U promotes
and suppresses (an attn.hook_z dictionary's W_dec[f] through the layer's
c_proj weight, W_O, first). With a vocab.json in MODEL, each token's text is
its GPT-2 byte-level string mapped back to bytes; else the id. Tolerance: activations and logits within 1e-4 relative
(+1e-5 absolute) (circ computes in float32).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stio import read_safetensors  # noqa: E402


def close(a, b):
    return abs(a - b) <= 1e-4 * abs(b) + 1e-5


def load(path):
    return [json.loads(x) for x in open(path) if x.strip()]


def dict_dirs(set_dir):
    if os.path.exists(os.path.join(set_dir, "cfg.json")):
        return [set_dir]
    return sorted(os.path.join(set_dir, d) for d in os.listdir(set_dir)
                  if os.path.isdir(os.path.join(set_dir, d)))


def gpt2_byte_decoder():
    """GPT-2's byte <-> printable character table, inverted (char -> byte)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_texts(model_dir, V):
    path = os.path.join(model_dir, "vocab.json")
    if not os.path.exists(path):
        return {v: str(v) for v in range(V)}
    dec = gpt2_byte_decoder()
    vocab = json.load(open(path, encoding="utf-8"))
    return {i: bytes(dec[ch] for ch in s).decode("utf-8", "replace") for s, i in vocab.items()}


def direction(d, mt):
    w = read_safetensors(os.path.join(d, "sae_weights.safetensors"), float64=True)["W_dec"]
    hook = json.load(open(os.path.join(d, "cfg.json")))["hook_name"]
    if hook.endswith("attn.hook_z"):
        layer = hook.split(".")[1]
        w = w @ mt["transformer.h.%s.attn.c_proj.weight" % layer]
    return w


def check(cpath, rpath, model_dir, set_dir, tokens, N, K, W, L):
    N, K, W, L = int(N), int(K), int(W), int(L)
    circ = load(cpath)
    ref = load(rpath)
    toks = {r["id"]: r["clean"]["data"] for r in load(tokens)[1:] if "id" in r}
    mt = read_safetensors(os.path.join(model_dir, "model.safetensors"), float64=True)
    WU = mt.get("lm_head.weight", mt.get("transformer.wte.weight"))
    W_dec = [direction(d, mt) for d in dict_dirs(set_dir)]
    text = token_texts(model_dir, WU.shape[0])
    # per (dict, feature): count, per example (max, first argmax)
    count, best = {}, {}
    for r in ref:
        f = np.array(r["f"])  # (T, S)
        for j in range(f.shape[1]):
            col = f[:, j]
            nz = int((col != 0).sum())
            if nz == 0:
                continue
            key = (r["dict"], j)
            count[key] = count.get(key, 0) + nz
            p = int(np.argmax(col))
            best.setdefault(key, []).append((-col[p], r["id"], p, col))
    order = sorted(count, key=lambda k: (-count[k], k))[:N]
    assert len(circ) == len(order), (len(circ), len(order))
    for c, key in zip(circ, order):
        assert (c["dict"], c["feature"]) == key, ((c["dict"], c["feature"]), key)
        assert c["count"] == count[key], (key, c["count"], count[key])
        assert sum(c["hist"]["counts"]) == count[key]
        ctx = sorted(best[key])[:K]
        assert len(c["contexts"]) == len(ctx), key
        for cc, (negm, ex, p, col) in zip(c["contexts"], ctx):
            assert cc["id"] == ex and cc["pos"] == p, (key, cc["id"], cc["pos"], ex, p)
            assert close(cc["max"], -negm), (key, cc["max"], -negm)
            lo, hi = max(0, p - W), min(len(col), p + W + 1)
            assert cc["start"] == lo and cc["tokens"] == toks[ex][lo:hi], key
            assert cc["text"] == [text[t] for t in cc["tokens"]], (key, cc["text"])
            for a, b in zip(cc["acts"], col[lo:hi]):
                assert close(a, b), (key, a, b)
            assert len(cc["acts"]) == hi - lo
        logit = WU @ W_dec[key[0]][key[1]]
        up = sorted(range(len(logit)), key=lambda v: (-logit[v], v))[:L]
        down = sorted(range(len(logit)), key=lambda v: (logit[v], v))[:L]
        for got, want in ((c["promoted"], up), (c["suppressed"], down)):
            assert [g["token"] for g in got] == want, (key, got, want)
            for g in got:
                assert g["text"] == text[g["token"]], (key, g)
                assert close(g["logit"], logit[g["token"]]), (key, g)
    print("dashboard: %d features match" % len(circ))


if __name__ == "__main__":
    if len(sys.argv) == 11 and sys.argv[1] == "check":
        check(*sys.argv[2:])
    else:
        sys.exit(__doc__)
