#!/usr/bin/python3
"""Writes a scores stream (JSON lines) for an L-layer, H-head graph with
heavy-tailed random scores, rounded so that ties occur; for tests.

usage: random_scores.py L H [SEED] > scores.jsonl
"""
import json, random, sys

L, H = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
ups, edges = ["input"], []
for l in range(L):
    below = list(ups)
    for h in range(H):
        for c in "qkv":
            edges += [f"{u}->a{l}.h{h}<{c}>" for u in below]
    heads = [f"a{l}.h{h}" for h in range(H)]
    edges += [f"{u}->m{l}" for u in below + heads]
    ups += heads + [f"m{l}"]
edges += [f"{u}->logits" for u in ups]
digest = "sha256:" + "%064x" % (L * 1000 + H)
print(json.dumps({"format": "circ", "version": 1, "kind": "scores", "method": "eap",
                  "metric": "kl", "graph": {"n_layer": L, "n_head": H, "level": "edge"},
                  "model_digest": digest, "dataset_digest": digest, "n_examples": 1},
                 separators=(",", ":")))
for e in edges:
    s = round(rng.gauss(0, 1) ** 3, 3)
    print(json.dumps({"edge": e, "score": s, "sum": s, "count": 1}, separators=(",", ":")))
