"""safetensors files for the reference scripts, read and written with numpy
alone (independent of circ's C reader and writer)."""

import json
import struct

import numpy as np


def read_safetensors(path, float64=False):
    """{name: numpy array}; F32, F16 and BF16 become float32 (float64 when
    asked), I32 stays int32. __metadata__ is skipped."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw, dt = data[b:e], info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "I32":
            a = np.frombuffer(raw, dtype="<i4")
        else:
            raise SystemExit("%s: %s: unsupported dtype %s" % (path, name, dt))
        if float64 and dt != "I32":
            a = a.astype(np.float64)
        out[name] = a.reshape(info["shape"])
    return out


def write_safetensors(path, tensors, float_dtype="F32"):
    """Writes {name: array} (numpy arrays or torch tensors) as float_dtype
    (F32, or F16 / BF16 rounded to nearest even), or I32 for int32 arrays,
    in the given order, the header padded to 8 bytes."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if hasattr(a, "detach"):
            a = a.detach().to("cpu").double().numpy()
        a = np.asarray(a)
        dt = float_dtype
        if a.dtype == np.int32:
            dt, b = "I32", a.astype("<i4").tobytes()
        elif dt == "F16":
            b = np.ascontiguousarray(a, dtype=np.float32).astype("<f2").tobytes()
        elif dt == "BF16":
            u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
            b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()
        else:
            dt, b = "F32", np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
