#!/usr/bin/env python3
"""make run's results, pinned (tests/golden.bats).

  golden.py save RUNS GOLD     record every stream's records (JSON lines, header
                               left out: it records paths and arguments) and every
                               report of a run directory into GOLD, with the CPU
  golden.py check RUNS GOLD    compare a run directory against GOLD
  golden.py same GOT WANT      two JSON-lines files: the same records, numbers
                               within the tolerance below, everything else exact

On the CPU (and OPENBLAS_CORETYPE) the golden files were made on, every file
must be byte-identical: a refactoring changes nothing. On another CPU,
OpenBLAS picks other kernels whose sums round differently, so numbers must
agree within 1e-5 relative (1e-7 absolute) and everything else exactly.
"""
import json, math, os, re, subprocess, sys

REL, ABS = 1e-5, 1e-7


def cpu():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return "%s | OPENBLAS_CORETYPE=%s" % (model, os.environ.get("OPENBLAS_CORETYPE", ""))


def collect(runs):
    """{relative name: text} for every stream and report under runs."""
    out = {}
    for d, _, files in os.walk(runs):
        for f in files:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, runs)
            if f.endswith(".circ"):
                txt = subprocess.run(["circ-cat", "--no-header", p], check=True,
                                     capture_output=True, text=True).stdout
                out[rel.replace("/", "__")[:-5] + ".jsonl"] = txt
            elif f == "report.txt":
                with open(p) as fh:
                    txt = re.sub(r"\S*runs/", "runs/", fh.read())
                out[rel.replace("/", "__")] = txt
    return out


def close(a, b):
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= ABS + REL * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def close_text(a, b):
    """Reports print numbers to 3-4 digits: words exact, numbers close."""
    if NUM.sub("#", a) != NUM.sub("#", b):
        return False
    for x, y in zip(NUM.findall(a), NUM.findall(b)):
        fx, fy = float(x), float(y)
        if abs(fx - fy) > 1e-3 + 1e-3 * max(abs(fx), abs(fy)):
            return False
    return True


def same(got, want):
    la, lb = open(want).read().splitlines(), open(got).read().splitlines()
    if len(la) != len(lb):
        print("golden: %s: %d records, want %d (%s)" % (got, len(lb), len(la), want))
        return 1
    for i, (x, y) in enumerate(zip(la, lb)):
        if not close(json.loads(x), json.loads(y)):
            print("golden: %s: record %d differs from %s:\n  want %s\n  got  %s" %
                  (got, i + 1, want, x, y))
            return 1
    return 0


def main():
    mode, runs, gold = sys.argv[1:4]
    if mode == "same":
        return same(runs, gold)
    got = collect(runs)
    if mode == "save":
        os.makedirs(gold, exist_ok=True)
        for f in os.listdir(gold):
            os.remove(os.path.join(gold, f))
        for k, v in got.items():
            with open(os.path.join(gold, k), "w") as fh:
                fh.write(v)
        with open(os.path.join(gold, "CPU"), "w") as fh:
            fh.write(cpu() + "\n")
        return 0
    with open(os.path.join(gold, "CPU")) as fh:
        exact = fh.read().strip() == cpu()
    want = {f: open(os.path.join(gold, f)).read() for f in os.listdir(gold) if f != "CPU"}
    bad = []
    if sorted(want) != sorted(got):
        bad.append("files differ: want %s, got %s" % (sorted(want), sorted(got)))
    for k in sorted(set(want) & set(got)):
        a, b = want[k], got[k]
        if a == b:
            continue
        if exact:
            bad.append("%s: not byte-identical (same CPU as the golden files)" % k)
        elif k.endswith(".jsonl"):
            la, lb = a.splitlines(), b.splitlines()
            if len(la) != len(lb):
                bad.append("%s: %d records, want %d" % (k, len(lb), len(la)))
                continue
            for i, (x, y) in enumerate(zip(la, lb)):
                if not close(json.loads(x), json.loads(y)):
                    bad.append("%s: record %d differs:\n  want %s\n  got  %s" % (k, i + 1, x, y))
                    break
        elif not close_text(a, b):
            bad.append("%s differs:\n%s\n---\n%s" % (k, a, b))
    print("golden: %s comparison (%s)" % ("exact" if exact else "tolerant", cpu()))
    for b in bad:
        print("golden: " + b)
    return 1 if bad else 0


sys.exit(main())
