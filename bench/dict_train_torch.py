#!/usr/bin/python3
"""A plain PyTorch training step of an SAE, the same work as one
circ_dtrain_step (bench/dict_train.sh times both):

  relu  f = relu((x - b_dec) W_enc + b_enc); loss = mean_b ||f W_dec + b_dec
        - x||^2 + l1 * mean_b sum_i f_i ||W_dec,i||; clip_grad_norm_(1); Adam
  topk  f = the k largest of relu(pre) scattered into zeros (dense decode, as
        SAELens does); AuxK over dead latents (none are dead here, as in
        circ's run); the decoder rows' gradient made orthogonal to them; Adam;
        rows renormalised

  relu-sparse  relu with b_enc started at -0.233 (about 1% of the latents
        fire, as in a trained SAE); the same dense step

Usage: dict_train_torch.py ARCH D_IN D_SAE BATCH THREADS STEPS
Prints "ARCH tokens_per_s wall_per_step_s L0" after one warm-up step.
"""
import sys
import time

import torch


def main():
    name, D, S, B, threads, steps = sys.argv[1], *map(int, sys.argv[2:])
    arch = "relu" if name == "relu-sparse" else name
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    W_dec = torch.randn(S, D)
    W_dec *= (0.1 if arch == "relu" else 1.0) / W_dec.norm(dim=1, keepdim=True)
    W_dec.requires_grad_(True)
    W_enc = W_dec.detach().t().clone().requires_grad_(True)
    b_enc = torch.full((S,), -0.233 if name == "relu-sparse" else 0.0, requires_grad=True)
    b_dec = torch.zeros(D, requires_grad=True)
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=5e-5 if arch == "relu" else 4e-4)
    x = torch.randn(B, D)
    k = 32

    l0 = [0.0]

    def step():
        opt.zero_grad(set_to_none=True)
        pre = (x - b_dec) @ W_enc + b_enc
        if arch == "relu":
            f = torch.relu(pre)
        else:
            v, i = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
        l0[0] = (f > 0).sum().item() / B
        recon = f @ W_dec + b_dec
        loss = ((recon - x) ** 2).sum(-1).mean()
        if arch == "relu":
            loss = loss + 5.0 * (f * W_dec.norm(dim=1)).sum(-1).mean()
        loss.backward()
        if arch == "relu":
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        else:
            with torch.no_grad():
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        if arch != "relu":
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    print("%s %.1f %.4f %.1f" % (name, B / dt, dt, l0[0]))


if __name__ == "__main__":
    main()
