#!/usr/bin/python3
"""Structural mutants of a circ JSON-lines stream, each given to a command.

usage: mutate.py SEED N INPUT.jsonl DIR -- CMD... ('@' in CMD is the mutant)

Each of the N mutants (seeded: the same ones every run) changes one to three
things: a field removed, a value replaced by one of another type or range
(null, booleans, huge and negative numbers, empty strings, tensors of the
wrong shape), a string cut or extended, a number nudged, a record removed,
repeated or moved. The command must accept a mutant (exit 0) or refuse it
with a message on stderr and exit status 1 or 2: never a signal, another
status, a silent failure or a sanitizer's report (the sanitized Bats run of
make check; leaks on the error paths are allowed there, as here). Every problem is printed with the mutant kept in DIR; the exit
status is the number of problems (at most 100).
"""
import json
import os
import random
import subprocess
import sys

WEIRD = [None, True, False, -1, 0, 1, 2**31, 2**63 - 1, -2**63, 1e308, -1e308, 1e-320, 0.5,
         "", "x", "a0.h0", "input", "logits", "->", [], [1], [[1]], {},
         {"dtype": "f32", "shape": [1], "data": [1]},
         {"dtype": "i32", "shape": [2], "data": [1, 2]},
         {"dtype": "f32", "shape": [2, 2], "data": [1]},
         {"dtype": "i32", "shape": [-1], "data": []}]


def paths(o, p=()):
    yield p
    if isinstance(o, dict):
        for k, v in o.items():
            yield from paths(v, p + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o[:8]):
            yield from paths(v, p + (i,))


def get(o, p):
    for k in p:
        o = o[k]
    return o


def mutate(rnd, records):
    recs = json.loads(json.dumps(records))
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        kind = rnd.random()
        if kind < 0.08 and len(recs) > 1:
            del recs[rnd.randrange(1, len(recs))]
            continue
        if kind < 0.12:
            copy = json.loads(json.dumps(recs[rnd.randrange(len(recs))]))
            recs.insert(rnd.randrange(len(recs)), copy)
            continue
        if kind < 0.15 and len(recs) > 2:
            i, j = rnd.randrange(1, len(recs)), rnd.randrange(1, len(recs))
            recs[i], recs[j] = recs[j], recs[i]
            continue
        i = 0 if rnd.random() < 0.3 else rnd.randrange(len(recs))
        ps = [p for p in paths(recs[i]) if p]
        if not ps:
            continue
        p = rnd.choice(ps)
        parent, v, r = get(recs[i], p[:-1]), get(recs[i], p), rnd.random()
        if r < 0.3 and isinstance(parent, dict):
            del parent[p[-1]]
        elif r < 0.4 and isinstance(v, str):
            parent[p[-1]] = v[:rnd.randrange(len(v) + 1)] + rnd.choice(
                ["", "x", "9", ".", "<q>", "\u00e9"])
        elif r < 0.5 and isinstance(v, (int, float)) and not isinstance(v, bool):
            parent[p[-1]] = rnd.choice([v + 1, v - 1, -v, v * 1000, 0])
        else:
            parent[p[-1]] = rnd.choice(WEIRD)
    return recs


def main():
    if len(sys.argv) < 7 or "--" not in sys.argv:
        sys.exit(__doc__)
    seed, n, src, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    records = [json.loads(line) for line in open(src)]
    rnd = random.Random(seed)
    bad = 0
    # the tools exit on their error paths with memory still allocated (as
    # git's die() does): leaks are the unit tests' to find, as in make check
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=0" + (":" + env["ASAN_OPTIONS"] if env.get("ASAN_OPTIONS") else "")
    for t in range(n):
        path = os.path.join(out, f"mutant-{seed}-{t}.jsonl")
        with open(path, "w") as f:
            for rec in mutate(rnd, records):
                f.write(json.dumps(rec) + "\n")
        argv = [path if a == "@" else a for a in cmd]
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=300,
                           env=env)
        err = p.stderr
        problem = None
        if "runtime error" in err or "Sanitizer" in err:
            problem = "a sanitizer's report"
        elif p.returncode < 0:
            problem = f"signal {-p.returncode}"
        elif p.returncode > 2:
            problem = f"exit status {p.returncode}"
        elif p.returncode != 0 and not err.strip():
            problem = "a failure without a message"
        if problem:
            bad += 1
            print(f"{problem}: {' '.join(argv)}\n{err.strip()[:1000]}")
        else:
            os.remove(path)
    print(f"{n} mutants of {src}, {bad} problems", file=sys.stderr)
    sys.exit(min(bad, 100))


if __name__ == "__main__":
    main()
