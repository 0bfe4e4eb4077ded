#!/usr/bin/python3
"""PyTorch reference (float64) for circ's dictionary training
(lib/dict_train.c), for tests/unit/test_dict_train.c.

Each architecture written from its paper's formulas, autograd for the
gradients:
  relu       f = relu(pre); mse + l1 * mean_b sum_i f_i ||W_dec,i||
  topk       f = relu(topk_k(pre)) per token
  batchtopk  the B*k largest of relu(pre) over the batch
  jumprelu   f = pre * H(pre - theta), theta = exp(log_theta); mse + l0 *
             mean_b sum_i H(pre_i - theta_i); theta's gradient by the
             straight-through estimator with the rectangle kernel
             K(u) = 1[|u| < 1/2] of width `bandwidth`: d f / d theta =
             -(theta / eps) K((pre - theta) / eps), d H / d theta =
             -(1 / eps) K(...), d H / d pre = 0
  AuxK (topk, batchtopk): the top k_aux of relu(pre) among dead latents
             fit the detached residual (target - y_hat) through W_dec alone:
             aux_coeff * min(n_dead / k_aux, 1) * mean_b ||e_hat - e||^2
where pre = (x - b_dec) W_enc + b_enc for an SAE (x W_enc + b_enc for a
transcoder) and mse = mean_b ||y_hat - target||^2.

Usage: dict_train_ref.py CASES.json. CASES.json is a list of objects
  {"arch", "transcoder", "k", "k_aux", "aux_coeff", "l1", "l0",
   "bandwidth", "in": FILE, "out": FILE, "steps": K, "lr": [K rates],
   "l1_steps": [K l1 values], "betas": [b1, b2], "eps", "weight_decay",
   "clip"}
FILE (safetensors) holds W_enc (D, S), b_enc (S), W_dec (S, O), b_dec (O),
log_theta (S, jumprelu), W_skip (O, D: a transcoder with a skip
connection, y_hat += x W_skip^T, no weight decay), dead (S) (1.0 where dead), x (B, D), y (B, O)
(transcoders), and xs (K, B, D), ys (K, B, O) for the steps. OUT gets
grad.<name> (the gradient at the given parameters on x, y), loss (1), and
final.<name>: the parameters after K steps on xs[k], ys[k] of: loss,
backward, the decoder rows' gradient made orthogonal to the rows (every
architecture but relu), clip_grad_norm_, torch.optim.AdamW (weight decay on
W_enc and W_dec), the decoder rows renormalised (not relu); no latent is
dead during the steps.
"""
import json
import sys

import numpy as np
import torch

from stio import read_safetensors, write_safetensors

torch.set_default_dtype(torch.float64)


class JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        k = ((pre - theta) / eps).abs() < 0.5
        gtheta = (g * -(theta / eps) * k).sum(0)
        return g * (pre > theta), gtheta, None


class Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        k = ((pre - theta) / eps).abs() < 0.5
        return torch.zeros_like(pre), (g * -(1.0 / eps) * k).sum(0), None


def loss_fn(c, P, x, y, dead, l1):
    arch = c["arch"]
    tc = c["transcoder"]
    target = y if tc else x
    xc = x if tc else x - P["b_dec"]
    pre = xc @ P["W_enc"] + P["b_enc"]
    B, S = pre.shape
    if arch == "relu":
        f = torch.relu(pre)
    elif arch == "topk":
        v, i = pre.topk(c["k"], dim=-1)
        f = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
    elif arch == "batchtopk":
        flat = torch.relu(pre).flatten()
        v, i = flat.topk(B * c["k"])
        f = torch.zeros_like(flat).scatter(-1, i, v).view(B, S)
    else:
        theta = torch.exp(P["log_theta"])
        f = JumpReLU.apply(pre, theta, c["bandwidth"])
    yhat = f @ P["W_dec"] + P["b_dec"]
    if "W_skip" in P:
        yhat = yhat + x @ P["W_skip"].T
    loss = ((yhat - target) ** 2).sum(-1).mean()
    if arch == "relu":
        loss = loss + l1 * (f * P["W_dec"].norm(dim=1)).sum(-1).mean()
    if arch == "jumprelu":
        loss = loss + c["l0"] * Step.apply(pre, theta, c["bandwidth"]).sum(-1).mean()
    if arch in ("topk", "batchtopk") and c["aux_coeff"] > 0:
        ndead = int(dead.sum().item())
        kaux = min(c["k_aux"], S)
        if ndead > 0 and kaux > 0:
            keff = min(kaux, ndead)
            scale = min(ndead / kaux, 1.0)
            e = (target - yhat).detach()
            masked = torch.where(dead[None, :] > 0, pre, torch.full_like(pre, -float("inf")))
            v, i = masked.topk(keff, dim=-1)
            a = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
            ehat = a @ P["W_dec"]
            loss = loss + c["aux_coeff"] * scale * ((ehat - e) ** 2).sum(-1).mean()
    return loss


def run(c):
    T = read_safetensors(c["in"], float64=True)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["log_theta"] if c["arch"] == "jumprelu" else [])
    if "W_skip" in T:
        names.append("W_skip")
    P = {n: torch.tensor(T[n], requires_grad=True) for n in names}
    dead = torch.tensor(T["dead"])
    y = torch.tensor(T["y"]) if c["transcoder"] else None
    loss = loss_fn(c, P, torch.tensor(T["x"]), y, dead, c["l1"])
    loss.backward()
    out = {"loss": np.array([loss.item()])}
    for n in names:
        out["grad." + n] = P[n].grad.numpy().copy()
        P[n].grad = None
    decay = [P["W_enc"], P["W_dec"]]
    rest = [P[n] for n in names if n not in ("W_enc", "W_dec")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": c["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
        lr=1.0, betas=tuple(c["betas"]), eps=c["eps"])
    nodead = torch.zeros_like(dead)
    for k in range(c["steps"]):
        for g in opt.param_groups:
            g["lr"] = c["lr"][k]
        opt.zero_grad()
        yk = torch.tensor(T["ys"][k]) if c["transcoder"] else None
        loss_fn(c, P, torch.tensor(T["xs"][k]), yk, nodead, c["l1_steps"][k]).backward()
        unit = c["arch"] != "relu"
        if unit:
            W, G = P["W_dec"].detach(), P["W_dec"].grad
            G -= ((G * W).sum(1, keepdim=True) / (W * W).sum(1, keepdim=True)) * W
        if c["clip"] > 0:
            torch.nn.utils.clip_grad_norm_([P[n] for n in names], c["clip"])
        opt.step()
        if unit:
            with torch.no_grad():
                P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)
    for n in names:
        out["final." + n] = P[n].detach().numpy().copy()
    write_safetensors(c["out"], {k: v.astype(np.float32) for k, v in out.items()})


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for c in cases:
        run(c)


if __name__ == "__main__":
    main()
