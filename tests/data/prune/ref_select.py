#!/usr/bin/python3
"""Reference selection for tests/prune.bats, written independently of the C
code and the way EAP-IG's Graph does it (apply_topn / apply_threshold /
apply_greedy, then prune): reads a scores stream as JSON lines and prints
the kept edge names, one a line, in canonical order.

usage: ref_select.py (top-n N | threshold T | greedy N) [signed] < scores.jsonl

Ties are broken by canonical edge order (the order of the graph's edges by
receiver, then upstream), which is what circ-prune promises.
"""
import heapq, json, sys

mode, arg = sys.argv[1], sys.argv[2]
signed = len(sys.argv) > 3 and sys.argv[3] == "signed"
lines = sys.stdin.read().splitlines()
hdr = json.loads(lines[0])
L, H = hdr["graph"]["n_layer"], hdr["graph"]["n_head"]

# Canonical edges: receivers per layer (head h: q, k, v), MLP, then logits.
ups, edges = ["input"], []  # edges: (name, upstream node, downstream node)
for l in range(L):
    below = list(ups)
    for h in range(H):
        for c in "qkv":
            edges += [(f"{u}->a{l}.h{h}<{c}>", u, f"a{l}.h{h}") for u in below]
    heads = [f"a{l}.h{h}" for h in range(H)]
    edges += [(f"{u}->m{l}", u, f"m{l}") for u in below + heads]
    ups += heads + [f"m{l}"]
edges += [(f"{u}->logits", u, "logits") for u in ups]
index = {e[0]: i for i, e in enumerate(edges)}

score = {}
for line in lines[1:]:
    r = json.loads(line)
    score[r["edge"]] = r["score"]
key = lambda name: score[name] if signed else abs(score[name])
ranked = sorted((e[0] for e in edges if e[0] in score), key=lambda n: (-key(n), index[n]))

kept = set()
if mode == "top-n":
    kept = set(ranked[:int(arg)])
elif mode == "threshold":
    kept = {n for n in ranked if key(n) >= float(arg)}
elif mode == "greedy":
    parents = {}  # node -> edges into it
    for name, u, v in edges:
        parents.setdefault(v, []).append(name)
    up_of = {e[0]: e[1] for e in edges}
    in_graph = {"logits"}
    heap = [(-key(n), index[n], n) for n in parents["logits"] if n in score]
    heapq.heapify(heap)
    for _ in range(int(arg)):
        _, _, n = heapq.heappop(heap)
        kept.add(n)
        u = up_of[n]
        if u not in in_graph:
            in_graph.add(u)
            for p in parents.get(u, []):
                if p in score:
                    heapq.heappush(heap, (-key(p), index[p], p))
else:
    sys.exit("ref_select: unknown mode " + mode)

# EAP-IG's prune: repeatedly drop nodes without kept in- or out-edges
# (input counts as having inputs, logits as having outputs), then edges
# that lost an end.
while True:
    has_out = {u for n in kept for (name, u, v) in [edges[index[n]]]}
    has_in = {v for n in kept for (name, u, v) in [edges[index[n]]]} | {"input"}
    has_out.add("logits")
    alive = has_in & has_out
    new = {n for n in kept if edges[index[n]][1] in alive and edges[index[n]][2] in alive}
    if new == kept:
        break
    kept = new
for name, _, _ in edges:
    if name in kept:
        print(name)
