#!/usr/bin/python3
"""Agreement of two circ-score outputs (JSON lines) over the same edges:
Spearman rank correlation of the scores and the overlap of the top-k edges
by |score|. Prints one JSON object: {"edges", "spearman", "topk", "overlap"}.
Usage: compare_scores.py A.jsonl B.jsonl K"""
import json
import sys


def load(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if "edge" in r:
            out[r["edge"]] = r["score"]
    return out


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for q in range(i, j + 1):
            r[order[q]] = (i + j) / 2.0
        i = j + 1
    return r


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5


a, b, k = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
if set(a) != set(b):
    sys.exit("compare_scores.py: the two outputs score different edges")
edges = sorted(a)
x, y = [a[e] for e in edges], [b[e] for e in edges]
top = lambda s: set(sorted(edges, key=lambda e: -abs(s[e]))[:k])
print(json.dumps({"edges": len(edges), "spearman": pearson(ranks(x), ranks(y)),
                  "topk": k, "overlap": len(top(a) & top(b))}))
