#!/usr/bin/python3
"""PyTorch reference (float64) for the parameter gradients of the families
other than GPT-2 (circ_bwd.dparams), for tests/unit/test_train.c: autograd
through the family forward of tests/ref/families.py (written from the
Hugging Face modeling code's semantics; no transformers needed).

Usage: fam_train_ref.py CASES.json
CASES.json is a list of objects {"model": DIR, "data": FILE, "out": FILE}.
DIR is a family model directory (config.json, model.safetensors or shards;
the stored weights are read as float64). FILE (safetensors) holds "tokens"
I32 (B, T), "rows" I32 (N, 2) (sequence, position) and "targets" I32 (N):
the loss is the mean cross-entropy of the logits at rows against targets.
The script writes OUT with "loss" (1) and grad.<Hugging Face name> for
every tensor of the model (a tied model's embedding gradient includes the
unembedding's share, as one tensor).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families as fam  # noqa: E402
from family_recv import load  # noqa: E402
from stio import read_safetensors, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)


def run_case(c):
    a, names, W = load(c["model"])
    for v in W.values():
        v.requires_grad_(True)
    data = read_safetensors(c["data"])
    tokens = torch.from_numpy(data["tokens"].astype(np.int64))
    rows, targets = data["rows"].astype(np.int64), data["targets"].astype(np.int64)
    logits = torch.stack([fam.forward(a, W, names, tokens[b]) for b in range(tokens.shape[0])])
    sel = logits[torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])]
    loss = torch.nn.functional.cross_entropy(sel, torch.from_numpy(targets))
    loss.backward()
    out = {"loss": np.array([loss.item()])}
    for k, v in W.items():
        out["grad." + k] = (v.grad if v.grad is not None else torch.zeros_like(v)).numpy()
    write_safetensors(c["out"], out)


def main():
    for c in json.load(open(sys.argv[1])):
        run_case(c)


if __name__ == "__main__":
    main()
