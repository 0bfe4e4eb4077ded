#!/usr/bin/python3
"""A model directory of a released family's shape with random weights, for
make bench (written tensor by tensor: a 1B model never sits in memory as
float64).

    /usr/bin/python3 bench/family_model.py OUT SHAPE [DTYPE] [SEED]

SHAPE: llama-1b (Llama-3.2-1B: 16 layers, d 2048, 32 heads, 8 kv heads,
MLP 8192, vocabulary 128256, tied), llama-3b (Llama-3.2-3B: 28 layers,
d 3072, 24 heads, 8 kv heads, head_dim 128, MLP 8192, tied), qwen-0.5b (Qwen2.5-0.5B: 24 layers,
d 896, 14 heads, 2 kv heads, MLP 4864, vocabulary 151936, tied), or
llama-tiny (4 layers, d 256: quick checks), llama-gpt2vocab (2 layers, d 64, GPT-2's
vocabulary: with fixtures/gpt2-tokenizer it runs the task pipelines in the tests). DTYPE: BF16 (default), F16, F32.
Weights: normal(0, 1/sqrt(fan_in)) matrices, embeddings normal(0, 0.5)
scaled down, norms 1 + normal(0, 0.1), as tests/ref/families.py makes them.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import families as fam  # noqa: E402

SHAPES = {
    "llama-1b": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                 "intermediate_size": 8192, "vocab_size": 128256,
                 "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                 "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
                 "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}},
    "llama-3b": {"model_type": "llama", "hidden_size": 3072, "num_hidden_layers": 28,
                 "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                 "intermediate_size": 8192, "vocab_size": 128256,
                 "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                 "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
                 "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}},
    "qwen-0.5b": {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
                  "num_attention_heads": 14, "num_key_value_heads": 2,
                  "intermediate_size": 4864, "vocab_size": 151936,
                  "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
                  "use_sliding_window": False},
    "llama-gpt2vocab": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2,
                        "intermediate_size": 128, "vocab_size": 50257,
                        "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
                        "rope_theta": 10000.0, "tie_word_embeddings": True,
                        "hidden_act": "silu"},
    "llama-tiny": {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4,
                   "num_attention_heads": 8, "num_key_value_heads": 2,
                   "intermediate_size": 1024, "vocab_size": 8192,
                   "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu"},
}
NBYTES = {"BF16": 2, "F16": 2, "F32": 4}


def main():
    out, shape = sys.argv[1], sys.argv[2]
    dtype = sys.argv[3] if len(sys.argv) > 3 else "BF16"
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    cfg = dict(SHAPES[shape])
    a = fam.arch_of(cfg)
    names = fam.HF_NAMES.get(cfg["model_type"], fam.HF_NAMES["default"])
    tensors = fam.tensors_of(a, names)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shp, _ in tensors:
        n = int(np.prod(shp)) * NBYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shp), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shp, kind in tensors:
            t = torch.randn(shp, generator=g, dtype=torch.float32)
            if kind == "embed":
                t = t * 0.05
            elif kind == "matrix":
                t = t / float(np.sqrt(shp[1]))
            elif kind == "norm":
                t = 1.0 + 0.1 * t
            else:
                t = 0.02 * t
            if dtype == "BF16":
                f.write(fam.round_bf16(t).astype("<u2").tobytes())
            elif dtype == "F16":
                f.write(t.numpy().astype("<f2").tobytes())
            else:
                f.write(t.numpy().astype("<f4").tobytes())
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
