#!/usr/bin/python3
"""Writes the hand-made fixtures for tests/prune.bats and tests/render.bats:
a scores stream for a 2-layer, 2-head graph (46 edges) in which a planted
circuit scores high, the planted circuit as a ground-truth edge list, and a
faithfulness curve. Deterministic; rerun to regenerate:
    /usr/bin/python3 tests/data/prune/gen.py tests/data/prune
"""
import hashlib, json, os, random, sys

L, H = 2, 2
out = sys.argv[1] if len(sys.argv) > 1 else "."
ups = ["input"]
edges = []  # canonical order: by receiver, then upstream
for l in range(L):
    below = list(ups)
    for h in range(H):
        for c in "qkv":
            edges += [f"{u}->a{l}.h{h}<{c}>" for u in below]
    heads = [f"a{l}.h{h}" for h in range(H)]
    edges += [f"{u}->m{l}" for u in below + heads]
    ups += heads + [f"m{l}"]
edges += [f"{u}->logits" for u in ups]
assert len(edges) == 46

truth = ["input->a0.h1<q>", "input->a0.h1<v>", "a0.h1->a1.h0<k>", "a0.h1->m1",
         "a1.h0->logits", "m1->logits", "input->a1.h0<q>"]
rng = random.Random(7)
digest = lambda s: "sha256:" + hashlib.sha256(s.encode()).hexdigest()
model = digest("tiny-2x2")
hdr = {"format": "circ", "version": 1, "kind": "scores", "tool": "gen.py",
       "method": "eap-ig", "metric": "logit_diff",
       "graph": {"n_layer": L, "n_head": H, "level": "edge"},
       "model_digest": model, "dataset_digest": digest("tiny-data"), "n_examples": 8}
with open(os.path.join(out, "scores.jsonl"), "w") as f:
    f.write(json.dumps(hdr, separators=(",", ":")) + "\n")
    for i, e in enumerate(edges):
        if e in truth:
            s = (1.0 + rng.random()) * (-1 if i % 3 == 0 else 1)
        else:
            s = rng.gauss(0, 0.3)
        s = round(s, 4)
        # sum/count as a shard of 8 examples would carry them
        f.write(json.dumps({"edge": e, "score": s, "sum": s * 8, "count": 8},
                           separators=(",", ":")) + "\n")
    # the end record, as every circ writer ends a stream (a "tool" header needs it)
    f.write(json.dumps({"$end": {"records": len(edges)}}, separators=(",", ":")) + "\n")
with open(os.path.join(out, "truth.jsonl"), "w") as f:
    for e in truth:
        f.write(json.dumps({"edge": e}) + "\n")
# A faithfulness curve as circ-patch will write it (values made up).
fr = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
fa = [0.02, 0.05, 0.11, 0.25, 0.48, 0.71, 0.86, 0.97, 1.01, 1.0]
chdr = {"format": "circ", "version": 1, "kind": "curve", "tool": "gen.py",
        "graph": {"n_layer": L, "n_head": H, "level": "edge"},
        "metric": "logit_diff", "model_digest": model}
with open(os.path.join(out, "curve.jsonl"), "w") as f:
    f.write(json.dumps(chdr, separators=(",", ":")) + "\n")
    for x, y in zip(fr, fa):
        f.write(json.dumps({"fraction": x, "n_edges": int(x * 46), "faithfulness": y,
                            "metric": round(3.2 * y, 4)}, separators=(",", ":")) + "\n")
    under = sum((fr[i + 1] - fr[i]) * (fa[i] + fa[i + 1]) / 2 for i in range(9))
    from1 = sum((fr[i + 1] - fr[i]) * (abs(1 - fa[i]) + abs(1 - fa[i + 1])) / 2 for i in range(9))
    f.write(json.dumps({"summary": True, "cpr": under, "cmd": from1},
                       separators=(",", ":")) + "\n")
    f.write(json.dumps({"$end": {"records": len(fr) + 1}}, separators=(",", ":")) + "\n")
