#!/usr/bin/python3
"""The PyTorch side of circ's model benchmark (see bench/model.sh).

Usage: torch_model.py MODEL_DIR THREADS REPS [B T]
Loads the same model.safetensors as circ (a small parser of its own; float32
weights) and times, on B prompts of T tokens (default 32 x 16), with the
given thread count for both PyTorch and its BLAS:
  fwd_full   a plain GPT-2 forward (no_grad), logits at every position, as
             Hugging Face's GPT2LMHeadModel computes it (fused c_attn,
             F.layer_norm, softmax attention, tanh GELU, tied lm_head);
  fwd_last   the same with logits at the last position only;
  fwd_bwd    forward + backward to every receiver's input: each head's q, k
             and v input as its own tensor (the residual split per head,
             with its own ln_1, as TransformerLens' split_qkv_input and
             EAP-IG do), the MLP inputs and the final residual, via
             retain_grad, from a logprob metric at the last position;
             parameters do not require gradients.
With BENCH_BF16=1 it first times both forwards under torch.autocast("cpu",
bfloat16) too (fwd_full_bf16, fwd_last_bf16; BENCH_ONLY_BF16=1: only those).
Prints "name wall_min wall_median cpu_min" lines (seconds; cpu is the
process's CPU time) and "rss_kb N".
"""
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as Fn


def load_mmap(d):
    """config.json and the weights as views of a copy-on-write memory map of
    model.safetensors (as the safetensors library loads a file): no read
    of the whole file into memory, no copy; pages are read as touched."""
    cfg = json.load(open(d + "/config.json"))
    path = d + "/model.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="c")
    w = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        b, e = v["data_offsets"]
        a = mm[8 + n + b:8 + n + e].view("<f4")
        k = k[len("transformer."):] if k.startswith("transformer.") else k
        w[k] = torch.from_numpy(a).view(v["shape"])
    return cfg, w


def load(d):
    """The weights as tensors of their own (copied out of the map)."""
    cfg, w = load_mmap(d)
    return cfg, {k: v.clone() for k, v in w.items()}


def main():
    d, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    B, T = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) >= 6 else (32, 16)
    torch.set_num_threads(threads)
    cfg, w = load(d)
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    V = cfg["vocab_size"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    Ls = [{k[len("h.%d." % l):]: v for k, v in w.items() if k.startswith("h.%d." % l)} for l in range(L)]
    wte, wpe = w["wte.weight"], w["wpe.weight"]
    lnf = (w["ln_f.weight"], w["ln_f.bias"])
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, V, (B, T), generator=g)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)

    def forward(last):
        x = wte[tok] + wpe[:T]
        for p in Ls:
            h = Fn.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], eps)
            qkv = torch.addmm(p["attn.c_attn.bias"], h.view(-1, C), p["attn.c_attn.weight"])
            q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
            a = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            a = a.masked_fill(mask, float("-inf")).softmax(-1)
            z = (a @ v).transpose(1, 2).reshape(B * T, C)
            x = x + torch.addmm(p["attn.c_proj.bias"], z, p["attn.c_proj.weight"]).view(B, T, C)
            h = Fn.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], eps)
            m = Fn.gelu(torch.addmm(p["mlp.c_fc.bias"], h.view(-1, C), p["mlp.c_fc.weight"]), approximate="tanh")
            x = x + torch.addmm(p["mlp.c_proj.bias"], m, p["mlp.c_proj.weight"]).view(B, T, C)
        if last:
            x = x[:, -1]
        return Fn.layer_norm(x, (C,), *lnf, eps) @ wte.T

    def forward_split():
        """Per-receiver inputs: q, k, v of each head get their own copy of
        the residual (B, T, H, C) with its own LayerNorm."""
        keep = []
        x = (wte[tok] + wpe[:T]).requires_grad_(True)
        for p in Ls:
            W = p["attn.c_attn.weight"].view(C, 3, H, D)
            bq = p["attn.c_attn.bias"].view(3, H, D)
            qkv = []
            for c in range(3):
                xin = x[:, :, None, :].expand(B, T, H, C)
                xin.retain_grad()
                keep.append(xin)
                h = Fn.layer_norm(xin, (C,), p["ln_1.weight"], p["ln_1.bias"], eps)
                qkv.append(torch.einsum("bthc,chd->bhtd", h, W[:, c]) + bq[c][None, :, None, :])
            q, k, v = qkv
            a = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            a = a.masked_fill(mask, float("-inf")).softmax(-1)
            z = (a @ v).transpose(1, 2).reshape(B * T, C)
            x = x + torch.addmm(p["attn.c_proj.bias"], z, p["attn.c_proj.weight"]).view(B, T, C)
            xm = x + 0
            xm.retain_grad()
            keep.append(xm)
            h = Fn.layer_norm(xm, (C,), p["ln_2.weight"], p["ln_2.bias"], eps)
            m = Fn.gelu(torch.addmm(p["mlp.c_fc.bias"], h.view(-1, C), p["mlp.c_fc.weight"]), approximate="tanh")
            x = x + torch.addmm(p["mlp.c_proj.bias"], m, p["mlp.c_proj.weight"]).view(B, T, C)
        xf = x + 0
        xf.retain_grad()
        keep.append(xf)
        logits = Fn.layer_norm(xf[:, -1], (C,), *lnf, eps) @ wte.T
        metric = torch.log_softmax(logits, -1)[:, 11].sum()
        metric.backward()
        return [t.grad for t in keep]

    def timeit(name, fn):
        fn()
        ts, cs = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        ts.sort()
        print("%s %.6f %.6f %.6f" % (name, ts[0], ts[len(ts) // 2], min(cs)), flush=True)

    if os.environ.get("BENCH_BF16") == "1":  # PyTorch's own bf16 on the CPU
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            timeit("fwd_full_bf16", lambda: forward(False))
            timeit("fwd_last_bf16", lambda: forward(True))
        if os.environ.get("BENCH_ONLY_BF16") == "1":
            return
    with torch.no_grad():
        timeit("fwd_full", lambda: forward(False))
        timeit("fwd_last", lambda: forward(True))
    timeit("fwd_bwd", forward_split)
    print("rss_kb %d" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    main()
